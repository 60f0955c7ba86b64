"""Test helpers shared by several test modules (real services, no mocks)."""
