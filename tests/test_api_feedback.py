"""Feedback over HTTP, stored durably and reported, against SQLite and PostgreSQL.

https://cds-hooks.hl7.org/2.0/#feedback
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.cli import main
from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from cds.store import FeedbackRow, Store
from tests.support.api import NOW, Api, dev_settings, hook_request, running
from tests.support.postgres import fresh_database

SERVICE = "/cds-services/cramp-assessment"
FEEDBACK = SERVICE + "/feedback"
WHEN = NOW.isoformat()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
        return
    request.getfixturevalue("postgres_url")  # skips when no server is reachable
    with fresh_database("cds_api_feedback") as url:
        yield url


@pytest.fixture
def api(tmp_path: Path, pack: RulePack, database_url: str) -> Iterator[Api]:
    with running(dev_settings(tmp_path, database_url=database_url), evaluator=Evaluator(pack)) as api:
        yield api


def issue_cards(api: Api) -> dict[str, dict[str, Any]]:
    response = api.client.post(SERVICE, json=hook_request())
    assert response.status_code == 200
    return {card["source"]["topic"]["code"]: card for card in response.json()["cards"]}


def accepted(card: dict[str, Any], **extra: Any) -> dict[str, Any]:
    entry = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": WHEN}
    if "suggestions" in card:
        entry["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    return entry | extra


def overridden(card: dict[str, Any], comment: str = "patient declined") -> dict[str, Any]:
    reason = {k: card["overrideReasons"][0][k] for k in ("system", "code", "display")}
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": comment},
        "outcomeTimestamp": WHEN,
    }


def send(api: Api, *entries: dict[str, Any]) -> Any:
    return api.client.post(FEEDBACK, json={"feedback": list(entries)})


def stored(api: Api) -> int:
    with Session(api.runtime.store.engine) as session:
        return int(session.scalar(select(func.count()).select_from(FeedbackRow)) or 0)


def report(database_url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["feedback", "report", "--json"], env={"CDS_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


def test_feedback_is_stored_and_reported(api: Api, database_url: str) -> None:
    cards = issue_cards(api)
    with_reasons = next(c for c in cards.values() if "overrideReasons" in c)
    other = next(c for c in cards.values() if c is not with_reasons)
    response = send(api, accepted(other), overridden(with_reasons))
    assert response.status_code == 200
    assert response.content == b""
    assert stored(api) == 2

    rows = {row["topic"]: row for row in report(database_url)}
    assert set(rows) == set(cards)
    assert all(row["service"] == "cramp-assessment" and row["issued"] == 1 for row in rows.values())
    assert rows[other["source"]["topic"]["code"]]["accepted"] == 1
    overridden_row = rows[with_reasons["source"]["topic"]["code"]]
    assert overridden_row["overridden"] == 1
    assert overridden_row["overrideReasons"] == [
        {
            "system": with_reasons["overrideReasons"][0]["system"],
            "code": with_reasons["overrideReasons"][0]["code"],
            "count": 1,
        }
    ]


def test_the_text_report_lists_each_topic(api: Api, database_url: str) -> None:
    cards = issue_cards(api)
    send(api, accepted(next(iter(cards.values()))))
    result = CliRunner().invoke(main, ["feedback", "report"], env={"CDS_DATABASE_URL": database_url})
    assert result.exit_code == 0
    for topic in cards:
        assert topic in result.output


def test_duplicate_feedback_is_idempotent(api: Api) -> None:
    card = next(iter(issue_cards(api).values()))
    for _ in range(3):
        assert send(api, accepted(card)).status_code == 200
    assert stored(api) == 1


def test_a_later_outcome_for_the_same_card_is_kept(api: Api) -> None:
    card = next(c for c in issue_cards(api).values() if "overrideReasons" in c)
    assert send(api, accepted(card)).status_code == 200
    later = overridden(card) | {"outcomeTimestamp": (NOW + timedelta(minutes=5)).isoformat()}
    assert send(api, later).status_code == 200
    assert stored(api) == 2


def test_an_unknown_card_is_400_and_nothing_is_stored(api: Api) -> None:
    card = next(iter(issue_cards(api).values()))
    unknown = {
        "card": "6f1c2b9e-1111-4aaa-8bbb-000000000000",
        "outcome": "accepted",
        "outcomeTimestamp": WHEN,
    }
    response = send(api, accepted(card), unknown)
    assert response.status_code == 400
    found = response.json()["issue"][0]
    assert found["expression"] == ["feedback.card"]
    assert unknown["card"] in found["diagnostics"]
    assert stored(api) == 0


def test_a_card_of_the_other_service_is_unknown_here(api: Api) -> None:
    card = next(iter(issue_cards(api).values()))
    response = api.client.post(
        "/cds-services/calcium-order-check/feedback", json={"feedback": [accepted(card)]}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"outcome": "ignored"}, "feedback[0].outcome"),
        ({"outcomeTimestamp": "2026-06-01T10:00:00"}, "feedback[0].outcomeTimestamp"),
        ({"outcomeTimestamp": "yesterday"}, "feedback[0].outcomeTimestamp"),
        ({"card": "not-a-uuid"}, "feedback[0].card"),
        ({"overrideReason": {"userComment": "no"}}, "feedback[0]"),
        ({"acceptedSuggestions": [{"label": "no id"}]}, "feedback[0].acceptedSuggestions[0].id"),
    ],
    ids=[
        "unknown-outcome",
        "naive-timestamp",
        "not-a-timestamp",
        "card-not-uuid",
        "reason-on-accepted",
        "suggestion-without-id",
    ],
)
def test_invalid_feedback_is_400_naming_the_field(api: Api, change: dict[str, Any], field: str) -> None:
    card = next(iter(issue_cards(api).values()))
    response = send(api, accepted(card) | change)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == [field]
    assert stored(api) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "feedback"), ({"feedback": []}, "feedback"), ({"feedback": "x"}, "feedback")],
    ids=["no-feedback", "empty-list", "not-a-list"],
)
def test_a_batch_without_entries_is_400(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == [field]


def test_a_busy_store_is_503_with_retry_after(tmp_path: Path, pack: RulePack) -> None:
    path = tmp_path / "busy.sqlite3"
    store = Store(f"sqlite:///{path}", sqlite_busy_timeout_ms=200)
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack), store=store) as api:
        card = next(iter(issue_cards(api).values()))
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            response = send(api, accepted(card))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["issue"][0]["code"] == "transient"
        assert send(api, accepted(card)).status_code == 200  # and it recovers
    store.close()
