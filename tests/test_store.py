"""Tests for cds.store on a real SQLite file and, when reachable, a real PostgreSQL database."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from cds.store import (
    Base,
    FeedbackItem,
    FeedbackRow,
    IssuedCard,
    IssuedCardRow,
    ReasonCount,
    ReportRow,
    Store,
    StoreUnavailableError,
    UnknownCardError,
    patient_hash,
)
from tests.support.postgres import fresh_database

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SNOMED = "http://snomed.info/sct"
CDS_REASONS = "https://example.org/cds/override-reasons"

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend; the SQLite file lives in a not-yet-created dir."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'cds.sqlite3'}"
        return
    request.getfixturevalue("postgres_url")  # skips the case when no server is reachable
    with fresh_database() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.close()


def _cards(*specs: tuple[str, str]) -> list[IssuedCard]:
    return [IssuedCard(uuid=uuid, topic=topic, rule_ids=(f"rule-{topic}",)) for uuid, topic in specs]


def _record(store: Store, service_id: str, *specs: tuple[str, str]) -> None:
    store.record_cards(
        service_id=service_id,
        hook_instance=f"hook-{service_id}",
        patient_hash=patient_hash(b"k", "Patient/1"),
        pack_version="2025.03",
        cards=_cards(*specs),
        issued_at=T0,
    )


def _accepted(uuid: str, minute: int = 1) -> FeedbackItem:
    return FeedbackItem(
        card_uuid=uuid,
        outcome="accepted",
        outcome_timestamp=T0 + timedelta(minutes=minute),
        accepted_suggestions=(f"sugg-{uuid}",),
    )


def _overridden(uuid: str, code: str | None, system: str | None = CDS_REASONS) -> FeedbackItem:
    return FeedbackItem(
        card_uuid=uuid,
        outcome="overridden",
        outcome_timestamp=T0 + timedelta(minutes=2),
        override_reason_code=code,
        override_reason_system=system if code else None,
        override_comment="patient declined" if code else None,
    )


def _feedback_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(FeedbackRow)) or 0)


# --------------------------------------------------------------------------- schema


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(resources.files("cds") / "migrations"))
    return ScriptDirectory.from_config(config)


HEAD = _script().get_current_head()


def test_the_migrations_have_one_head_and_build_the_models_schema(store: Store) -> None:
    assert len(_script().get_heads()) == 1
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []


def test_migrate_twice_is_a_noop(store_url: str) -> None:
    s = Store(store_url)
    try:
        s.migrate()
        _record(s, "svc", ("c1", "magnesium"))
        s.migrate()
        with s.engine.connect() as conn:
            versions = conn.scalars(text("SELECT version_num FROM alembic_version")).all()
            cards = conn.scalar(select(func.count()).select_from(IssuedCardRow))
        assert versions == [HEAD]
        assert cards == 1
        assert s.ping() is True
    finally:
        s.close()


def test_migrate_concurrently_from_two_workers(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def worker(s: Store) -> None:
        try:
            barrier.wait(timeout=10)
            s.migrate()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        with stores[0].engine.connect() as conn:
            assert conn.scalars(text("SELECT version_num FROM alembic_version")).all() == [HEAD]
    finally:
        for s in stores:
            s.close()


def test_sqlite_pragmas_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cds.sqlite3"
    s = Store(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        s.close()


# --------------------------------------------------------------------------- cards and feedback


def test_report_counts_issued_accepted_overridden_and_reasons(store: Store) -> None:
    _record(
        store, "cramps", ("c1", "magnesium"), ("c2", "magnesium"), ("c3", "magnesium"), ("c4", "thiazide")
    )
    _record(store, "other", ("o1", "magnesium"))
    new = store.record_feedback(
        service_id="cramps",
        items=[
            _accepted("c1"),
            _overridden("c2", "patient-declined"),
            _overridden("c3", "patient-declined"),
            _overridden("c4", "not-relevant"),
        ],
        received_at=T0 + timedelta(minutes=5),
    )
    assert new == 4
    assert store.report() == [
        ReportRow(
            service_id="cramps",
            topic="magnesium",
            issued=3,
            accepted=1,
            overridden=2,
            override_reasons=(ReasonCount(CDS_REASONS, "patient-declined", 2),),
        ),
        ReportRow(
            service_id="cramps",
            topic="thiazide",
            issued=1,
            accepted=0,
            overridden=1,
            override_reasons=(ReasonCount(CDS_REASONS, "not-relevant", 1),),
        ),
        ReportRow(
            service_id="other", topic="magnesium", issued=1, accepted=0, overridden=0, override_reasons=()
        ),
    ]


def test_override_without_reason_is_reported_with_empty_reason(store: Store) -> None:
    _record(store, "cramps", ("c1", "magnesium"))
    store.record_feedback(service_id="cramps", items=[_overridden("c1", None)], received_at=T0)
    (row,) = store.report()
    assert row.override_reasons == (ReasonCount(None, None, 1),)


@dataclass(frozen=True)
class DupCase:
    id: str
    first: list[FeedbackItem]
    second: list[FeedbackItem]
    new_second: int
    rows_after: int


DUP_CASES = [
    DupCase("same-batch-resent", [_accepted("c1")], [_accepted("c1")], 0, 1),
    DupCase("duplicate-inside-one-batch", [_accepted("c1"), _accepted("c1")], [], 0, 1),
    DupCase("resent-plus-one-new", [_accepted("c1")], [_accepted("c1"), _overridden("c2", "x")], 1, 2),
    DupCase("other-timestamp-is-new", [_accepted("c1", 1)], [_accepted("c1", 9)], 1, 2),
    DupCase(
        "suggestion-order-ignored",
        [FeedbackItem("c1", "accepted", T0, accepted_suggestions=("a", "b"))],
        [FeedbackItem("c1", "accepted", T0, accepted_suggestions=("b", "a"))],
        0,
        1,
    ),
    DupCase(
        "same-instant-other-zone",
        [FeedbackItem("c1", "accepted", T0)],
        [FeedbackItem("c1", "accepted", T0.astimezone(timezone(timedelta(hours=2))))],
        0,
        1,
    ),
]


@pytest.mark.parametrize("case", DUP_CASES, ids=lambda c: c.id)
def test_duplicate_feedback_is_idempotent(store: Store, case: DupCase) -> None:
    _record(store, "cramps", ("c1", "magnesium"), ("c2", "magnesium"))
    store.record_feedback(service_id="cramps", items=case.first, received_at=T0)
    before = store.report()
    new = store.record_feedback(service_id="cramps", items=case.second, received_at=T0 + timedelta(hours=1))
    assert new == case.new_second
    assert _feedback_rows(store) == case.rows_after
    if case.new_second == 0:
        assert store.report() == before


@dataclass(frozen=True)
class UnknownCase:
    id: str
    service_id: str
    items: list[FeedbackItem]
    unknown: tuple[str, ...]


UNKNOWN_CASES = [
    UnknownCase("one-unknown-among-known", "cramps", [_accepted("c1"), _accepted("nope")], ("nope",)),
    UnknownCase(
        "every-unknown-named",
        "cramps",
        [_accepted("zz"), _accepted("c1"), _overridden("aa", "x")],
        ("aa", "zz"),
    ),
    UnknownCase("card-of-another-service", "cramps", [_accepted("o1")], ("o1",)),
    UnknownCase("right-card-wrong-caller", "other", [_accepted("c1"), _accepted("o1")], ("c1",)),
]


@pytest.mark.parametrize("case", UNKNOWN_CASES, ids=lambda c: c.id)
def test_unknown_card_rejects_the_whole_batch(store: Store, case: UnknownCase) -> None:
    _record(store, "cramps", ("c1", "magnesium"))
    _record(store, "other", ("o1", "magnesium"))
    with pytest.raises(UnknownCardError) as caught:
        store.record_feedback(service_id=case.service_id, items=case.items, received_at=T0)
    assert caught.value.card_uuids == case.unknown
    assert _feedback_rows(store) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda s: s.record_feedback(
                service_id="cramps", items=[_accepted("c1")], received_at=datetime(2025, 1, 1)
            ),
            "received_at",
            id="naive-received-at",
        ),
        pytest.param(
            lambda s: s.record_feedback(
                service_id="cramps",
                items=[FeedbackItem("c1", "accepted", datetime(2025, 1, 1))],
                received_at=T0,
            ),
            "outcome_timestamp",
            id="naive-outcome-timestamp",
        ),
        pytest.param(
            lambda s: s.record_feedback(
                service_id="cramps",
                items=[FeedbackItem("c1", "maybe", T0)],  # type: ignore[arg-type]
                received_at=T0,
            ),
            "outcome",
            id="bad-outcome",
        ),
        pytest.param(
            lambda s: s.remember_jti(iss="i", jti="j", expires_at=datetime(2025, 1, 1), now=T0),
            "expires_at",
            id="naive-jti-expiry",
        ),
    ],
)
def test_bad_input_is_rejected_before_touching_the_database(
    store: Store, call: Callable[[Store], Any], message: str
) -> None:
    _record(store, "cramps", ("c1", "magnesium"))
    with pytest.raises(ValueError, match=message):
        call(store)
    assert _feedback_rows(store) == 0


def test_timestamps_come_back_timezone_aware_utc(store: Store) -> None:
    local = timezone(timedelta(hours=-5))
    store.record_cards(
        service_id="cramps",
        hook_instance="h",
        patient_hash="ab" * 32,
        pack_version="1",
        cards=_cards(("c1", "magnesium")),
        issued_at=T0.astimezone(local),
    )
    with store.engine.connect() as conn:
        issued_at = conn.scalar(select(IssuedCardRow.issued_at))
        rule_ids = conn.scalar(select(IssuedCardRow.rule_ids))
    assert issued_at == T0
    assert issued_at is not None
    assert issued_at.utcoffset() == timedelta(0)
    assert rule_ids == ["rule-magnesium"]


# --------------------------------------------------------------------------- jti replay


JTI_STEPS = [
    # (id, iss, jti, expires_at offset, now offset, expected)
    pytest.param([("i1", "j1", 300, 0, True)], id="first-use"),
    pytest.param([("i1", "j1", 300, 0, True), ("i1", "j1", 300, 10, False)], id="replay-rejected"),
    pytest.param([("i1", "j1", 300, 0, True), ("i2", "j1", 300, 10, True)], id="same-jti-other-issuer"),
    pytest.param([("i1", "j1", 300, 0, True), ("i1", "j2", 300, 10, True)], id="other-jti-same-issuer"),
    pytest.param(
        [("i1", "j1", 300, 0, True), ("i1", "j1", 900, 301, True), ("i1", "j1", 900, 302, False)],
        id="reusable-after-expiry-then-guarded-again",
    ),
    pytest.param(
        [("i1", "j1", 300, 0, True), ("i1", "j1", 300, 300, True)],
        id="expiry-instant-counts-as-expired",
    ),
]


@pytest.mark.parametrize("steps", JTI_STEPS)
def test_remember_jti(store: Store, steps: list[tuple[str, str, int, int, bool]]) -> None:
    for iss, jti, expires, now, expected in steps:
        got = store.remember_jti(
            iss=iss, jti=jti, expires_at=T0 + timedelta(seconds=expires), now=T0 + timedelta(seconds=now)
        )
        assert got is expected, (iss, jti, expires, now)


def test_remember_jti_prunes_expired_rows(store: Store) -> None:
    for n in range(5):
        store.remember_jti(iss="i", jti=f"old-{n}", expires_at=T0 + timedelta(seconds=10), now=T0)
    store.remember_jti(iss="i", jti="new", expires_at=T0 + timedelta(days=1), now=T0 + timedelta(hours=1))
    with store.engine.connect() as conn:
        left = conn.scalars(text("SELECT jti FROM seen_jti")).all()
    assert left == ["new"]


def test_remember_jti_two_workers_racing_accept_once(store_url: str) -> None:
    stores = [Store(store_url), Store(store_url)]
    stores[0].migrate()
    barrier = threading.Barrier(2)
    results: list[bool] = []
    lock = threading.Lock()

    def worker(s: Store) -> None:
        barrier.wait(timeout=10)
        ok = s.remember_jti(iss="i", jti="race", expires_at=T0 + timedelta(minutes=5), now=T0)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in stores:
        s.close()
    assert sorted(results) == [False, True]


# --------------------------------------------------------------------------- unavailability


DEAD_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.migrate(), id="migrate"),
        pytest.param(
            lambda s: s.record_feedback(service_id="x", items=[_accepted("c1")], received_at=T0),
            id="feedback",
        ),
        pytest.param(
            lambda s: s.record_cards(
                service_id="x",
                hook_instance="h",
                patient_hash="p",
                pack_version="1",
                cards=_cards(("c", "t")),
                issued_at=T0,
            ),
            id="cards",
        ),
        pytest.param(lambda s: s.remember_jti(iss="i", jti="j", expires_at=T0, now=T0), id="jti"),
        pytest.param(lambda s: s.report(), id="report"),
    ],
)
def test_unreachable_database_raises_store_unavailable_quickly(call: Callable[[Store], Any]) -> None:
    s = Store(DEAD_URL)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError):
            call(s)
        assert s.ping() is False
    finally:
        s.close()
    assert time.monotonic() - started < 15


def test_sqlite_locked_database_raises_store_unavailable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "cds.sqlite3"
    s = Store(f"sqlite:///{path}")
    s.migrate()
    _record(s, "cramps", ("c1", "magnesium"))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        s.engine.dispose()
        fast = Store(f"sqlite:///{path}", sqlite_busy_timeout_ms=50)
        try:
            with pytest.raises(StoreUnavailableError):
                fast.record_feedback(service_id="cramps", items=[_accepted("c1")], received_at=T0)
        finally:
            fast.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        s.close()


# --------------------------------------------------------------------------- patient hash


@pytest.mark.parametrize(
    ("key", "patient_id"),
    [
        pytest.param(b"secret", "Patient/123", id="ascii"),
        pytest.param(b"\x00\xff" * 16, "Patient/ü-42", id="binary-key-unicode-id"),
    ],
)
def test_patient_hash_is_hmac_sha256_hex(key: bytes, patient_id: str) -> None:
    expected = hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()
    assert patient_hash(key, patient_id) == expected
    assert patient_id not in patient_hash(key, patient_id)
    assert patient_hash(key + b"x", patient_id) != expected


def test_patient_hash_refuses_empty_key() -> None:
    with pytest.raises(ValueError, match="key"):
        patient_hash(b"", "Patient/1")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite://", id="sqlite-memory"),
        pytest.param("mysql://u@h/db", id="mysql"),
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Store(url)
