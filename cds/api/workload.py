"""Where an evaluation runs: small ones on the event loop, large ones in a thread, so a worker keeps answering.

A thread hop costs about 0.25 ms, more than a small evaluation saves by leaving the loop, so requests
up to CDS_INLINE_MAX_RESOURCES resources (and INLINE_MAX_BYTES of body) are evaluated inline; each then
holds the loop for at most a few tens of milliseconds. Larger ones run in a thread, one at a time, on
an engine of their own: the inline engine's lock (cds.engine) is never held by a thread while the
loop waits for it. The thread still takes the GIL, but Python hands it to the loop every few
milliseconds, so /healthz and small hook calls keep being answered meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from cds.evaluation import Evaluator

T = TypeVar("T")

#: Bodies above this many bytes are evaluated in a thread whatever their resource count.
INLINE_MAX_BYTES = 256 * 1024


class Workload:
    """Runs `evaluate(evaluator)` inline or in a thread, by the size of the request."""

    def __init__(self, evaluator: Evaluator, *, inline_max_resources: int) -> None:
        self.inline = evaluator
        self.inline_max_resources = inline_max_resources
        self._heavy: Evaluator | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self.offloaded = 0  # evaluations run in a thread (tests and benchmarks read it)

    def is_small(self, resources: int, body_bytes: int) -> bool:
        return resources <= self.inline_max_resources and body_bytes <= INLINE_MAX_BYTES

    @property
    def heavy(self) -> Evaluator:
        """The large requests' evaluator: the same pack and ids, another engine (built on first use)."""
        if self._heavy is None:
            self._heavy = Evaluator(self.inline.pack, new_id=self.inline.new_id)
        return self._heavy

    async def run(self, resources: int, body_bytes: int, evaluate: Callable[[Evaluator], T]) -> T:
        if self.is_small(resources, body_bytes):
            return evaluate(self.inline)
        if self._limiter is None:  # created on the loop that uses it
            self._limiter = anyio.CapacityLimiter(1)
        heavy = self.heavy
        self.offloaded += 1
        return await anyio.to_thread.run_sync(evaluate, heavy, limiter=self._limiter)
