"""The API and its store together, over real HTTP: text no database keeps, a poisoned queue, a held
write lock, and group commit. On SQLite and (when reachable) PostgreSQL.

Issue 9 classes 2 and 3, issue 11 "card records by group commit".
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from cds.store import (
    DeadLetterRow,
    FeedbackRow,
    IssuedCard,
    IssuedCardRow,
    PendingCards,
    Store,
    StoreUnavailableError,
    text_problem,
)
from tests.support.api import NOW, Api, Issuer, dev_settings, hook_request, running, secure_settings
from tests.support.postgres import fresh_database
from tests.test_api_operations import metric

SERVICE = "/cds-services/cramp-assessment"
FEEDBACK = SERVICE + "/feedback"

CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(["\x7f", "\x85", "\u2028"])
AWKWARD_TEXT = st.one_of(
    st.text(st.one_of(CONTROL, st.characters(categories=["Cs"]), st.characters()), min_size=1, max_size=30),
    st.builds(
        lambda char, n: char * n,
        st.sampled_from(["x", "é", "\x00"]),
        st.sampled_from([255, 256, 1024, 1025, 10_000, 10_001]),
    ),
)
AWKWARD = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    request.getfixturevalue("postgres_url")  # skips when no server is reachable
    with fresh_database("cds_api_store") as url:
        yield url


@pytest.fixture
def api(tmp_path: Path, pack: RulePack, database_url: str) -> Iterator[Api]:
    with running(dev_settings(tmp_path, database_url=database_url), evaluator=Evaluator(pack)) as api:
        yield api


def _json(document: dict[str, Any]) -> bytes:
    # json (not orjson) writes an unpaired surrogate as a \ud800 escape, as a careless client would.
    return json.dumps(document).encode()


def _post(api: Api, path: str, document: dict[str, Any]) -> httpx.Response:
    return api.client.post(path, content=_json(document), headers={"Content-Type": "application/json"})


def _refused(response: httpx.Response, value: str, field: str) -> None:
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    if text_problem(value) and "\x00" not in value and not value.isascii():
        return  # an unpaired surrogate: the JSON itself is refused before any field is read
    assert issue["expression"] == [field]


# --------------------------------------------------------------------------- text no database keeps


@AWKWARD
@given(value=AWKWARD_TEXT)
def test_a_hook_instance_is_kept_exactly_or_refused_naming_it(api: Api, value: str) -> None:
    request = hook_request()
    request["hookInstance"] = value
    response = _post(api, SERVICE, request)
    if text_problem(value, 255) is not None:
        _refused(response, value, "hookInstance")
        return
    assert response.status_code == 200, response.text
    uuids = [card["uuid"] for card in response.json()["cards"]]
    with api.runtime.store.engine.connect() as conn:
        kept = conn.scalars(select(IssuedCardRow.hook_instance).where(IssuedCardRow.uuid.in_(uuids))).all()
    assert kept == [value] * len(uuids)


FEEDBACK_FIELDS = {
    "feedback[0].overrideReason.userComment": (10_000, "override_comment"),
    "feedback[0].overrideReason.reason.code": (255, "override_reason_code"),
    "feedback[0].overrideReason.reason.system": (1024, "override_reason_system"),
    "feedback[0].acceptedSuggestions[0].id": (255, "accepted_suggestions"),
}


def _feedback_entry(card: str, field: str, value: str) -> dict[str, Any]:
    if field.endswith("acceptedSuggestions[0].id"):
        return {"card": card, "outcome": "accepted", "outcomeTimestamp": NOW.isoformat(),
                "acceptedSuggestions": [{"id": value}]}  # fmt: skip
    reason: dict[str, Any] = {"code": "patient-declined", "system": "https://example.org/reasons"}
    override: dict[str, Any] = {"reason": reason, "userComment": "comment"}
    leaf = field.rsplit(".", 1)[1]
    (override if leaf == "userComment" else reason)[leaf] = value
    return {
        "card": card,
        "outcome": "overridden",
        "outcomeTimestamp": NOW.isoformat(),
        "overrideReason": override,
    }


@pytest.mark.parametrize("field", sorted(FEEDBACK_FIELDS))
@AWKWARD
@given(value=AWKWARD_TEXT)
def test_feedback_text_is_kept_exactly_or_refused_naming_it(api: Api, field: str, value: str) -> None:
    card = api.client.post(SERVICE, json=hook_request()).json()["cards"][0]["uuid"]
    response = _post(api, FEEDBACK, {"feedback": [_feedback_entry(card, field, value)]})
    limit, column = FEEDBACK_FIELDS[field]
    with api.runtime.store.engine.connect() as conn:
        rows = conn.execute(select(FeedbackRow).where(FeedbackRow.card_uuid == card)).all()
    if text_problem(value, limit) is not None:
        _refused(response, value, field)
        assert rows == []
        return
    assert response.status_code == 200, response.text
    [row] = rows
    assert getattr(row, column) == ([value] if column == "accepted_suggestions" else value)


# --------------------------------------------------------------------------- a poisoned queue


class SwitchedStore(Store):
    """A real store that can be switched off (an outage: card writes fail and a write probe fails), and
    whose value checks can be skipped, so that the database itself must refuse a value the checks miss."""

    down = False
    checked = True

    def record_card_batches(self, batches: Sequence[PendingCards]) -> int:
        if self.down:
            raise StoreUnavailableError("switched off")
        return super().record_card_batches(batches)

    def probe_write(self) -> bool:
        return not self.down and super().probe_write()

    def check_cards(self, pending: PendingCards) -> None:  # type: ignore[override]
        if self.checked:
            Store.check_cards(pending)


def _wait(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_poisoned_queued_card_is_set_aside_and_never_blocks_the_queue(
    tmp_path: Path, pack: RulePack, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SwitchedStore(database_url)
    store.checked = False
    # What each database itself refuses: PostgreSQL a U+0000, SQLite (through its driver) a surrogate.
    poison = "a\x00b" if store.engine.dialect.name == "postgresql" else "a\udfffb"
    request = hook_request()
    patient = request["context"]["patientId"]
    with (
        caplog.at_level(logging.DEBUG),
        running(dev_settings(tmp_path), evaluator=Evaluator(pack), store=store) as api,
    ):
        store.down = True
        before = api.client.post(SERVICE, json=request)
        assert before.status_code == 200
        # The API refuses the value itself: it never reaches the queue that way...
        nul = hook_request() | {"hookInstance": "a\x00b"}
        assert _post(api, SERVICE, nul).json()["issue"][0]["expression"] == ["hookInstance"]
        # ...but a value the checks miss must not block the queue either.
        card = IssuedCard(uuid=str(uuid.uuid4()), topic="magnesium", rule_ids=("rule",))
        poisoned = PendingCards("cramp-assessment", poison, "0" * 64, pack.version, (card,), NOW)
        assert api.runtime.cards.record(poisoned) is True
        after = api.client.post(SERVICE, json=request)
        assert after.status_code == 200
        assert len(api.runtime.cards) == 3
        down = api.client.get("/readyz")
        assert down.status_code == 503
        assert (down.json()["store"], down.json()["backlog"]) == ("not writable", 3)

        store.down = False
        _wait(lambda: len(api.runtime.cards) == 0, "the queue was not flushed after the store came back")
        ready = api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() | {"rulePack": ""} == {
            "status": "ready",
            "rulePack": "",
            "store": "ok",
            "backlog": 0,
            "setAside": 1,
        }
        later = api.client.post(SERVICE, json=request)
        assert later.status_code == 200
        assert metric(api.client.get("/metrics").text, "cds_store_set_aside_total", kind="issued_card") == 1
        feedback = {"feedback": [{"card": before.json()["cards"][0]["uuid"], "outcome": "accepted",
                                  "outcomeTimestamp": NOW.isoformat()}]}  # fmt: skip
        assert api.client.post(FEEDBACK, json=feedback).status_code == 200
    answered = {c["uuid"] for r in (before, after, later) for c in r.json()["cards"]}
    with store.engine.connect() as conn:
        stored = set(conn.scalars(select(IssuedCardRow.uuid)))
        [letter] = conn.execute(select(DeadLetterRow)).all()
    store.close()
    assert answered <= stored
    assert card.uuid not in stored
    assert json.loads(letter.payload)["hook_instance"] == poison
    set_aside = [r for r in caplog.records if r.getMessage() == "store.card.set_aside"]
    assert len(set_aside) == 1
    for record in caplog.records:
        line = record.getMessage() + repr(record.__dict__)
        assert patient not in line
        assert poison not in line


# --------------------------------------------------------------------------- a held SQLite write lock


def test_a_held_sqlite_write_lock_leaves_the_event_loop_free(tmp_path: Path, pack: RulePack) -> None:
    path = tmp_path / "locked.sqlite3"
    # A busy timeout longer than the test: the calls wait for the lock rather than queue after 10 s.
    store = Store(f"sqlite:///{path}", sqlite_busy_timeout_ms=120_000)
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack), store=store) as api:
        assert api.client.post(SERVICE, json=hook_request()).status_code == 200  # migrated, warm
        holder = sqlite3.connect(path, isolation_level=None)  # another connection: as another process
        holder.execute("BEGIN IMMEDIATE")
        released = False
        try:

            def call() -> httpx.Response:
                with httpx.Client(base_url=api.base, timeout=60) as client:
                    return client.post(SERVICE, json=hook_request())

            with ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(call) for _ in range(4)]
                # One call's commit waits on the lock, and at least one more call waits behind it.
                _wait(lambda: api.runtime.card_writer.waiting >= 1, "no hook call reached the store")
                waits = []
                for _ in range(5):
                    began = time.monotonic()
                    assert api.client.get("/healthz", timeout=10).status_code == 200
                    waits.append(time.monotonic() - began)
                still_locked = not all(c.done() for c in calls)
                holder.execute("ROLLBACK")
                released = True
                answers = [c.result(timeout=60) for c in calls]
        finally:
            if not released:
                holder.execute("ROLLBACK")
            holder.close()
        assert still_locked, "the hook calls did not wait for the lock (nothing was tested)"
        assert max(waits) < 3.0, waits  # generous: /healthz answered while the lock was held
        assert {a.status_code for a in answers} <= {200, 503}
        _wait(lambda: len(api.runtime.cards) == 0, "queued cards were not written after the lock went")
    answered = {c["uuid"] for a in answers if a.status_code == 200 for c in a.json()["cards"]}
    with store.engine.connect() as conn:
        stored = set(conn.scalars(select(IssuedCardRow.uuid)))
    store.close()
    assert answered <= stored


# --------------------------------------------------------------------------- group commit


def _hold_card_writes(database_url: str) -> Any:
    """A connection of another client that holds the write lock on issued_card until it is closed."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        return holder
    url = make_url(database_url)
    conn = psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    conn.execute("LOCK TABLE issued_card IN EXCLUSIVE MODE")  # inside the implicit transaction
    return conn


def test_concurrent_hook_calls_share_commits_and_every_answered_card_is_stored(api: Api) -> None:
    backlog = api.runtime.cards
    assert api.client.post(SERVICE, json=hook_request()).status_code == 200  # migrated, warm
    answered: list[str] = []
    lock = threading.Lock()

    def call(_: int) -> int:
        with httpx.Client(base_url=api.base, timeout=60) as client:
            response = client.post(SERVICE, json=hook_request())
        if response.status_code == 200:
            with lock:
                answered.extend(card["uuid"] for card in response.json()["cards"])
        return response.status_code

    commits, batches = backlog.commits, backlog.committed_batches
    # Calls that arrive while a commit is in progress wait together: hold the table so they pile up.
    holder = _hold_card_writes(str(api.runtime.store.engine.url.render_as_string(hide_password=False)))
    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = pool.map(call, range(48))
            _wait(
                lambda: api.runtime.card_writer.waiting >= 8, "the hook calls did not reach the writer", 120
            )
            holder.rollback()
            statuses_seen = list(statuses)
    finally:
        holder.close()
    assert set(statuses_seen) == {200}
    new_commits = backlog.commits - commits
    new_batches = backlog.committed_batches - batches
    print(f"\n48 hook calls: {new_batches} written in {new_commits} commits")
    assert new_batches == 48
    assert new_commits <= new_batches - 7  # one commit carried at least the 8 calls that waited
    with api.runtime.store.engine.connect() as conn:
        stored = set(conn.scalars(select(IssuedCardRow.uuid)))
    assert set(answered) <= stored
    assert len(answered) == len(set(answered))


# --------------------------------------------------------------------------- JWT ids the store keeps


@pytest.mark.parametrize(
    "jti",
    [
        pytest.param("a\x00b", id="nul"),
        pytest.param("\ud800", id="unpaired-surrogate"),
        pytest.param("x" * 256, id="longer-than-the-column"),
    ],
)
def test_a_jwt_id_no_database_keeps_is_401_and_poisons_nothing(
    tmp_path: Path, pack: RulePack, database_url: str, jti: str
) -> None:
    issuer = Issuer()
    settings = secure_settings(tmp_path, issuer, database_url=database_url)
    with running(settings, evaluator=Evaluator(pack)) as api:
        url = api.url(SERVICE)
        # PyJWT reads claims with json.loads, which (unlike the body parser) accepts a lone surrogate.
        bad = issuer.token(url, now=NOW, jti=jti)
        refused = api.client.post(SERVICE, json=hook_request(), headers={"Authorization": f"Bearer {bad}"})
        assert refused.status_code == 401
        good = issuer.token(url, now=NOW)
        assert (
            api.client.post(
                SERVICE, json=hook_request(), headers={"Authorization": f"Bearer {good}"}
            ).status_code
            == 200
        )
        assert len(api.runtime.jti_cache) == 0
