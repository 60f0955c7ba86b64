"""Limits on the work one request may ask for (cds.limits): each refusal names the limit and the field,
the boundary itself is accepted, and a large request under the limits leaves the worker answering.

Over real HTTP on loopback against the app under uvicorn (tests.support.api).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from cds.errors import JsonError
from cds.evaluation import Evaluator
from cds.intake import load_json
from cds.limits import Limits, check_prefetch, count_answers
from cds.rulepack import RulePack
from tests.support.api import CALCIUM_CARBONATE, Api, dev_settings, hook_request, order_sign_request, running
from tests.support.fhir_server import FhirTestServer

SERVICE = "/cds-services/cramp-assessment"
ORDER_SIGN = "/cds-services/calcium-order-check"
PATIENT = "hook-patient"
SMALL = {
    "max_resources_per_key": 12,
    "max_resources": 22,  # the fixture request holds 11 resources, 1 of them a Condition
    "max_answers_per_questionnaire": 40,  # its questionnaire response holds 36 items and answers
    "max_fetch_bytes": 4096,
}


def condition(index: int, code: str = "55300003") -> dict[str, Any]:
    """An active Condition of the fixture patient (55300003 is Cramp, in the pack's `cramp` set)."""
    return {
        "resourceType": "Condition",
        "id": f"c{index}",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
    }


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def with_conditions(count: int, request: dict[str, Any] | None = None) -> dict[str, Any]:
    request = request or hook_request()
    request["prefetch"]["conditions"] = searchset([condition(i) for i in range(count)])
    return request


def refused(response: httpx.Response, status: int, setting: str, expression: str) -> dict[str, Any]:
    """A clean OperationOutcome with the status, naming the setting and the field."""
    assert response.status_code == status, response.text[:500]
    [issue] = response.json()["issue"]
    assert setting in issue["diagnostics"], issue
    assert issue["expression"] == [expression], issue
    assert issue["code"] in {"too-long", "structure"}
    result: dict[str, Any] = issue
    return result


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("limits")
    with running(dev_settings(tmp, **SMALL), evaluator=Evaluator(pack)) as api:
        yield api


# --------------------------------------------------------------------------- each limit names itself


def test_resources_per_key_at_the_limit_are_read_and_one_more_is_413(api: Api) -> None:
    assert api.client.post(SERVICE, json=with_conditions(12)).status_code == 200
    response = api.client.post(SERVICE, json=with_conditions(13))
    issue = refused(response, 413, "CDS_MAX_RESOURCES_PER_KEY", "prefetch.conditions")
    assert "13 resources" in issue["diagnostics"]


def test_resources_in_all_over_the_limit_is_413(api: Api) -> None:
    request = with_conditions(12)  # with the fixture's 10 other resources: 22, the limit
    assert api.client.post(SERVICE, json=request).status_code == 200
    request["prefetch"]["observations"]["entry"].append({"resource": observations(1)[0]})
    refused(api.client.post(SERVICE, json=request), 413, "CDS_MAX_RESOURCES", "prefetch")


def test_draft_orders_count_in_the_total(api: Api) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    with_conditions(11, request)  # 11 + 10 from the fixture + 1 draft order = 22: at the limit
    assert api.client.post(ORDER_SIGN, json=request).status_code == 200
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    request["context"]["draftOrders"]["entry"].append({"resource": draft | {"id": "draft-2"}})
    refused(api.client.post(ORDER_SIGN, json=request), 413, "CDS_MAX_RESOURCES", "prefetch")


def questionnaire_response(items: int) -> dict[str, Any]:
    """Our questionnaire's answers padded with `items` unknown items of one answer each."""
    response: dict[str, Any] = hook_request()["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]
    response["item"] += [{"linkId": f"extra-{i}", "answer": [{"valueBoolean": True}]} for i in range(items)]
    return response


def test_answers_per_questionnaire_over_the_limit_is_413(api: Api) -> None:
    request = hook_request()
    base = count_answers(request["prefetch"]["questionnaireResponses"]["entry"][0]["resource"])
    fits = (40 - base) // 2
    request["prefetch"]["questionnaireResponses"] = searchset([questionnaire_response(fits)])
    assert api.client.post(SERVICE, json=request).status_code == 200
    request["prefetch"]["questionnaireResponses"] = searchset([questionnaire_response(fits + 1)])
    refused(
        api.client.post(SERVICE, json=request),
        413,
        "CDS_MAX_ANSWERS_PER_QUESTIONNAIRE",
        "prefetch.questionnaireResponses.entry[0].resource.item",
    )


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_a_draft_order_nested_several_hundred_deep_is_400_naming_where(api: Api) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    request["context"]["draftOrders"]["entry"][0]["resource"]["note"] = nested(300)
    issue = refused(
        api.client.post(
            ORDER_SIGN, content=json.dumps(request), headers={"content-type": "application/json"}
        ),
        400,
        "CDS_MAX_JSON_DEPTH",
        "context.draftOrders.entry[0].resource.note" + "[0]" * 58,  # the 65th level
    )
    assert issue["code"] == "structure"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/evaluate",
            {"resourceType": "Bundle", "type": "collection", "entry": [], "meta": {"x": nested(70)}},
        ),
        (f"{SERVICE}/feedback", {"feedback": [{"card": "x", "outcome": "accepted", "extra": nested(70)}]}),
    ],
    ids=["evaluate", "feedback"],
)
def test_json_too_deep_is_400_on_every_endpoint_that_reads_a_body(api: Api, path: str, body: Any) -> None:
    response = api.client.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "CDS_MAX_JSON_DEPTH" in response.json()["issue"][0]["diagnostics"]


def test_a_bundle_to_evaluate_over_the_total_is_413(api: Api) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": condition(i)} for i in range(23)],
    }
    refused(api.client.post("/evaluate", json=bundle), 413, "CDS_MAX_RESOURCES", "entry")


def observations(count: int) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Observation",
            "id": f"vd-{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
            "subject": {"reference": f"Patient/{PATIENT}"},
            "effectiveDateTime": "2026-05-01",
            "valueQuantity": {
                "value": 12,
                "unit": "ng/mL",
                "system": "http://unitsofmeasure.org",
                "code": "ng/mL",
            },
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("page_size", [50, 1], ids=["one-page", "next-pages"])
def test_bytes_fetched_from_the_fhir_server_are_bounded_across_pages(api: Api, page_size: int) -> None:
    """12 Observations of ~400 bytes (under the count limit) pass 4 kB, in one page or over `next` pages."""
    with FhirTestServer(observations(12), page_size=page_size) as server:
        request = hook_request()
        request["prefetch"].pop("observations")
        request["fhirServer"] = server.base_url
        issue = refused(
            api.client.post(SERVICE, json=request), 413, "CDS_MAX_FETCH_BYTES", "prefetch.observations"
        )
    assert "too_large" in issue["diagnostics"]


def test_entries_fetched_over_the_per_key_limit_are_413(api: Api) -> None:
    with FhirTestServer(observations(13), page_size=5) as server:
        request = hook_request()
        request["prefetch"].pop("observations")
        request["fhirServer"] = server.base_url
        response = api.client.post(SERVICE, json=request)
    issue = refused(response, 413, "CDS_MAX_RESOURCES_PER_KEY", "prefetch.observations")
    assert "too_many_entries" in issue["diagnostics"]


def test_a_small_fetch_within_the_limits_is_answered(api: Api) -> None:
    with FhirTestServer(observations(2)) as server:
        request = hook_request()
        request["prefetch"].pop("observations")
        request["fhirServer"] = server.base_url
        assert api.client.post(SERVICE, json=request).status_code == 200


# --------------------------------------------------------------------------- the counting itself


def test_count_answers_counts_nested_items_and_answers_without_recursion() -> None:
    deep: dict[str, Any] = {"linkId": "leaf", "answer": [{"valueBoolean": True}]}
    for level in range(5000):  # far deeper than any recursion would survive
        deep = {"linkId": f"g{level}", "item": [deep]}
    assert count_answers({"item": [deep]}) == 5002


def test_check_prefetch_returns_the_resource_count() -> None:
    prefetch = {
        "patient": {"resourceType": "Patient"},
        "conditions": searchset([condition(i) for i in range(3)]),
    }
    assert check_prefetch(prefetch, [("draft", {}, "")], Limits()) == 5


@pytest.mark.parametrize(
    ("raw", "limit", "field"),
    [
        (b'{"a": [[1]]}', 2, "a[0]"),
        (b"[[[1]]]", 2, "[0][0]"),
        (b'{"x": {"a": [{"b": {}}]}}', 4, "x.a[0].b"),
    ],
)
def test_load_json_refuses_nesting_past_the_limit(raw: bytes, limit: int, field: str) -> None:
    with pytest.raises(JsonError) as caught:
        load_json(raw, max_depth=limit)
    assert caught.value.field == field
    assert load_json(raw, max_depth=limit + 1) == orjson.loads(raw)


def test_arrays_nested_past_any_recursion_limit_are_refused_cleanly() -> None:
    with pytest.raises(JsonError):
        load_json(b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}")


# --------------------------------------------------------------------------- the worker stays responsive


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    """Default limits: the largest request is 10,000 resources (5,000 per key) under 5 MiB."""
    tmp = tmp_path_factory.mktemp("roomy-limits")
    with running(dev_settings(tmp), evaluator=Evaluator(pack)) as api:
        yield api


def largest_request() -> dict[str, Any]:
    """5,000 read Conditions and 5,000 read Observations: at the default limits, under the body limit."""
    request = hook_request()
    for key in ("observations", "conditions", "medicationRequests", "medicationStatements"):
        request["prefetch"][key] = None
    request["prefetch"]["conditions"] = searchset(
        [condition(i, code="55300003" if i % 2 else "72866009") for i in range(5000)]
    )
    request["prefetch"]["observations"] = searchset(observations(4998))
    return request


def test_healthz_answers_while_a_large_request_evaluates(roomy: Api) -> None:
    body = orjson.dumps(largest_request())
    assert len(body) < 5 * 1024 * 1024
    result: dict[str, Any] = {}
    before = roomy.runtime.evaluations.offloaded

    def post() -> None:
        with httpx.Client(base_url=roomy.base, timeout=300) as client:
            result["response"] = client.post(
                SERVICE, content=body, headers={"content-type": "application/json"}
            )

    worker = threading.Thread(target=post)
    worker.start()
    latencies: list[float] = []
    with httpx.Client(base_url=roomy.base, timeout=30) as probe:
        while worker.is_alive():
            began = time.monotonic()
            assert probe.get("/healthz").status_code == 200
            if worker.is_alive():  # answered while the large request was still being worked on
                latencies.append(time.monotonic() - began)
            time.sleep(0.05)
    worker.join()
    assert result["response"].status_code == 200, result["response"].text[:300]
    assert roomy.runtime.evaluations.offloaded == before + 1
    assert latencies, "the large request finished before /healthz was asked once"
    assert max(latencies) < 3.0, latencies


def test_a_small_request_is_evaluated_on_the_loop(roomy: Api) -> None:
    before = roomy.runtime.evaluations.offloaded
    assert roomy.client.post(SERVICE, json=hook_request()).status_code == 200
    assert roomy.runtime.evaluations.offloaded == before
