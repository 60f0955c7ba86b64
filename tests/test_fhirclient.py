"""Tests for fetching prefetch data ourselves from a real loopback FHIR server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.fhirclient import DEFAULT_MAX_PAGE_BYTES, FhirFetchError, fetch_prefetch, fill_template
from tests.support.fhir_server import FhirTestServer

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-examples" / "resources"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared FHIR examples not present")

PATIENT_ID = "pat-7f3a9c"  # distinctive, so leaks into error text are easy to spot
TOKEN = "tok-SECRET-91b2"
LOINC = "http://loinc.org"
CALCIUM, POTASSIUM, MAGNESIUM = "17861-6", "2823-3", "19123-9"


def _observation(n: int, code: str, patient: str = PATIENT_ID) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{patient}-{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 2.0 + n / 100, "unit": "mmol/L", "system": "http://unitsofmeasure.org"},
    }


def _resources() -> list[dict[str, Any]]:
    codes = [CALCIUM, POTASSIUM, MAGNESIUM]
    mine = [_observation(n, codes[n % 3]) for n in range(25)]
    other = [_observation(n, CALCIUM, patient="someone-else") for n in range(5)]
    patient = {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1950-02-03"}
    return [patient, *mine, *other]


def _fetch(
    base_url: str,
    queries: dict[str, str],
    *,
    token: str | None = None,
    budget: float = 5.0,
    max_pages: int = 50,
    max_entries: int = 20000,
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
) -> dict[str, dict[str, Any]]:
    async def go() -> dict[str, dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            return await fetch_prefetch(
                client=client,
                fhir_server=base_url,
                access_token=token,
                queries=queries,
                deadline=time.monotonic() + budget,
                max_pages=max_pages,
                max_entries=max_entries,
                max_page_bytes=max_page_bytes,
            )

    return asyncio.run(go())


def _fetch_error(
    base_url: str,
    queries: dict[str, str],
    *,
    token: str | None = TOKEN,
    budget: float = 5.0,
    limits: dict[str, int] | None = None,
) -> tuple[FhirFetchError, float]:
    start = time.monotonic()
    with pytest.raises(FhirFetchError) as info:
        _fetch(base_url, queries, token=token, budget=budget, **(limits or {}))
    elapsed = time.monotonic() - start
    text = f"{info.value} {info.value!r} {info.value.detail}"
    assert TOKEN not in text
    assert PATIENT_ID not in text
    return info.value, elapsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"]]


# -- success paths ---------------------------------------------------------------------------


def test_read_patient() -> None:
    with FhirTestServer(_resources()) as srv:
        result = _fetch(srv.base_url, {"patient": f"Patient/{PATIENT_ID}"})
    assert result["patient"]["resourceType"] == "Patient"
    assert result["patient"]["id"] == PATIENT_ID
    assert [r.path for r in srv.requests] == [f"/fhir/Patient/{PATIENT_ID}"]


@pytest.mark.parametrize(
    ("count_param", "pages"),
    [
        pytest.param("", 3, id="server-default-10-per-page"),
        pytest.param("&_count=4", 7, id="count-4-per-page"),
    ],
)
def test_search_concatenates_all_pages(count_param: str, pages: int) -> None:
    with FhirTestServer(_resources()) as srv:
        result = _fetch(srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}{count_param}"})
    bundle = result["labs"]
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 25
    assert len(bundle["entry"]) == 25
    assert sorted(_ids(bundle)) == sorted(f"obs-{PATIENT_ID}-{n}" for n in range(25))
    assert len(srv.requests) == pages
    assert all("_getpages=" in r.path for r in srv.requests[1:])


def test_bearer_token_sent_on_every_page() -> None:
    with FhirTestServer(_resources(), require_token=TOKEN) as srv:
        result = _fetch(
            srv.base_url,
            {"patient": f"Patient/{PATIENT_ID}", "labs": f"Observation?patient={PATIENT_ID}"},
            token=TOKEN,
        )
    assert len(result["labs"]["entry"]) == 25
    assert len(srv.requests) == 4
    assert {r.authorization for r in srv.requests} == {f"Bearer {TOKEN}"}


def test_no_token_sends_no_authorization_header() -> None:
    with FhirTestServer(_resources()) as srv:
        _fetch(srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}"}, token=None)
    assert srv.requests
    assert all(r.authorization is None for r in srv.requests)


def test_code_filter_honoured() -> None:
    query = f"Observation?patient={PATIENT_ID}&code={LOINC}|{CALCIUM},{LOINC}|{POTASSIUM}&_count=5"
    with FhirTestServer(_resources()) as srv:
        bundle = _fetch(srv.base_url, {"labs": query})["labs"]
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]}
    assert codes == {CALCIUM, POTASSIUM}
    assert len(bundle["entry"]) == 17  # n % 3 in {0, 1} for n < 25
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{PATIENT_ID}" for e in bundle["entry"])


def test_keys_are_fetched_concurrently() -> None:
    queries = {
        f"k{i}": f"Observation?patient={PATIENT_ID}&code={LOINC}|{MAGNESIUM}&_count=50" for i in range(4)
    }
    with FhirTestServer(_resources(), mode="slow", delay=0.4) as srv:
        start = time.monotonic()
        result = _fetch(srv.base_url, queries, budget=5.0)
        elapsed = time.monotonic() - start
    assert all(len(b["entry"]) == 8 for b in result.values())
    assert elapsed < 1.4  # four serial requests would take at least 1.6 s


def test_empty_queries() -> None:
    assert _fetch("http://127.0.0.1:9", {}) == {}


# -- failures --------------------------------------------------------------------------------

FAULTS = [
    pytest.param({"mode": "status", "status": 500}, 5.0, "http_status", id="status-500"),
    pytest.param(
        {"mode": "status", "status": 503, "fault_on": "_getpages"}, 5.0, "http_status", id="503-on-page-2"
    ),
    pytest.param({"mode": "garbage"}, 5.0, "not_json", id="garbage-body"),
    pytest.param({"mode": "slow", "delay": 3.0}, 0.6, "timeout", id="slow-beyond-deadline"),
    pytest.param({"mode": "hang"}, 0.6, "timeout", id="hang"),
    pytest.param({"mode": "drip", "delay": 0.1}, 0.8, "timeout", id="drip-one-byte-at-a-time"),
    pytest.param({"mode": "next_loop"}, 5.0, "page_loop", id="next-link-to-itself"),
    pytest.param({"mode": "foreign_next"}, 5.0, "next_origin", id="next-link-to-other-origin"),
    pytest.param({"require_token": "another-token"}, 5.0, "http_status", id="401-wrong-token"),
]


@pytest.mark.parametrize(("server_args", "budget", "reason"), FAULTS)
def test_faults_name_key_and_reason(server_args: dict[str, Any], budget: float, reason: str) -> None:
    with FhirTestServer(_resources(), **server_args) as srv:
        err, elapsed = _fetch_error(
            srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}"}, budget=budget
        )
    assert (err.key, err.reason) == ("labs", reason)
    assert elapsed < budget + 0.5  # generous bound: proves the deadline holds, not a benchmark


def test_foreign_next_link_is_not_followed() -> None:
    with FhirTestServer(_resources(), mode="foreign_next") as srv:
        err, _ = _fetch_error(srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}"})
    assert err.reason == "next_origin"
    assert len(srv.requests) == 1


def test_event_loop_keeps_running_while_server_hangs() -> None:
    async def go() -> tuple[BaseException | None, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        error: BaseException | None = None
        async with httpx.AsyncClient() as client:
            try:
                await fetch_prefetch(
                    client=client,
                    fhir_server=srv.base_url,
                    access_token=None,
                    queries={"patient": f"Patient/{PATIENT_ID}"},
                    deadline=time.monotonic() + 0.5,
                )
            except FhirFetchError as exc:
                error = exc
        tick_task.cancel()
        return error, ticks

    with FhirTestServer(_resources(), mode="hang") as srv:
        error, ticks = asyncio.run(go())
    assert isinstance(error, FhirFetchError)
    assert error.reason == "timeout"
    assert ticks >= 10


def test_deadline_already_passed() -> None:
    with FhirTestServer(_resources()) as srv:
        err, _ = _fetch_error(srv.base_url, {"patient": f"Patient/{PATIENT_ID}"}, budget=-1.0)
    assert err.reason == "timeout"
    assert srv.requests == []


def test_missing_patient_is_an_error() -> None:
    with FhirTestServer(_resources()) as srv:
        err, _ = _fetch_error(srv.base_url, {"patient": "Patient/nobody"})
    assert (err.key, err.reason) == ("patient", "http_status")
    assert "404" in err.detail


@pytest.mark.parametrize(
    ("limits", "reason", "requests"),
    [
        pytest.param({"max_entries": 20}, "too_many_entries", 1, id="max-entries-from-total"),
        pytest.param({"max_pages": 2}, "too_many_pages", 2, id="max-pages"),
        pytest.param({"max_page_bytes": 2000}, "too_large", 1, id="max-page-bytes"),
    ],
)
def test_limits(limits: dict[str, int], reason: str, requests: int) -> None:
    with FhirTestServer(_resources()) as srv:
        err, _ = _fetch_error(srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}"}, limits=limits)
    assert err.reason == reason
    assert len(srv.requests) == requests


def test_max_entries_counted_across_pages_without_total() -> None:
    # A page whose Bundle omits total: the running count must still stop the search.
    resources = _resources()
    with FhirTestServer(resources) as srv:
        original = srv.page

        def page_without_total(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
            bundle = original(*args, **kwargs)
            if bundle is not None:
                bundle.pop("total")
            return bundle

        srv.page = page_without_total  # type: ignore[method-assign]
        err, _ = _fetch_error(
            srv.base_url, {"labs": f"Observation?patient={PATIENT_ID}"}, limits={"max_entries": 15}
        )
    assert err.reason == "too_many_entries"
    assert len(srv.requests) == 2


def test_unreachable_port() -> None:
    err, elapsed = _fetch_error(f"http://127.0.0.1:{_free_port()}/fhir", {"patient": f"Patient/{PATIENT_ID}"})
    assert (err.key, err.reason) == ("patient", "unreachable")
    assert elapsed < 5.0


def test_search_result_not_a_bundle() -> None:
    # With a query string the key is a search, but this server answers it as a read of the Patient.
    with FhirTestServer(_resources()) as srv:
        err, _ = _fetch_error(srv.base_url, {"odd": f"Patient/{PATIENT_ID}?_format=json"})
    assert (err.key, err.reason) == ("odd", "not_bundle")


def test_read_returning_wrong_type() -> None:
    with FhirTestServer(_resources()) as srv:
        srv.resources[("Encounter", "e1")] = {"resourceType": "OperationOutcome", "issue": []}
        err, _ = _fetch_error(srv.base_url, {"patient": f"Patient/{PATIENT_ID}", "enc": "Encounter/e1"})
    assert (err.key, err.reason) == ("enc", "not_resource")


# -- several keys ----------------------------------------------------------------------------


def test_error_names_the_failing_key_only() -> None:
    queries = {"patient": f"Patient/{PATIENT_ID}", "labs": f"Observation?patient={PATIENT_ID}"}
    with FhirTestServer(_resources(), mode="status", fault_on="Observation") as srv:
        err, _ = _fetch_error(srv.base_url, queries)
    assert (err.key, err.reason) == ("labs", "http_status")


@pytest.mark.parametrize("order", [("b", "a", "c"), ("c", "a", "b")], ids=["b-first", "c-first"])
def test_several_failures_report_first_key_in_order(order: tuple[str, ...]) -> None:
    with FhirTestServer(_resources(), mode="status") as srv:
        for _ in range(5):
            err, _ = _fetch_error(srv.base_url, {k: f"Observation?patient={PATIENT_ID}&k={k}" for k in order})
            assert err.key == order[0]


def test_failure_cancels_later_hanging_keys() -> None:
    queries = {"patient": "Patient/nobody", "labs": f"Observation?patient={PATIENT_ID}"}
    with FhirTestServer(_resources(), mode="hang", fault_on="Observation") as srv:
        err, elapsed = _fetch_error(srv.base_url, queries, budget=5.0)
    assert (err.key, err.reason) == ("patient", "http_status")
    assert elapsed < 2.0


def test_earlier_hanging_key_wins_over_later_failure() -> None:
    queries = {"labs": f"Observation?patient={PATIENT_ID}", "patient": "Patient/nobody"}
    with FhirTestServer(_resources(), mode="hang", fault_on="Observation") as srv:
        err, elapsed = _fetch_error(srv.base_url, queries, budget=0.6)
    assert (err.key, err.reason) == ("labs", "timeout")
    assert elapsed < 1.1


# -- realistic data --------------------------------------------------------------------------


def _example_resources() -> list[dict[str, Any]]:
    loaded = []
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name == "bmi.json":  # shares the id Observation/bmi with observation-example-bmi.json
            continue
        loaded.append(json.loads(path.read_text(encoding="utf-8")))
    return loaded


@needs_examples
def test_examples_read_and_paged_search() -> None:
    resources = _example_resources()
    observations = {
        r["id"]
        for r in resources
        if r["resourceType"] == "Observation" and r.get("subject", {}).get("reference") == "Patient/example"
    }
    queries = {
        "patient": "Patient/example",
        "observations": "Observation?patient=example",
        "calcium": f"Observation?patient=example&code={LOINC}|{CALCIUM}",
        "medications": "MedicationRequest?patient=example&status=active,completed,stopped,on-hold,draft",
        "orders": "ServiceRequest?patient=example",
    }
    with FhirTestServer(resources, page_size=3, require_token=TOKEN) as srv:
        result = _fetch(srv.base_url, queries, token=TOKEN)
    assert result["patient"]["id"] == "example"
    assert set(_ids(result["observations"])) == observations
    assert len(observations) >= 7  # so page size 3 needs at least three pages
    assert _ids(result["calcium"]) == ["serum-calcium"]
    assert _ids(result["medications"]) == ["medicationrequest-coded-oral-axid"]
    assert _ids(result["orders"]) == ["bmp"]


@needs_examples
def test_examples_unknown_search_params_ignored() -> None:
    query = "Condition?patient=example&clinical-status=active&_sort=-onset-date"
    with FhirTestServer(_example_resources()) as srv:
        result = _fetch(srv.base_url, {"conditions": query})
    assert result["conditions"]["entry"] == []


# -- fill_template ---------------------------------------------------------------------------

CONTEXT = {"patientId": "123", "userId": "Practitioner/abc", "encounterId": "e 1&x=y"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("Patient/{{context.patientId}}", "Patient/123", id="patient-read"),
        pytest.param(
            f"Observation?patient={{{{context.patientId}}}}&code={LOINC}|{CALCIUM}",
            f"Observation?patient=123&code={LOINC}|{CALCIUM}",
            id="template-text-kept",
        ),
        pytest.param("Encounter/{{context.encounterId}}", "Encounter/e%201%26x%3Dy", id="value-url-encoded"),
        pytest.param("{{context.userId}}", "Practitioner/abc", id="userId-reference"),
        pytest.param("Practitioner/{{userPractitionerId}}", "Practitioner/abc", id="userPractitionerId"),
        pytest.param("Patient/{{ context.patientId }}", "Patient/123", id="spaces-inside-braces"),
    ],
)
def test_fill_template(template: str, expected: str) -> None:
    assert fill_template(template, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "context"),
    [
        pytest.param("Encounter/{{context.encounterId}}", {"patientId": "1"}, id="missing-context-value"),
        pytest.param("Patient/{{context.patientId}}", {"patientId": ""}, id="empty-value"),
        pytest.param("PractitionerRole/{{userPractitionerRoleId}}", CONTEXT, id="userId-of-other-type"),
        pytest.param("Patient/{{context.patientId}}", {"patientId": ".."}, id="dot-segment"),
        pytest.param("Patient/{{today}}", CONTEXT, id="unknown-token"),
        pytest.param("Patient/{{context.patientId}", CONTEXT, id="malformed-braces"),
    ],
)
def test_fill_template_rejects(template: str, context: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="token") as info:
        fill_template(template, context)
    assert "123" not in str(info.value)
