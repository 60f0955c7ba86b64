"""The HTTP layer: a FastAPI app serving CDS Hooks 2.0 discovery, services and feedback, plus /evaluate."""
