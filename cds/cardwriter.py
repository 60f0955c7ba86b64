"""Group commit of issued-card rows: one thread writes the cards of every concurrent hook call at once.

A hook call hands its cards to `CardWriter.record` and waits (without holding the event loop) until
they are committed, queued for an outage (cds.store.CardBacklog) or set aside; only then does it
answer, so nothing acknowledged is lost. The writer thread takes everything waiting in its inbox and
writes it in one transaction: under load one commit carries many calls, and the database's per-commit
cost (SQLite's write lock and WAL append, PostgreSQL's round trips and WAL flush) is shared between them.

    writer = CardWriter(backlog)
    queued = await writer.record(pending)   # False: committed; True: queued while the store is down
    writer.close()                          # the calls still waiting are written first
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future

from cds.logs import error_fields, log_event
from cds.store import CardBacklog, PendingCards, StoreUnavailableError

__all__ = ["CardWriter"]

logger = logging.getLogger("cds.store")

_STOP = None


class CardWriter:
    """One writer thread in front of a CardBacklog; at most `max_batch` hook calls per transaction."""

    def __init__(self, backlog: CardBacklog, *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._backlog = backlog
        self._max_batch = max_batch
        self._inbox: queue.SimpleQueue[tuple[PendingCards, Future[bool]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed:
                raise StoreUnavailableError("the card writer is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cds-card-writer", daemon=True)
                self._thread.start()

    @property
    def waiting(self) -> int:
        """Hook calls waiting for the next commit (not counting those in the commit under way)."""
        return self._inbox.qsize()

    def submit(self, pending: PendingCards) -> Future[bool]:
        """Hand one hook call's cards to the writer; the future says whether they were queued."""
        self._ensure_started()
        future: Future[bool] = Future()
        self._inbox.put((pending, future))
        return future

    async def record(self, pending: PendingCards) -> bool:
        """Wait until the cards are committed (False) or queued for an outage (True).

        Raises StoreUnavailableError when they could be neither (the outage queue is full).
        """
        return await asyncio.wrap_future(self.submit(pending))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting, then stop the thread; later calls get StoreUnavailableError."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._inbox.put(_STOP)
        thread.join(timeout)

    def _take(self) -> tuple[list[tuple[PendingCards, Future[bool]]], bool]:
        """Block for the first call, then take whatever else is already waiting (up to max_batch)."""
        first = self._inbox.get()
        if first is _STOP:
            return [], True
        taken = [first]
        stop = False
        while len(taken) < self._max_batch:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            taken.append(item)
        return taken, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            taken, stop = self._take()
            if not taken:
                continue
            # A call cancelled before this point (its client left) is still written; nobody waits on it.
            live = [future.set_running_or_notify_cancel() for _, future in taken]
            try:
                outcomes = self._backlog.record_many([pending for pending, _ in taken])
            except Exception as exc:  # a bug must fail these calls, never hang them or kill the thread
                log_event(logger, "store.writer.failed", level=logging.ERROR, **error_fields(exc))
                for (_, future), waited in zip(taken, live, strict=True):
                    if waited:
                        future.set_exception(exc)
                continue
            for (_, future), waited, outcome in zip(taken, live, outcomes, strict=True):
                if not waited:
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
