"""Prefetch edges over HTTP, with a real FHIR server on loopback for the keys the client did not send.

https://cds-hooks.hl7.org/2.0/#prefetch-template: a key with data is used, null means no data, an
OperationOutcome or an absent key is fetched from fhirServer, and data that stays missing is a 412.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cds.evaluation import Evaluator
from cds.intake import PREFETCH_KEYS
from cds.rulepack import RulePack
from tests.support.api import Api, dev_settings, hook_request, prefetch_resources, running
from tests.support.fhir_server import FhirTestServer

ACCESS_TOKEN = "ehr-access-token-abc123"
FIXTURE_TOPICS = [
    "calcium-absorption",
    "lifestyle",
    "magnesium-deficiency",
    "seek-care",
    "vitamin-d-deficiency",
]
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "timeout", "diagnostics": "EHR could not run the query"}],
}


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    settings = dev_settings(tmp_path, fhir_budget_seconds=1.0)
    with running(settings, evaluator=Evaluator(pack)) as api:
        yield api


@pytest.fixture
def fhir() -> Iterator[FhirTestServer]:
    with FhirTestServer(prefetch_resources(hook_request()), require_token=ACCESS_TOKEN) as server:
        yield server


def with_server(request: dict[str, Any], server: FhirTestServer) -> dict[str, Any]:
    request["fhirServer"] = server.base_url
    request["fhirAuthorization"] = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    return request


def post(api: Api, request: dict[str, Any]) -> Any:
    return api.client.post("/cds-services/cramp-assessment", json=request)


def topics(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(card["source"]["topic"]["code"] for card in response.json()["cards"])


def assert_412(response: Any, key: str) -> None:
    assert response.status_code == 412
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == [f"prefetch.{key}"]
    assert key in body["issue"][0]["diagnostics"]


def test_full_prefetch_needs_no_fhir_server(api: Api, fhir: FhirTestServer) -> None:
    assert topics(post(api, with_server(hook_request(), fhir))) == FIXTURE_TOPICS
    assert fhir.requests == []


def test_null_means_no_data_and_is_not_fetched(api: Api, fhir: FhirTestServer) -> None:
    request = with_server(hook_request(), fhir)
    request["prefetch"]["observations"] = None
    found = topics(post(api, request))
    assert fhir.requests == []
    assert found != FIXTURE_TOPICS  # without BMI, eGFR and friends the cards differ


def test_all_keys_absent_are_fetched_with_the_access_token(api: Api, fhir: FhirTestServer) -> None:
    request = with_server(hook_request(), fhir)
    del request["prefetch"]
    assert topics(post(api, request)) == FIXTURE_TOPICS
    assert {r.authorization for r in fhir.requests} == {f"Bearer {ACCESS_TOKEN}"}
    paths = sorted(urlsplit(r.path).path.rsplit("/", 1)[-1] for r in fhir.requests)
    assert paths == sorted(
        [
            "Condition",
            "MedicationRequest",
            "MedicationStatement",
            "Observation",
            "QuestionnaireResponse",
            "hook-patient",
        ]
    )


def test_fetched_queries_are_the_discovery_templates_filled_in(api: Api, fhir: FhirTestServer) -> None:
    request = with_server(hook_request(), fhir)
    del request["prefetch"]["observations"]
    post(api, request)
    [sent] = fhir.requests
    query = parse_qs(urlsplit(sent.path).query)
    template = api.client.get("/cds-services").json()["services"][0]["prefetch"]["observations"]
    expected = parse_qs(urlsplit(template.replace("{{context.patientId}}", "hook-patient")).query)
    assert query == expected


@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_one_absent_key_is_fetched(api: Api, fhir: FhirTestServer, key: str) -> None:
    request = with_server(hook_request(), fhir)
    del request["prefetch"][key]
    assert topics(post(api, request)) == FIXTURE_TOPICS
    assert len(fhir.requests) == 1


def test_an_operation_outcome_is_fetched_as_if_absent(api: Api, fhir: FhirTestServer) -> None:
    request = with_server(hook_request(), fhir)
    request["prefetch"]["conditions"] = OUTCOME
    assert topics(post(api, request)) == FIXTURE_TOPICS
    [sent] = fhir.requests
    assert "/Condition?" in sent.path


def test_an_operation_outcome_without_fhir_server_is_412(api: Api) -> None:
    request = hook_request()
    request["prefetch"]["conditions"] = OUTCOME
    assert_412(post(api, request), "conditions")


def test_absent_key_without_fhir_server_is_412(api: Api) -> None:
    request = hook_request()
    del request["prefetch"]["medicationStatements"]
    assert_412(post(api, request), "medicationStatements")


@pytest.mark.parametrize(
    ("mode", "fault_on", "key"),
    [
        ("status", "Observation", "observations"),
        ("garbage", "Condition", "conditions"),
        ("hang", "QuestionnaireResponse", "questionnaireResponses"),
        ("drip", "MedicationRequest", "medicationRequests"),
    ],
    ids=["http-500", "not-json", "times-out", "drips-past-the-budget"],
)
def test_a_failing_fhir_server_is_412_naming_the_key(api: Api, mode: str, fault_on: str, key: str) -> None:
    resources = prefetch_resources(hook_request())
    with FhirTestServer(resources, mode=mode, fault_on=fault_on, delay=0.2) as server:
        request = with_server(hook_request(), server)
        del request["prefetch"]
        assert_412(post(api, request), key)


def test_an_unreachable_fhir_server_is_412(api: Api) -> None:
    with FhirTestServer() as server:
        base = server.base_url
    request = hook_request()
    del request["prefetch"]["patient"]
    request["fhirServer"] = base  # stopped: nothing listens there any more
    assert_412(post(api, request), "patient")


def test_a_wrong_access_token_is_412_not_a_leak(api: Api, fhir: FhirTestServer) -> None:
    request = with_server(hook_request(), fhir)
    request["fhirAuthorization"]["access_token"] = "wrong-token"
    del request["prefetch"]["patient"]
    response = post(api, request)
    assert_412(response, "patient")
    assert "wrong-token" not in response.text


def test_a_fhir_server_that_is_not_a_url_is_400(api: Api) -> None:
    request = hook_request()
    del request["prefetch"]["patient"]
    request["fhirServer"] = "ftp://ehr.example.org/fhir"
    response = post(api, request)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["fhirServer"]


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (
            "absent",
            "prefetch.observations was not sent and could not be fetched from fhirServer (http_status",
        ),
        (
            "operation-outcome",
            "prefetch.observations was sent as an OperationOutcome (the client's own query for it failed) "
            "and could not be fetched from fhirServer (http_status",
        ),
    ],
)
def test_a_failed_fetch_412_says_how_the_key_came_to_be_missing(api: Api, sent: str, why: str) -> None:
    """The sandbox shows "no recommendations" for a 412: the body must tell the integrator what went wrong."""
    resources = prefetch_resources(hook_request())
    with FhirTestServer(resources, mode="status", fault_on="Observation") as server:
        request = with_server(hook_request(), server)
        if sent == "absent":
            del request["prefetch"]["observations"]
        else:
            request["prefetch"]["observations"] = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "exception"}],
            }
        response = post(api, request)
    assert_412(response, "observations")
    assert response.json()["issue"][0]["diagnostics"].startswith(why)
