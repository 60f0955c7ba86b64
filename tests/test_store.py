"""Tests for cds.store on a real SQLite file and, when reachable, a real PostgreSQL database."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from cds.store import (
    CARD_LIMITS,
    FEEDBACK_LIMITS,
    JTI_LIMITS,
    Base,
    CardBacklog,
    DeadLetterRow,
    FeedbackItem,
    FeedbackRow,
    IssuedCard,
    IssuedCardRow,
    PendingCards,
    ReasonCount,
    ReportRow,
    SeenJtiRow,
    Store,
    StoreUnavailableError,
    UnknownCardError,
    UnstorableValueError,
    patient_hash,
    text_problem,
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


# --------------------------------------------------------------------------- text no database can keep

# Control characters (U+0000 first among them), unpaired surrogates, and lengths around the columns'.
CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(["\x7f", "\x85", "\u2028"])
SURROGATE = st.characters(categories=["Cs"])
AWKWARD_TEXT = st.one_of(
    st.text(st.one_of(CONTROL, SURROGATE, st.characters()), min_size=1, max_size=30),
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(["x", "é", "\x00", "\x01"]),
        st.sampled_from([36, 37, 64, 65, 255, 256, 512, 513, 1024, 1025, 20_000]),
    ),
)
AWKWARD = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CARD_TEXTS = ["service_id", "hook_instance", "topic", "rule_ids", "patient_hash", "pack_version"]
FEEDBACK_TEXTS = [
    "accepted_suggestions",
    "override_reason_code",
    "override_reason_system",
    "override_comment",
]
_fresh = itertools.count()


def _limit(field: str) -> int | None:
    return CARD_LIMITS.get(field) if field in CARD_LIMITS else FEEDBACK_LIMITS.get(field)


@pytest.mark.parametrize("field", CARD_TEXTS)
@AWKWARD
@given(value=AWKWARD_TEXT)
def test_every_card_text_is_kept_exactly_or_refused_naming_its_field(
    store: Store, field: str, value: str
) -> None:
    uuid = f"card-{next(_fresh)}"
    values: dict[str, Any] = {
        "service_id": "svc",
        "hook_instance": "hook",
        "topic": "magnesium",
        "rule_ids": "rule",
        "patient_hash": "0" * 64,
        "pack_version": "1.0",
    } | {field: value}
    pending = PendingCards(
        service_id=values["service_id"],
        hook_instance=values["hook_instance"],
        patient_hash=values["patient_hash"],
        pack_version=values["pack_version"],
        cards=(IssuedCard(uuid=uuid, topic=values["topic"], rule_ids=(values["rule_ids"],)),),
        issued_at=T0,
    )
    problem = text_problem(value, _limit(field))
    if problem is not None:
        with pytest.raises(UnstorableValueError) as refused:
            store.record_card_batches([pending])
        assert (refused.value.field, refused.value.reason) == (field, problem)
    else:
        assert store.record_card_batches([pending]) == 1
    with store.engine.connect() as conn:
        row = conn.execute(select(IssuedCardRow).where(IssuedCardRow.uuid == uuid)).one_or_none()
    if problem is not None:
        assert row is None
        return
    assert row is not None
    kept = {name: getattr(row, name) for name in CARD_TEXTS}
    assert kept == values | {"rule_ids": [values["rule_ids"]]}


@pytest.mark.parametrize("field", FEEDBACK_TEXTS)
@AWKWARD
@given(value=AWKWARD_TEXT)
def test_every_feedback_text_is_kept_exactly_or_refused_naming_its_field(
    store: Store, field: str, value: str
) -> None:
    uuid = f"card-{next(_fresh)}"
    _record(store, "svc", (uuid, "magnesium"))
    accepted = field == "accepted_suggestions"
    item = FeedbackItem(
        card_uuid=uuid,
        outcome="accepted" if accepted else "overridden",
        outcome_timestamp=T0,
        accepted_suggestions=(value,) if accepted else (),
        **({} if accepted else {field: value}),
    )
    problem = text_problem(value, _limit(field))
    if problem is not None:
        with pytest.raises(UnstorableValueError) as refused:
            store.record_feedback(service_id="svc", items=[item], received_at=T0)
        assert (refused.value.field, refused.value.reason) == (field, problem)
    else:
        assert store.record_feedback(service_id="svc", items=[item], received_at=T0) == 1
    with store.engine.connect() as conn:
        rows = conn.execute(select(FeedbackRow).where(FeedbackRow.card_uuid == uuid)).all()
    if problem is not None:
        assert rows == []
        return
    [row] = rows
    assert getattr(row, field) == ([value] if accepted else value)


@pytest.mark.parametrize("field", ["iss", "jti"])
@AWKWARD
@given(value=AWKWARD_TEXT)
def test_a_jwt_id_is_kept_exactly_or_refused_naming_its_field(store: Store, field: str, value: str) -> None:
    names = {"iss": "https://ehr.example.org", "jti": f"jti-{next(_fresh)}"} | {field: value}
    problem = text_problem(value, JTI_LIMITS[field])
    remember = {"expires_at": T0 + timedelta(minutes=5), "now": T0}
    if problem is not None:
        with pytest.raises(UnstorableValueError) as refused:
            store.remember_jti(iss=names["iss"], jti=names["jti"], **remember)
        assert refused.value.field == field
        return
    store.remember_jti(iss=names["iss"], jti=names["jti"], **remember)
    with store.engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).where(SeenJtiRow.iss == names["iss"], SeenJtiRow.jti == names["jti"])
            ).scalar_one()
            == 1
        )


# --------------------------------------------------------------------------- a queue one value cannot block


class SwitchedStore(Store):
    """A store whose card writes can be switched off (an outage) and whose value checks can be skipped
    (a value the checks miss, so that the database itself must refuse it)."""

    down = False
    checked = True

    def record_card_batches(self, batches: Sequence[PendingCards]) -> int:
        if self.down:
            raise StoreUnavailableError("switched off")
        return super().record_card_batches(batches)

    def check_cards(self, pending: PendingCards) -> None:  # type: ignore[override]
        if self.checked:
            Store.check_cards(pending)


def _pending(hook_instance: str) -> PendingCards:
    card = IssuedCard(uuid=f"card-{next(_fresh)}", topic="magnesium", rule_ids=("rule",))
    return PendingCards("svc", hook_instance, "0" * 64, "1.0", (card,), T0)


POISONS = [
    pytest.param(
        True, "a\x00b", "UnstorableValueError: hook_instance: must not contain U+0000", id="nul-checked"
    ),
    pytest.param(
        True,
        "\ud800",
        "UnstorableValueError: hook_instance: must not contain an unpaired",
        id="surrogate-checked",
    ),
    pytest.param(False, "\udfff", "UnicodeEncodeError", id="surrogate-refused-by-the-driver"),
    pytest.param(False, "x" * 256, None, id="too-long-refused-by-the-database"),
]


@pytest.mark.parametrize(("checked", "poison", "reason"), POISONS)
def test_a_queued_batch_the_store_refuses_is_set_aside_and_the_rest_is_written(
    store_url: str, checked: bool, poison: str, reason: str | None
) -> None:
    store = SwitchedStore(store_url)
    store.migrate()
    store.checked = checked
    backlog = CardBacklog(store, clock=lambda: T0)
    try:
        store.down = True
        batches = [_pending("before"), _pending(poison), _pending("after")]
        assert [backlog.record(b) for b in batches] == [True, True, True]
        store.down = False
        assert backlog.flush() == 3
        later = _pending("later")
        assert backlog.record(later) is False  # the queue is empty: straight to the store
        with store.engine.connect() as conn:
            kept = set(conn.scalars(select(IssuedCardRow.hook_instance)))
            letters = conn.execute(select(DeadLetterRow)).all()
        refused_here = reason is not None or store.engine.dialect.name == "postgresql"
        if not refused_here:  # SQLite keeps a 256-character text: nothing to set aside
            assert kept == {"before", poison, "after", "later"}
            assert letters == []
            return
        assert kept == {"before", "after", "later"}
        assert backlog.set_aside_total == 1
        [letter] = letters
        assert letter.kind == "issued_card"
        assert letter.reason.startswith(reason or "StringDataRightTruncation")
        assert poison not in letter.reason
        assert letter.payload.isascii()
        assert json.loads(letter.payload) == batches[1].as_json()
    finally:
        store.close()


def test_a_group_commit_with_one_refused_batch_writes_the_others(store: Store) -> None:
    backlog = CardBacklog(store, clock=lambda: T0)
    batches = [_pending("one"), _pending("two\x00"), _pending("three")]
    assert backlog.record_many(batches) == [False, False, False]
    with store.engine.connect() as conn:
        assert set(conn.scalars(select(IssuedCardRow.hook_instance))) == {"one", "three"}
    assert backlog.set_aside_total == 1
    assert backlog.commits == 2  # the group failed; the two good batches were written one by one


def test_probe_write_sees_a_held_sqlite_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    store = Store(f"sqlite:///{path}", sqlite_busy_timeout_ms=200)
    store.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert store.probe_write() is False
        holder.execute("ROLLBACK")
        assert store.probe_write() is True
    finally:
        holder.close()
        store.close()


@pytest.mark.postgres
def test_probe_write_sees_a_read_only_postgres_database_that_select_1_does_not(postgres_url: str) -> None:
    with fresh_database() as url:
        store = Store(url)
        store.migrate()
        name = make_url(url).database
        try:
            with store.engine.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
                conn.commit()
            store.engine.dispose()  # new sessions read the database's setting
            assert store.ping() is True
            assert store.probe_write() is False
        finally:
            store.close()
