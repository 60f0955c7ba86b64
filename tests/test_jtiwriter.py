"""cds.jtiwriter: JWT ids of concurrent calls recorded in one transaction, on a real SQLite store;
counts, never times."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cds.jtiwriter import JtiWriter
from cds.store import SeenJtiRow, Store, StoreUnavailableError
from tests.support.gate import WriteGate

NOW = datetime(2026, 6, 1, 9, 30, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
ISS = "https://ehr.example.org"


class GatedStore(Store):
    """A real store whose JWT-id writes wait at a gate the test opens (so calls pile up), and can fail."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes = WriteGate()
        self.gate, self.entered = self.writes.gate, self.writes.entered
        self.batches: list[int] = []

    def remember_jtis(self, ids: Sequence[tuple[str, str, datetime]], *, now: datetime) -> list[bool]:
        self.writes.pass_through()
        self.batches.append(len(ids))
        return super().remember_jtis(ids, now=now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    s = GatedStore(f"sqlite:///{tmp_path / 'jti.sqlite3'}")
    s.migrate()
    yield s
    s.close()


def rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(SeenJtiRow)) or 0)


def test_ids_waiting_during_a_commit_share_the_next_one(store: GatedStore) -> None:
    writer = JtiWriter(store, contextlib.nullcontext)
    store.gate.clear()
    first = writer.submit((ISS, "j0", LATER, NOW))
    assert store.entered.wait(10)
    rest = [writer.submit((ISS, f"j{n}", LATER, NOW)) for n in range(1, 21)]
    store.gate.set()
    assert [f.result(10) for f in [first, *rest]] == [True] * 21
    writer.close()
    assert store.batches == [1, 20]
    assert rows(store) == 21


def test_one_id_twice_in_a_batch_is_a_first_use_and_a_replay(store: GatedStore) -> None:
    writer = JtiWriter(store, contextlib.nullcontext)
    store.gate.clear()
    first = writer.submit((ISS, "warm-up", LATER, NOW))
    assert store.entered.wait(10)
    same = [writer.submit((ISS, "same", LATER, NOW)) for _ in range(3)]
    store.gate.set()
    assert first.result(10) is True
    assert [f.result(10) for f in same] == [True, False, False]
    # And across batches, as before: a replay of an id recorded earlier.
    assert writer.remember(ISS, "same", LATER, NOW) is False
    writer.close()


def test_threads_verifying_at_once_each_get_their_own_answer(store: GatedStore) -> None:
    writer = JtiWriter(store, contextlib.nullcontext)
    ids = [f"t{n % 40}" for n in range(80)]  # every id twice: exactly one use of each is the first
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda jti: (jti, writer.remember(ISS, jti, LATER, NOW)), ids))
    writer.close()
    firsts = [jti for jti, fresh in answers if fresh]
    assert sorted(firsts) == sorted(set(ids))
    assert rows(store) == 40
    assert sum(store.batches) == 80


def test_an_outage_fails_every_waiting_call_with_store_unavailable(store: GatedStore) -> None:
    writer = JtiWriter(store, contextlib.nullcontext)
    store.writes.fail_with = StoreUnavailableError("down")
    store.gate.clear()
    futures = [writer.submit((ISS, "a", LATER, NOW))]
    assert store.entered.wait(10)
    futures += [writer.submit((ISS, f"b{n}", LATER, NOW)) for n in range(4)]
    store.gate.set()
    for future in futures:
        with pytest.raises(StoreUnavailableError):
            future.result(10)
    store.writes.fail_with = None
    assert writer.remember(ISS, "a", LATER, NOW) is True  # the writer goes on once the store is back
    writer.close()
    with pytest.raises(StoreUnavailableError):
        writer.remember(ISS, "late", LATER, NOW)


def test_a_batch_uses_its_earliest_now_so_an_id_expiring_in_between_stays_refused(store: GatedStore) -> None:
    writer = JtiWriter(store, contextlib.nullcontext)
    assert writer.remember(ISS, "old", NOW + timedelta(seconds=30), NOW) is True
    store.gate.clear()
    blocker = writer.submit((ISS, "blocker", LATER, NOW))
    assert store.entered.wait(10)
    # Two callers in one batch: one still before the old id's expiry, one after it.
    early = writer.submit((ISS, "other", LATER, NOW + timedelta(seconds=10)))
    late = writer.submit((ISS, "old", LATER, NOW + timedelta(seconds=60)))
    store.gate.set()
    assert blocker.result(10) is True
    assert early.result(10) is True
    assert late.result(10) is False  # judged at the batch's earliest now: still live, so refused
    assert (
        writer.remember(ISS, "old", LATER, NOW + timedelta(seconds=60)) is True
    )  # alone: expired, taken over
    writer.close()
