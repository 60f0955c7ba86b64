"""cds.cardwriter: the group-commit thread on a real SQLite store; counts, never times."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from cds.cardwriter import CardWriter
from cds.store import CardBacklog, IssuedCard, IssuedCardRow, PendingCards, Store, StoreUnavailableError
from tests.support.gate import WriteGate

T0 = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
_n = itertools.count()


def pending() -> PendingCards:
    n = next(_n)
    card = IssuedCard(uuid=f"card-{n}", topic="magnesium", rule_ids=("rule",))
    return PendingCards("svc", f"hook-{n}", "0" * 64, "1.0", (card,), T0)


class GatedStore(Store):
    """A real store whose card writes wait at a gate the test opens (so calls pile up), and can fail."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes = WriteGate()
        self.gate, self.entered = self.writes.gate, self.writes.entered

    def record_card_batches(self, batches: Sequence[PendingCards]) -> int:
        self.writes.pass_through()
        return super().record_card_batches(batches)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    s = GatedStore(f"sqlite:///{tmp_path / 'cards.sqlite3'}")
    s.migrate()
    yield s
    s.close()


def stored(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.scalars(select(IssuedCardRow.hook_instance)))


def test_calls_waiting_during_a_commit_share_the_next_one(store: GatedStore) -> None:
    backlog = CardBacklog(store)
    writer = CardWriter(backlog)
    store.gate.clear()
    first = writer.submit(pending())
    assert store.entered.wait(10)  # the first commit is under way, held at the gate
    rest = [writer.submit(pending()) for _ in range(20)]
    assert writer.waiting == 20
    store.gate.set()
    assert [f.result(10) for f in [first, *rest]] == [False] * 21
    writer.close()
    assert (backlog.commits, backlog.committed_batches) == (2, 21)
    assert len(stored(store)) == 21


def test_max_batch_bounds_one_commit(store: GatedStore) -> None:
    backlog = CardBacklog(store)
    writer = CardWriter(backlog, max_batch=8)
    store.gate.clear()
    futures = [writer.submit(pending())]
    assert store.entered.wait(10)
    futures += [writer.submit(pending()) for _ in range(20)]
    store.gate.set()
    for f in futures:
        f.result(10)
    writer.close()
    assert (backlog.commits, backlog.committed_batches) == (4, 21)  # 1, then 8 + 8 + 4


def test_close_writes_what_waits_and_later_calls_are_503(store: GatedStore) -> None:
    backlog = CardBacklog(store)
    writer = CardWriter(backlog)
    futures = [writer.submit(pending()) for _ in range(5)]
    writer.close()
    assert all(f.done() for f in futures)
    assert len(stored(store)) == 5
    with pytest.raises(StoreUnavailableError):
        writer.submit(pending())


def test_an_unexpected_error_fails_its_calls_and_the_writer_goes_on(store: GatedStore) -> None:
    class Broken(CardBacklog):
        broken = True

        def record_many(self, batches: Sequence[PendingCards]) -> list[bool | StoreUnavailableError]:
            if self.broken:
                self.broken = False
                raise RuntimeError("a bug")
            return super().record_many(batches)

    writer = CardWriter(Broken(store))
    with pytest.raises(RuntimeError):
        writer.submit(pending()).result(10)
    assert writer.submit(pending()).result(10) is False
    writer.close()
    assert len(stored(store)) == 1


def test_an_outage_queues_the_calls_and_a_full_queue_fails_only_the_overflow(store: GatedStore) -> None:
    backlog = CardBacklog(store, capacity=3)
    writer = CardWriter(backlog)
    store.writes.fail_with = StoreUnavailableError("down")
    store.gate.clear()
    futures: list[Future[bool]] = [writer.submit(pending())]
    assert store.entered.wait(10)
    futures += [writer.submit(pending()) for _ in range(4)]
    store.gate.set()
    outcomes: list[bool | str] = []
    for f in futures:
        try:
            outcomes.append(f.result(10))
        except StoreUnavailableError:
            outcomes.append("503")
    assert outcomes == [True, True, True, "503", "503"]
    store.writes.fail_with = None
    assert backlog.flush() == 3
    writer.close()
    assert len(stored(store)) == 3


def test_a_call_cancelled_while_waiting_is_still_written(store: GatedStore) -> None:
    backlog = CardBacklog(store)
    writer = CardWriter(backlog)
    store.gate.clear()
    writer.submit(pending())
    assert store.entered.wait(10)

    async def cancelled() -> None:
        task = asyncio.ensure_future(writer.record(pending()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    store.gate.set()
    after = writer.submit(pending())
    assert after.result(10) is False  # the thread survived the cancelled call
    writer.close()
    assert len(stored(store)) == 3
