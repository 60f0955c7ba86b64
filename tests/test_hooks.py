"""One code path per service: `cds evaluate --service ID FILE` answers exactly as POST /cds-services/ID.

Each case runs both through the real console script and a real HTTP server (--dev settings, the
fixtures' day as the clock) and compares status with exit code, cards (less their random uuids) and the
error text. Also: the questionnaire notice card, and the 412 body naming each missing key and why.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.conftest import FIXTURES, load_fixture
from tests.support.api import ATORVASTATIN, Api, dev_settings, order_sign_request, running
from tests.support.cli import cds

NOW = "2026-06-01T21:30:00+12:00"  # tests.support.api.NOW, as the CLI's --now
OPERATION_OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "exception"}],
}


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(request: dict[str, Any]) -> dict[str, Any]:
        del request["prefetch"][key]
        return request

    return change


def _failed(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(request: dict[str, Any]) -> dict[str, Any]:
        request["prefetch"][key] = copy.deepcopy(OPERATION_OUTCOME)
        return request

    return change


def _no_answers(request: dict[str, Any]) -> dict[str, Any]:
    request["prefetch"]["questionnaireResponses"] = None
    return request


def _same(request: dict[str, Any]) -> dict[str, Any]:
    return request


# (id, service, fixture or built request, change)
CASES: list[
    tuple[str, str, str | Callable[[], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]
] = [
    ("assessment-fixture", "cramp-assessment", "hook-request.json", _same),
    ("assessment-without-answers", "cramp-assessment", "hook-request.json", _no_answers),
    ("order-sign-fixture", "calcium-order-check", "order-sign-request.json", _same),
    (
        "order-sign-not-calcium",
        "calcium-order-check",
        lambda: order_sign_request(medication=ATORVASTATIN),
        _same,
    ),
    ("patient-view-to-order-check", "calcium-order-check", "hook-request.json", _same),
    ("order-sign-to-assessment", "cramp-assessment", "order-sign-request.json", _same),
    ("key-absent", "cramp-assessment", "hook-request.json", _without("observations")),
    ("key-operation-outcome", "cramp-assessment", "hook-request.json", _failed("conditions")),
    ("bundle-to-service", "cramp-assessment", "workup.json", _same),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path_factory.mktemp("hooks")), evaluator=Evaluator(pack)) as api:
        yield api


def comparable(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards less what is random per call (card and suggestion uuids)."""
    text = json.dumps(cards)
    for card in cards:
        text = text.replace(card["uuid"], "<uuid>")
        for suggestion in card.get("suggestions", []):
            text = text.replace(suggestion["uuid"], "<uuid>")
    result: list[dict[str, Any]] = json.loads(text)
    return result


@pytest.mark.parametrize(("service", "source", "change"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_answers_exactly_as_http(
    api: Api, tmp_path: Path, service: str, source: Any, change: Any
) -> None:
    request = change(load_fixture(source) if isinstance(source, str) else source())
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request), encoding="utf-8")

    response = api.client.post(f"/cds-services/{service}", json=request)
    done = cds("evaluate", "--now", NOW, "--service", service, "--base-url", api.base, path)

    if response.status_code == 200:
        assert done.returncode == 0, done.stderr
        assert comparable(json.loads(done.stdout)["cards"]) == comparable(response.json()["cards"])
    else:
        assert response.status_code in (400, 412), response.text
        assert done.returncode == 2
        assert done.stdout == ""
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert done.stderr.strip() == f"cds: error: {path}: {diagnostics}"


def test_not_calcium_draft_gives_no_cards_in_both(api: Api, tmp_path: Path) -> None:
    request = order_sign_request(medication=ATORVASTATIN)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    assert api.client.post("/cds-services/calcium-order-check", json=request).json() == {"cards": []}
    done = cds("evaluate", "--service", "calcium-order-check", path)
    assert json.loads(done.stdout) == {"cards": []}


def test_patient_view_body_to_order_check_is_the_same_400(api: Api) -> None:
    response = api.client.post("/cds-services/calcium-order-check", json=load_fixture("hook-request.json"))
    assert response.status_code == 400
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert diagnostics == "hook: service calcium-order-check answers the order-sign hook, not patient-view"
    done = cds("evaluate", "--service", "calcium-order-check", FIXTURES / "hook-request.json")
    assert done.returncode == 2
    assert done.stderr.strip() == f"cds: error: {FIXTURES / 'hook-request.json'}: {diagnostics}"


def test_missing_answers_give_a_notice_card_linking_the_served_questionnaire(api: Api) -> None:
    request = _no_answers(load_fixture("hook-request.json"))
    cards = api.client.post("/cds-services/cramp-assessment", json=request).json()["cards"]
    assert len(cards) == 1
    notice = cards[0]
    assert notice["indicator"] == "info"
    assert notice["summary"] == "Cramp details missing: ask the patient the cramp questionnaire"
    assert notice["source"]["topic"]["code"] == "cramp-questionnaire"
    assert notice["extension"]["cramp-cds-explanation"]["evidence"] == [
        "MedicationStatement/hook-patient-medicationstatement-9"
    ]
    (link,) = notice["links"]
    assert link["url"] == api.url("/questionnaire")
    served = api.client.get(link["url"])
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/fhir+json"
    assert served.json()["resourceType"] == "Questionnaire"
    assert served.json()["url"] == api.runtime.evaluator.pack.questionnaire_url


def test_no_notice_for_a_patient_not_on_calcium(api: Api) -> None:
    request = _no_answers(load_fixture("hook-request.json"))
    request["prefetch"]["medicationStatements"] = None
    assert api.client.post("/cds-services/cramp-assessment", json=request).json() == {"cards": []}


def test_no_notice_at_order_signing(api: Api) -> None:
    request = _no_answers(load_fixture("order-sign-request.json"))
    body = api.client.post("/cds-services/calcium-order-check", json=request).json()
    assert body == {"cards": []}


def test_questionnaire_for_a_browser_is_a_readable_page(api: Api) -> None:
    response = api.client.get("/questionnaire", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "In a typical week, how many times do you get a muscle cramp?" in response.text
    assert "[cramp-frequency]" in response.text


def test_discovery_names_the_questionnaire_and_where_it_is_served(api: Api) -> None:
    services = api.client.get("/cds-services").json()["services"]
    url = api.runtime.evaluator.pack.questionnaire_url
    for service in services:
        assert url in service["usageRequirements"]
        assert "GET /questionnaire" in service["usageRequirements"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_without("observations"), "prefetch.observations was not sent"),
        (
            _failed("observations"),
            "prefetch.observations was sent as an OperationOutcome (the client's own query for it failed)",
        ),
    ],
    ids=["absent", "operation-outcome"],
)
def test_412_says_which_key_and_why(api: Api, change: Any, expected: str) -> None:
    response = api.client.post(
        "/cds-services/cramp-assessment", json=change(load_fixture("hook-request.json"))
    )
    assert response.status_code == 412
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["prefetch.observations"]
    assert expected in issue["diagnostics"]
    assert "no fhirServer" in issue["diagnostics"]


def test_412_lists_every_missing_key(api: Api) -> None:
    request = _failed("conditions")(_without("observations")(load_fixture("hook-request.json")))
    issue = api.client.post("/cds-services/cramp-assessment", json=request).json()["issue"][0]
    assert issue["diagnostics"] == (
        "prefetch.observations: prefetch.observations was not sent; prefetch.conditions was sent as an "
        "OperationOutcome (the client's own query for it failed); the request has no fhirServer to fetch "
        "them from (send the data, or null for none)"
    )
