"""A gate for a real store's write: the test holds calls at it (so they pile up) or makes them fail."""

from __future__ import annotations

import threading


class WriteGate:
    """`pass_through()` at the start of the gated write: marks it entered, waits while the gate is
    closed (at most 30 s), then raises `fail_with` if the test set one."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with: Exception | None = None

    def pass_through(self) -> None:
        self.entered.set()
        self.gate.wait(30)
        if self.fail_with is not None:
            raise self.fail_with
