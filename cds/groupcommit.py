"""Group commit: one thread hands every item waiting in its inbox to one write, so many callers share a
commit (SQLite's write lock and WAL append, PostgreSQL's round trip and WAL flush).

Callers wait for their own answer: from the event loop (`await writer.run(item)`) or from a thread
(`writer.wait(item)`). `write_many(items)` returns one answer per item, in order: a value, or an
exception for that item alone; if it raises, every item of that write gets the exception. Users:
cds.cardwriter (issued-card rows) and cds.jtiwriter (JWT ids seen).

    writer = GroupCommit(store_rows, name="cds-example-writer")
    answer = await writer.run(item)   # or writer.wait(item) from a thread
    writer.close()                    # the items still waiting are written first
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from cds.logs import error_fields, log_event
from cds.store import StoreUnavailableError

__all__ = ["GroupCommit"]

logger = logging.getLogger("cds.store")

T = TypeVar("T")
R = TypeVar("R")

_STOP = None


class GroupCommit(Generic[T, R]):
    """One writer thread; at most `max_batch` items per `write_many` call."""

    def __init__(
        self,
        write_many: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        name: str,
        max_batch: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_many = write_many
        self._name = name
        self._max_batch = max_batch
        self._inbox: queue.SimpleQueue[tuple[T, Future[R]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed:
                raise StoreUnavailableError(f"the {self._name} is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    @property
    def waiting(self) -> int:
        """Items waiting for the next write (not counting those in the write under way)."""
        return self._inbox.qsize()

    def submit(self, item: T) -> Future[R]:
        """Hand one item to the writer; the future gives its answer."""
        self._ensure_started()
        future: Future[R] = Future()
        self._inbox.put((item, future))
        return future

    async def run(self, item: T) -> R:
        """Wait (without holding the event loop) for the item's answer."""
        return await asyncio.wrap_future(self.submit(item))

    def wait(self, item: T) -> R:
        """Block this thread until the item's answer (never call it on the event loop)."""
        return self.submit(item).result()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting, then stop the thread; later items get StoreUnavailableError."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._inbox.put(_STOP)
        thread.join(timeout)

    def _take(self) -> tuple[list[tuple[T, Future[R]]], bool]:
        """Block for the first item, then take whatever else is already waiting (up to max_batch)."""
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
            # An item whose caller left (cancelled) is still written; nobody waits for its answer.
            live = [future.set_running_or_notify_cancel() for _, future in taken]
            try:
                answers = self._write_many([item for item, _ in taken])
            except Exception as exc:  # a bug must fail these calls, never hang them or kill the thread
                log_event(
                    logger, "store.writer.failed", level=logging.ERROR, writer=self._name, **error_fields(exc)
                )
                for (_, future), waited in zip(taken, live, strict=True):
                    if waited:
                        future.set_exception(exc)
                continue
            for (_, future), waited, answer in zip(taken, live, answers, strict=True):
                if not waited:
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
