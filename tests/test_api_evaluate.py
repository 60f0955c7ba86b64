"""POST /evaluate over HTTP: a FHIR Bundle in, {"cards": [...]} out, evaluated as of ?now=."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from cds.store import IssuedCardRow
from tests.support.api import FIXTURES, Api, dev_settings, hook_request, running

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path_factory.mktemp("evaluate")), evaluator=Evaluator(pack)) as api:
        yield api


@pytest.mark.parametrize("item", MANIFEST, ids=[item["file"].removesuffix(".json") for item in MANIFEST])
def test_each_fixture_gives_its_topics(api: Api, item: dict[str, object]) -> None:
    body = (FIXTURES / str(item["file"])).read_bytes()
    response = api.client.post("/evaluate", params={"now": item["now"]}, content=body)
    assert response.status_code == 200, response.text
    assert sorted(c["source"]["topic"]["code"] for c in response.json()["cards"]) == item["expect_topics"]


@pytest.mark.parametrize(
    "now", ["2026-06-01", "2026-06-01T12:00:00Z", "2026-06-01T12:00:00+12:00", "2026-06-01T12:00"]
)
def test_now_accepts_a_day_or_a_date_time(api: Api, now: str) -> None:
    response = api.client.post(
        "/evaluate", params={"now": now}, content=(FIXTURES / "workup.json").read_bytes()
    )
    assert response.status_code == 200


def test_a_bad_now_is_400_naming_the_parameter(api: Api) -> None:
    response = api.client.post(
        "/evaluate", params={"now": "June"}, content=(FIXTURES / "workup.json").read_bytes()
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["query.now"]


def test_a_resource_that_is_not_a_bundle_is_400(api: Api) -> None:
    response = api.client.post("/evaluate", json={"resourceType": "Patient", "id": "p"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["resourceType"]


def test_a_hook_request_with_full_prefetch_is_accepted(api: Api) -> None:
    response = api.client.post("/evaluate", params={"now": "2026-06-01"}, json=hook_request())
    assert response.status_code == 200
    assert response.json()["cards"]


def test_evaluate_records_no_cards(api: Api) -> None:
    api.client.post(
        "/evaluate", params={"now": "2026-06-01"}, content=(FIXTURES / "workup.json").read_bytes()
    )
    with Session(api.runtime.store.engine) as session:
        assert session.scalar(select(func.count()).select_from(IssuedCardRow)) == 0


def test_a_lab_value_written_with_an_exponent_keeps_the_pregnant_patients_seek_care_card(api: Api) -> None:
    """Issue 9 class 6: `3e-05` (how JSON and Python write 0.00003) once made the engine drop the
    patient's facts: 200 with no cards. Her 25-OH vitamin D result is rewritten in the raw body as `3e-05`."""
    body = (FIXTURES / "seek-care-pregnant.json").read_text(encoding="utf-8")
    document = json.loads(body)
    vitamin_d = next(
        e["resource"] for e in document["entry"] if e["resource"]["id"].endswith("observation-3")
    )
    assert vitamin_d["valueQuantity"]["unit"] == "ng/mL"
    vitamin_d["valueQuantity"]["value"] = 0.5  # placeholder replaced by the exact text below
    raw = json.dumps(document).replace('"value": 0.5', '"value": 3e-05')
    assert '"value": 3e-05' in raw
    response = api.client.post("/evaluate", params={"now": "2026-06-01"}, content=raw.encode())
    assert response.status_code == 200, response.text
    topics = {c["source"]["topic"]["code"] for c in response.json()["cards"]}
    assert "seek-care" in topics
    assert "vitamin-d-deficiency" in topics  # and 3e-05 ng/mL is read as the deficiency it is
