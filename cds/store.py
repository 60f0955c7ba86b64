"""Durable store for issued cards, clinician feedback and seen JWT ids (SQLAlchemy 2 + Alembic)."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Connection,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "CardBacklog",
    "DeadLetterRow",
    "FeedbackItem",
    "IssuedCard",
    "PendingCards",
    "ReasonCount",
    "ReportRow",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "UnknownCardError",
    "UnstorableValueError",
    "patient_hash",
    "text_problem",
]

Outcome = Literal["accepted", "overridden"]
_OUTCOMES: tuple[str, ...] = ("accepted", "overridden")

# Arbitrary constant key for pg_advisory_xact_lock ("cdsm" in ASCII) serialising migrations.
_MIGRATION_LOCK_KEY = 0x6364736D
_CONNECT_TIMEOUT_SECONDS = 5
_SQLITE_BUSY_TIMEOUT_MS = 10_000
_JTI_PRUNE_INTERVAL = timedelta(minutes=5)


# --------------------------------------------------------------------------- public value types


@dataclass(frozen=True)
class IssuedCard:
    """A card returned to a CDS client, as remembered for later feedback."""

    uuid: str
    topic: str
    rule_ids: tuple[str, ...]


@dataclass(frozen=True)
class FeedbackItem:
    """One CDS Hooks 2.0 feedback entry for a previously issued card."""

    card_uuid: str
    outcome: Outcome
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason_code: str | None = None
    override_reason_system: str | None = None
    override_comment: str | None = None


@dataclass(frozen=True)
class ReasonCount:
    """How many distinct cards were overridden with one (system, code) reason."""

    system: str | None
    code: str | None
    count: int


@dataclass(frozen=True)
class ReportRow:
    """Aggregated outcome counts for one (service_id, topic)."""

    service_id: str
    topic: str
    issued: int
    accepted: int
    overridden: int
    override_reasons: tuple[ReasonCount, ...]


class StoreError(Exception):
    """Base class of every error raised by the store."""


class UnknownCardError(StoreError):
    """Feedback named card uuids that this service never issued (a client error)."""

    def __init__(self, card_uuids: Sequence[str]) -> None:
        self.card_uuids: tuple[str, ...] = tuple(card_uuids)
        super().__init__(f"unknown card uuid(s): {', '.join(self.card_uuids)}")


class StoreUnavailableError(StoreError):
    """The database could not be reached or is busy; the caller should answer 503 and retry."""


class UnstorableValueError(StoreError, ValueError):
    """A text the store would keep cannot be kept by every supported database; nothing was written.

    `field` names the value (a column, e.g. ``hook_instance``), `reason` what is wrong with it; neither
    carries the value itself, so the error can be logged.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def text_problem(value: str, max_length: int | None = None) -> str | None:
    """Why the store cannot keep `value` on every supported database, or None when it can.

    PostgreSQL refuses U+0000 in text; neither database can encode an unpaired surrogate (UTF-8 has
    none); a VARCHAR(n) column on PostgreSQL refuses more than n characters. Every other character,
    control characters included, is kept exactly.

        text_problem("a\tb")              # None
        text_problem("a\x00b")            # 'must not contain U+0000 (NUL)'
        text_problem("x" * 300, 255)      # 'must be at most 255 characters'
    """
    if max_length is not None and len(value) > max_length:
        return f"must be at most {max_length} characters"
    if "\x00" in value:
        return "must not contain U+0000 (NUL)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must not contain an unpaired surrogate (U+D800 to U+DFFF)"
    return None


def _require_storable(field: str, value: str | None, max_length: int | None) -> None:
    if value is None:
        return
    problem = text_problem(value, max_length)
    if problem is not None:
        raise UnstorableValueError(field, problem)


def patient_hash(key: bytes, patient_id: str) -> str:
    """Return the keyed HMAC-SHA256 (hex) of a patient id, so ids are never stored in the clear."""
    if not key:
        raise ValueError("patient_hash key must not be empty")
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- ORM model


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: store only accepts timezone-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base for the store's tables (schema lives in cds/migrations)."""


class IssuedCardRow(Base):
    """Row of ``issued_card``."""

    __tablename__ = "issued_card"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(255))
    hook_instance: Mapped[str] = mapped_column(String(255))
    topic: Mapped[str] = mapped_column(String(255))
    rule_ids: Mapped[list[str]] = mapped_column(JSON)
    patient_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    pack_version: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_issued_card_service_topic", "service_id", "topic"),)


class FeedbackRow(Base):
    """Row of ``feedback``."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(36), ForeignKey("issued_card.uuid"), index=True)
    service_id: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON)
    override_reason_code: Mapped[str | None] = mapped_column(String(255))
    override_reason_system: Mapped[str | None] = mapped_column(String(1024))
    override_comment: Mapped[str | None] = mapped_column(Text)
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),)


class SeenJtiRow(Base):
    """Row of ``seen_jti``: a JWT id accepted once, kept until it can no longer be replayed."""

    __tablename__ = "seen_jti"

    iss: Mapped[str] = mapped_column(String(512), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class DeadLetterRow(Base):
    """Row of ``dead_letter``: something the store was handed but could not keep as it was.

    `payload` is the item as ASCII-only JSON (``\\u0000`` and unpaired surrogates escaped), which every
    database can keep; `reason` names the error class and field, never the value.
    """

    __tablename__ = "dead_letter"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    set_aside_at: Mapped[datetime] = mapped_column(UTCDateTime)


# Longest text each column keeps (the VARCHAR length PostgreSQL enforces); None: unbounded TEXT.
CARD_LIMITS: dict[str, int | None] = {
    "uuid": 36,
    "service_id": 255,
    "hook_instance": 255,
    "topic": 255,
    "rule_ids": 255,
    "patient_hash": 64,
    "pack_version": 64,
}
FEEDBACK_LIMITS: dict[str, int | None] = {
    "card_uuid": 36,
    "service_id": 255,
    "accepted_suggestions": 255,
    "override_reason_code": 255,
    "override_reason_system": 1024,
    "override_comment": None,
}
JTI_LIMITS: dict[str, int | None] = {"iss": 512, "jti": 255}


# --------------------------------------------------------------------------- helpers


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def _dedupe_key(service_id: str, item: FeedbackItem) -> str:
    """sha256 of the canonical JSON of one feedback item (plus the service it was sent to)."""
    canonical = {
        "service_id": service_id,
        "card_uuid": item.card_uuid,
        "outcome": item.outcome,
        "outcome_timestamp": item.outcome_timestamp.astimezone(UTC).isoformat(),
        "accepted_suggestions": sorted(item.accepted_suggestions),
        "override_reason_code": item.override_reason_code,
        "override_reason_system": item.override_reason_system,
        "override_comment": item.override_comment,
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _is_unavailable(error: sa_exc.SQLAlchemyError) -> bool:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


def _enable_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Switch a SQLite file to WAL; the switch can report "locked" without waiting, so retry it."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _migrations_dir() -> str:
    return str(resources.files("cds") / "migrations")


# --------------------------------------------------------------------------- the store


class Store:
    """Feedback and audit store over SQLite (single host) or PostgreSQL (shared by workers)."""

    def __init__(self, url: str, *, sqlite_busy_timeout_ms: int = _SQLITE_BUSY_TIMEOUT_MS) -> None:
        parsed = make_url(url)
        self._backend = parsed.get_backend_name()
        self._last_jti_prune: datetime | None = None
        self._prune_lock = threading.Lock()
        if self._backend == "sqlite":
            database = parsed.database
            if not database or database == ":memory:":
                raise ValueError("SQLite store needs a file path, e.g. sqlite:///var/cds.sqlite3")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            self._engine: Engine = create_engine(
                parsed, connect_args={"timeout": sqlite_busy_timeout_ms / 1000}
            )
            self._install_sqlite_hooks(self._engine, sqlite_busy_timeout_ms)
        elif self._backend == "postgresql":
            self._engine = create_engine(
                parsed,
                pool_pre_ping=True,
                connect_args={"connect_timeout": _CONNECT_TIMEOUT_SECONDS},
            )
        else:
            raise ValueError(f"unsupported store backend {self._backend!r}: use sqlite or postgresql")

    @staticmethod
    def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
        # pysqlite's own transaction handling defers BEGIN; take control so every transaction
        # starts with BEGIN IMMEDIATE (a write lock up front, waiting out busy_timeout).
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                _enable_wal(cursor, busy_timeout_ms)
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @property
    def engine(self) -> Engine:
        """The underlying SQLAlchemy engine (for diagnostics and tests)."""
        return self._engine

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One committed-or-rolled-back transaction; connectivity problems become StoreUnavailableError."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa_exc.SQLAlchemyError as error:
            if _is_unavailable(error):
                raise StoreUnavailableError(f"store unavailable: {error.__class__.__name__}") from error
            raise

    # ------------------------------------------------------------------ schema

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; safe to run concurrently from several workers."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", _migrations_dir())
        with self._transaction() as conn:
            if self._backend == "postgresql":
                # Released at commit; a second worker waits here, then finds the schema at head.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            # On SQLite the BEGIN IMMEDIATE of this transaction already serialises writers.
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except sa_exc.SQLAlchemyError:
            return False
        return True

    # ------------------------------------------------------------------ writes

    def record_cards(
        self,
        *,
        service_id: str,
        hook_instance: str,
        patient_hash: str,
        pack_version: str,
        cards: Sequence[IssuedCard],
        issued_at: datetime,
    ) -> None:
        """Remember the cards returned by one hook call, in one transaction."""
        self.record_card_batches(
            [PendingCards(service_id, hook_instance, patient_hash, pack_version, tuple(cards), issued_at)]
        )

    @staticmethod
    def check_cards(pending: PendingCards) -> None:
        """Raise UnstorableValueError naming the first value of `pending` no supported database keeps."""
        _require_aware("issued_at", pending.issued_at)
        for name in ("service_id", "hook_instance", "patient_hash", "pack_version"):
            _require_storable(name, getattr(pending, name), CARD_LIMITS[name])
        for card in pending.cards:
            _require_storable("uuid", card.uuid, CARD_LIMITS["uuid"])
            _require_storable("topic", card.topic, CARD_LIMITS["topic"])
            for rule_id in card.rule_ids:
                _require_storable("rule_ids", rule_id, CARD_LIMITS["rule_ids"])

    def record_card_batches(self, batches: Sequence[PendingCards]) -> int:
        """Remember the cards of several hook calls in one transaction (a group commit); return the rows.

        Every value is checked first (UnstorableValueError, nothing written); the database may still
        refuse a row (another StoreError subclass is never raised for that: the caller sees the
        SQLAlchemy error and can retry the batches one by one).
        """
        for pending in batches:
            self.check_cards(pending)
        rows = [
            {
                "uuid": card.uuid,
                "service_id": pending.service_id,
                "hook_instance": pending.hook_instance,
                "topic": card.topic,
                "rule_ids": list(card.rule_ids),
                "patient_hash": pending.patient_hash,
                "issued_at": pending.issued_at,
                "pack_version": pending.pack_version,
            }
            for pending in batches
            for card in pending.cards
        ]
        if not rows:
            return 0
        # Idempotent by card uuid: a batch whose commit was lost in an outage may be written twice
        # (see CardBacklog), and the second write must neither fail nor duplicate.
        stmt: Any
        if self._backend == "postgresql":
            stmt = pg_dialect.insert(IssuedCardRow).on_conflict_do_nothing(index_elements=["uuid"])
        else:
            stmt = sqlite_dialect.insert(IssuedCardRow).on_conflict_do_nothing(index_elements=["uuid"])
        with self._transaction() as conn:
            conn.execute(stmt, rows)
        return len(rows)

    def set_aside(self, *, kind: str, reason: str, payload: Mapping[str, Any], at: datetime) -> int:
        """Keep an item the store could not take as it was, as ASCII JSON in ``dead_letter``; return its id.

        `reason` must not carry the item's values (it is logged); StoreUnavailableError when the store
        is down (the caller keeps the item and tries again).
        """
        _require_aware("at", at)
        row = {
            "kind": kind[:32],
            "reason": reason[:255],
            # ensure_ascii escapes U+0000 and unpaired surrogates: what no column could take, this can.
            "payload": json.dumps(payload, ensure_ascii=True, sort_keys=True, default=str),
            "set_aside_at": at,
        }
        with self._transaction() as conn:
            return int(
                conn.execute(insert(DeadLetterRow).values(row).returning(DeadLetterRow.id)).scalar_one()
            )

    def probe_write(self) -> bool:
        """True when a write would succeed now: an insert in a transaction that is then rolled back.

        Catches what a SELECT 1 cannot: a read-only database or standby, a held SQLite write lock, a
        missing table or permission.
        """
        row = {"kind": "probe", "reason": "probe", "payload": "{}", "set_aside_at": datetime.now(UTC)}
        try:
            with self._engine.connect() as conn:
                transaction = conn.begin()
                try:
                    conn.execute(insert(DeadLetterRow).values(row))
                finally:
                    transaction.rollback()
        except sa_exc.SQLAlchemyError:
            return False
        return True

    def _insert_ignoring(self, conn: Connection, row: dict[str, Any]) -> int:
        table = FeedbackRow
        if self._backend == "postgresql":
            stmt: Any = (
                pg_dialect.insert(table).values(row).on_conflict_do_nothing(index_elements=["dedupe_key"])
            )
        else:
            stmt = (
                sqlite_dialect.insert(table).values(row).on_conflict_do_nothing(index_elements=["dedupe_key"])
            )
        # RETURNING reports what was really inserted (rowcount of INSERT is not reliable across drivers).
        return len(conn.execute(stmt.returning(FeedbackRow.id)).all())

    def record_feedback(
        self, *, service_id: str, items: Sequence[FeedbackItem], received_at: datetime
    ) -> int:
        """Store a feedback batch all-or-nothing; return how many rows were new (duplicates are ignored).

        Raises UnknownCardError naming every card uuid not issued by ``service_id`` (nothing is stored),
        and StoreUnavailableError when the database cannot be reached.
        """
        _require_aware("received_at", received_at)
        _require_storable("service_id", service_id, FEEDBACK_LIMITS["service_id"])
        for item in items:
            if item.outcome not in _OUTCOMES:
                raise ValueError(f"unknown feedback outcome {item.outcome!r}")
            _require_aware("outcome_timestamp", item.outcome_timestamp)
            _require_storable("card_uuid", item.card_uuid, FEEDBACK_LIMITS["card_uuid"])
            for suggestion in item.accepted_suggestions:
                _require_storable("accepted_suggestions", suggestion, FEEDBACK_LIMITS["accepted_suggestions"])
            for name in ("override_reason_code", "override_reason_system", "override_comment"):
                _require_storable(name, getattr(item, name), FEEDBACK_LIMITS[name])
        if not items:
            return 0
        wanted = sorted({item.card_uuid for item in items})
        with self._transaction() as conn:
            known = set(
                conn.scalars(
                    select(IssuedCardRow.uuid).where(
                        IssuedCardRow.uuid.in_(wanted), IssuedCardRow.service_id == service_id
                    )
                )
            )
            unknown = [uuid for uuid in wanted if uuid not in known]
            if unknown:
                raise UnknownCardError(unknown)
            new_rows = 0
            for item in items:
                new_rows += self._insert_ignoring(
                    conn,
                    {
                        "card_uuid": item.card_uuid,
                        "service_id": service_id,
                        "outcome": item.outcome,
                        "accepted_suggestions": list(item.accepted_suggestions),
                        "override_reason_code": item.override_reason_code,
                        "override_reason_system": item.override_reason_system,
                        "override_comment": item.override_comment,
                        "outcome_timestamp": item.outcome_timestamp,
                        "received_at": received_at,
                        "dedupe_key": _dedupe_key(service_id, item),
                    },
                )
        return new_rows

    def remember_jti(self, *, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record a JWT id; False when (iss, jti) was already seen and has not yet expired (a replay)."""
        return self.remember_jtis([(iss, jti, expires_at)], now=now)[0]

    def remember_jtis(self, ids: Sequence[tuple[str, str, datetime]], *, now: datetime) -> list[bool]:
        """Record several JWT ids (iss, jti, expires_at) in one transaction (a group commit, see
        cds.jtiwriter); per id, in order, False when it was already seen and has not yet expired (a
        replay), an id given twice here included: its second use is the replay.

        Every value is checked first (UnstorableValueError, nothing written).
        """
        _require_aware("now", now)
        for iss, jti, expires_at in ids:
            _require_aware("expires_at", expires_at)
            _require_storable("iss", iss, JTI_LIMITS["iss"])
            _require_storable("jti", jti, JTI_LIMITS["jti"])
        table = SeenJtiRow
        # Insert, or take over an expired row; a live row makes the upsert a no-op (no row returned).
        stmt: Any
        if self._backend == "postgresql":
            ins = pg_dialect.insert(table)
            stmt = ins.on_conflict_do_update(
                index_elements=["iss", "jti"],
                set_={"expires_at": ins.excluded.expires_at},
                where=SeenJtiRow.expires_at <= now,
            )
        else:
            sins = sqlite_dialect.insert(table)
            stmt = sins.on_conflict_do_update(
                index_elements=["iss", "jti"],
                set_={"expires_at": sins.excluded.expires_at},
                where=SeenJtiRow.expires_at <= now,
            )
        stmt = stmt.returning(SeenJtiRow.jti)
        fresh: list[bool] = []
        with self._transaction() as conn:
            for iss, jti, expires_at in ids:
                values = {"iss": iss, "jti": jti, "expires_at": expires_at}
                fresh.append(len(conn.execute(stmt, values).all()) == 1)
            if self._prune_due(now):
                conn.execute(delete(SeenJtiRow).where(SeenJtiRow.expires_at <= now))
        return fresh

    def _prune_due(self, now: datetime) -> bool:
        with self._prune_lock:
            last = self._last_jti_prune
            if last is not None and last <= now < last + _JTI_PRUNE_INTERVAL:
                return False
            self._last_jti_prune = now
            return True

    # ------------------------------------------------------------------ reads

    def report(self) -> list[ReportRow]:
        """Per (service_id, topic): cards issued, distinct cards accepted / overridden, override reasons."""
        card = IssuedCardRow
        fb = FeedbackRow
        with self._transaction() as conn:
            issued = conn.execute(
                select(card.service_id, card.topic, func.count()).group_by(card.service_id, card.topic)
            ).all()
            outcomes = conn.execute(
                select(card.service_id, card.topic, fb.outcome, func.count(fb.card_uuid.distinct()))
                .join(fb, fb.card_uuid == card.uuid)
                .group_by(card.service_id, card.topic, fb.outcome)
            ).all()
            reasons = conn.execute(
                select(
                    card.service_id,
                    card.topic,
                    fb.override_reason_system,
                    fb.override_reason_code,
                    func.count(fb.card_uuid.distinct()),
                )
                .join(fb, fb.card_uuid == card.uuid)
                .where(fb.outcome == "overridden")
                .group_by(card.service_id, card.topic, fb.override_reason_system, fb.override_reason_code)
            ).all()
        outcome_counts: dict[tuple[str, str, str], int] = {
            (service, topic, outcome): int(count) for service, topic, outcome, count in outcomes
        }
        reason_counts: dict[tuple[str, str], list[ReasonCount]] = {}
        for service, topic, system, code, count in reasons:
            reason_counts.setdefault((service, topic), []).append(ReasonCount(system, code, int(count)))
        rows = []
        for service, topic, count in sorted(issued, key=lambda r: (r[0], r[1])):
            listed = sorted(
                reason_counts.get((service, topic), []),
                key=lambda r: (-r.count, r.system or "", r.code or ""),
            )
            rows.append(
                ReportRow(
                    service_id=service,
                    topic=topic,
                    issued=int(count),
                    accepted=outcome_counts.get((service, topic, "accepted"), 0),
                    overridden=outcome_counts.get((service, topic, "overridden"), 0),
                    override_reasons=tuple(listed),
                )
            )
        return rows

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()


# --------------------------------------------------------------------------- the outage backlog


@dataclass(frozen=True)
class PendingCards:
    """The arguments of one `Store.record_cards` call, kept while the store cannot take them."""

    service_id: str
    hook_instance: str
    patient_hash: str
    pack_version: str
    cards: tuple[IssuedCard, ...]
    issued_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The batch as plain JSON values (for dead_letter)."""
        return {
            "service_id": self.service_id,
            "hook_instance": self.hook_instance,
            "patient_hash": self.patient_hash,
            "pack_version": self.pack_version,
            "issued_at": self.issued_at.isoformat(),
            "cards": [{"uuid": c.uuid, "topic": c.topic, "rule_ids": list(c.rule_ids)} for c in self.cards],
        }


class CardBacklog:
    """Issued-card rows on their way to the store: written at once, queued while it is down, or set aside.

    A hook call must answer even when the store is down, but feedback can only be joined to cards
    the store knows. So `record_many` writes straight through (one transaction for all the calls it is
    given: cds.cardwriter groups concurrent calls) while nothing is waiting, and queues (without
    touching the store again) once something is; `flush` empties the queue in order and is called
    before any feedback is stored and periodically by the app. The queue is bounded: when it holds
    `capacity` batches, a call gets StoreUnavailableError (the hook call then answers 503).

    A batch the store refuses for what it holds (a value no database keeps, a row the database
    rejects) is set aside into ``dead_letter`` and counted in `set_aside_total`, so that one bad value
    never blocks the queue; the batches around it are written.

        backlog.record(pending)   # store down: queued, len(backlog) == 1
        backlog.flush()           # store back: written, len(backlog) == 0

    CAUTION: what is queued lives in this process only; a worker killed before the store returns
    loses it (feedback on those cards is then answered 400, never acknowledged and lost).
    """

    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 5_000,
        gate: Callable[[], AbstractContextManager[object]] = nullcontext,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[int, int], None] | None = None,
        on_set_aside: Callable[[PendingCards, str], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._store = store
        self._capacity = capacity
        self._gate = gate
        self._clock = clock
        self._on_commit = on_commit
        self._on_set_aside = on_set_aside
        self._queue: deque[PendingCards] = deque()
        self._lock = threading.Lock()  # guards the queue and the counters
        self._flushing = threading.Lock()  # one flusher at a time keeps the order
        self.queued_total = 0  # batches that ever waited here (for logs and tests)
        self.set_aside_total = 0  # batches moved to dead_letter (or held in `unwritable`)
        self.commits = 0  # transactions that wrote card rows
        self.committed_batches = 0  # hook calls whose rows those transactions wrote
        self.committed_rows = 0
        self.stalled = False  # the last flush left batches queued (the store still refuses writes)
        # Batches that could be neither written nor set aside (dead_letter itself refused them).
        self.unwritable: list[PendingCards] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ writing

    def _commit(self, batches: Sequence[PendingCards]) -> None:
        with self._gate():
            self._store.record_card_batches(batches)
        with self._lock:
            self.commits += 1
            self.committed_batches += len(batches)
            self.committed_rows += sum(len(p.cards) for p in batches)
        if self._on_commit is not None:
            self._on_commit(len(batches), sum(len(p.cards) for p in batches))

    def _set_aside(self, pending: PendingCards, error: Exception) -> None:
        """Move a batch the store refuses into dead_letter; StoreUnavailableError keeps it for later."""
        reason = type(error).__name__
        if isinstance(error, UnstorableValueError):
            reason += f": {error.field}: {error.reason}"
        try:
            with self._gate():
                self._store.set_aside(
                    kind="issued_card", reason=reason, payload=pending.as_json(), at=self._clock()
                )
        except StoreUnavailableError:
            raise
        except Exception:  # dead_letter refused it too: keep it in memory rather than lose or retry it
            with self._lock:
                self.unwritable.append(pending)
        with self._lock:
            self.set_aside_total += 1
        if self._on_set_aside is not None:
            self._on_set_aside(pending, reason)

    def _drain(self, work: deque[PendingCards]) -> None:
        """Write (or set aside) `work` from the left, popping what is done.

        Raises StoreUnavailableError with what is left still in `work`, in order.
        """
        if not work:
            return
        try:
            self._commit(list(work))
        except StoreUnavailableError:
            raise
        except Exception as error:  # something in it is refused: find what, one batch at a time
            if len(work) == 1:
                self._set_aside(work[0], _unwrap(error))
                work.popleft()
                return
        else:
            work.clear()
            return
        while work:
            head = work[0]
            try:
                self._commit([head])
            except StoreUnavailableError:
                raise
            except Exception as error:
                self._set_aside(head, _unwrap(error))
            work.popleft()

    def _enqueue(self, pending: PendingCards) -> None:
        with self._lock:
            if len(self._queue) >= self._capacity:
                raise StoreUnavailableError("store unavailable and the card backlog is full")
            self._queue.append(pending)
            self.queued_total += 1

    def record_many(self, batches: Sequence[PendingCards]) -> list[bool | StoreUnavailableError]:
        """Write the batches in one transaction, or queue them while the store is down.

        Per batch, in order: False when written (or set aside), True when queued, and a
        StoreUnavailableError when it could be neither (the queue is full: that call answers 503).
        """
        if len(self):
            return [self._try_enqueue(pending) for pending in batches]
        work = deque(batches)
        try:
            self._drain(work)
        except StoreUnavailableError:
            done = len(batches) - len(work)
            return [False] * done + [self._try_enqueue(pending) for pending in work]
        return [False] * len(batches)

    def _try_enqueue(self, pending: PendingCards) -> bool | StoreUnavailableError:
        try:
            self._enqueue(pending)
        except StoreUnavailableError as full:
            return full
        return True

    def record(self, pending: PendingCards) -> bool:
        """Write the cards, or queue them when the store is down; True when they were queued."""
        outcome = self.record_many([pending])[0]
        if isinstance(outcome, StoreUnavailableError):
            raise outcome
        return outcome

    def flush(self, chunk: int = 500) -> int:
        """Write every queued batch, oldest first, up to `chunk` per transaction; return how many left.

        Raises StoreUnavailableError when the store is still down (what is left stays queued, in order).
        """
        done = 0
        with self._flushing:
            while True:
                with self._lock:
                    if not self._queue:
                        self.stalled = False
                        return done
                    work = deque(list(self._queue)[:chunk])  # only this flusher pops: the head is stable
                taken = len(work)
                try:
                    self._drain(work)
                except StoreUnavailableError:
                    self._pop(taken - len(work))
                    with self._lock:
                        self.stalled = True
                    raise
                self._pop(taken)
                done += taken

    def _pop(self, count: int) -> None:
        with self._lock:
            for _ in range(count):
                self._queue.popleft()


def _unwrap(error: Exception) -> Exception:
    """The error to name in dead_letter.reason: the DBAPI error under SQLAlchemy's wrapper."""
    if isinstance(error, sa_exc.DBAPIError) and isinstance(error.orig, Exception):
        return error.orig
    return error
