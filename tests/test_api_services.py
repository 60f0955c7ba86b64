"""POST /cds-services/{id} over HTTP with full prefetch: both hooks, card shape, cards recorded for feedback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.evaluation import Evaluator
from cds.hooks import CAUSE_TOPICS
from cds.rulepack import RulePack
from cds.settings import DEV_HASH_KEY
from cds.store import IssuedCardRow, patient_hash
from tests.support.api import (
    ATORVASTATIN,
    CALCIUM_BY_TEXT,
    CALCIUM_CARBONATE,
    FIXTURES,
    Api,
    dev_settings,
    hook_request,
    order_sign_request,
    running,
)
from tests.test_api_discovery import empty_members

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MANIFEST = {item["file"]: item for item in json.loads((FIXTURES / "manifest.json").read_text())}


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api:
        yield api


def topics(response_body: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response_body["cards"]]


def call(api: Api, service: str, request: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def test_patient_view_with_full_prefetch_returns_the_fixture_topics(api: Api) -> None:
    body = call(api, "cramp-assessment", hook_request())
    assert sorted(topics(body)) == MANIFEST["hook-request.json"]["expect_topics"]
    assert set(body) == {"cards"}


def test_cards_follow_the_card_attributes_of_the_spec(api: Api) -> None:
    cards = call(api, "cramp-assessment", hook_request())["cards"]
    assert cards
    assert empty_members(cards) == []
    for card in cards:
        assert UUID_RE.match(card["uuid"])
        assert isinstance(card["summary"], str)
        assert len(card["summary"]) < 140
        assert isinstance(card["detail"], str)
        assert card["indicator"] in {"info", "warning", "critical"}
        assert isinstance(card["source"]["label"], str)
        topic = card["source"]["topic"]
        assert isinstance(topic["system"], str)
        assert isinstance(topic["code"], str)
        for reason in card.get("overrideReasons", []):
            assert {"system", "code", "display"} <= set(reason)
            assert all(isinstance(reason[k], str) and reason[k] for k in ("system", "code", "display"))
        if "suggestions" in card:
            assert card["selectionBehavior"] in {"at-most-one", "any"}
            for suggestion in card["suggestions"]:
                assert isinstance(suggestion["label"], str)
                assert UUID_RE.match(suggestion["uuid"])
                for action in suggestion["actions"]:
                    assert action["type"] == "create"
                    assert isinstance(action["description"], str)
                    assert action["resource"]["resourceType"] == "ServiceRequest"
                    assert "id" not in action["resource"]  # a new resource to be created
        for key, value in card.get("extension", {}).items():
            assert "-" in key or "." in key  # namespaced
            assert isinstance(value, dict)


def test_card_uuids_are_unique_across_calls(api: Api) -> None:
    first = call(api, "cramp-assessment", hook_request())["cards"]
    second = call(api, "cramp-assessment", hook_request())["cards"]
    uuids = [c["uuid"] for c in first + second]
    assert len(uuids) == len(set(uuids))


def test_no_guidance_is_an_empty_card_list(api: Api) -> None:
    request = hook_request()
    request["prefetch"] = {key: None for key in request["prefetch"]} | {
        "patient": request["prefetch"]["patient"]
    }
    response = api.client.post("/cds-services/cramp-assessment", json=request)
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_issued_cards_are_recorded_with_a_hashed_patient_id(api: Api) -> None:
    request = hook_request()
    cards = call(api, "cramp-assessment", request)["cards"]
    with Session(api.runtime.store.engine) as session:
        rows = session.scalars(select(IssuedCardRow)).all()
    assert sorted(r.uuid for r in rows) == sorted(c["uuid"] for c in cards)
    expected_hash = patient_hash(DEV_HASH_KEY.encode(), request["context"]["patientId"])
    for row in rows:
        assert row.service_id == "cramp-assessment"
        assert row.hook_instance == request["hookInstance"]
        assert row.patient_hash == expected_hash
        assert row.rule_ids
        assert request["context"]["patientId"] not in json.dumps([row.patient_hash, row.rule_ids])


@pytest.mark.parametrize("medication", [CALCIUM_CARBONATE, CALCIUM_BY_TEXT], ids=["by-code", "by-text"])
def test_order_sign_with_a_calcium_draft_returns_cause_cards_only(
    api: Api, medication: dict[str, Any]
) -> None:
    body = call(api, "calcium-order-check", order_sign_request(medication=medication))
    found = topics(body)
    assert found
    assert set(found) <= CAUSE_TOPICS
    assert "lifestyle" not in found


def test_order_sign_without_a_calcium_draft_returns_no_cards(api: Api) -> None:
    request = order_sign_request(medication=ATORVASTATIN)
    del request["prefetch"]  # nothing is fetched or evaluated for other orders
    response = api.client.post("/cds-services/calcium-order-check", json=request)
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_order_sign_draft_resolved_through_a_contained_medication(api: Api) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    del order["medicationCodeableConcept"]
    order["contained"] = [{"resourceType": "Medication", "id": "m", "code": CALCIUM_CARBONATE}]
    order["medicationReference"] = {"reference": "#m"}
    assert topics(call(api, "calcium-order-check", request))


def test_patient_view_service_ignores_draft_orders(api: Api) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    request["hook"] = "patient-view"
    body = call(api, "cramp-assessment", request)
    assert sorted(topics(body)) == MANIFEST["hook-request.json"]["expect_topics"]
