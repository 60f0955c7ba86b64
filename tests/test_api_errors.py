"""Every error status over HTTP with its OperationOutcome body: 400, 404, 405, 412, 413, 503 and a generic 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluation, Evaluator
from cds.rulepack import RulePack
from tests.support.api import Api, dev_settings, hook_request, running

SERVICE = "/cds-services/cramp-assessment"
LIMIT = 64 * 1024


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path, max_body_bytes=LIMIT), evaluator=Evaluator(pack)) as api:
        yield api


def issue(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    [first] = body["issue"]
    assert first["severity"] == "error"
    assert first["diagnostics"]
    result: dict[str, Any] = first
    return result


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"hook": NaN}', b"\xff\xfe"],
    ids=["broken", "empty", "nan", "not-utf8"],
)
def test_bad_json_is_400(api: Api, raw: bytes) -> None:
    found = issue(api.client.post(SERVICE, content=raw, headers={"content-type": "application/json"}), 400)
    assert found["code"] == "structure"


def _without(path: str) -> dict[str, Any]:
    request = hook_request()
    *parents, last = path.split(".")
    target = request
    for part in parents:
        target = target[part]
    del target[last]
    return request


def _replace(path: str, value: Any) -> dict[str, Any]:
    request = hook_request()
    *parents, last = path.split(".")
    target = request
    for part in parents:
        target = target[part]
    target[last] = value
    return request


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        (_without("hook"), "hook"),
        (_without("hookInstance"), "hookInstance"),
        (_without("context"), "context"),
        (_without("context.patientId"), "context.patientId"),
        (_replace("hook", "order-sign"), "hook"),
        (_replace("hookInstance", "x" * 300), "hookInstance"),
        (_replace("prefetch", ["not", "an", "object"]), "prefetch"),
        (_replace("prefetch.conditions", "Condition/1"), "prefetch.conditions"),
        (_replace("fhirAuthorization", {"token_type": "Bearer"}), "fhirAuthorization"),
    ],
    ids=[
        "no-hook",
        "no-hookInstance",
        "no-context",
        "no-patientId",
        "wrong-hook",
        "hookInstance-too-long",
        "prefetch-not-object",
        "prefetch-value-not-resource",
        "fhirAuthorization-without-token",
    ],
)
def test_an_invalid_request_is_400_naming_the_field(
    api: Api, request_body: dict[str, Any], field: str
) -> None:
    found = issue(api.client.post(SERVICE, json=request_body), 400)
    assert found["expression"] == [field]


def test_a_request_that_is_not_an_object_is_400(api: Api) -> None:
    issue(api.client.post(SERVICE, json=[1, 2, 3]), 400)


def test_invalid_fhir_content_is_400_naming_resource_and_field(api: Api) -> None:
    request = hook_request()
    observation = request["prefetch"]["observations"]["entry"][0]["resource"]
    observation["status"] = 42
    found = issue(api.client.post(SERVICE, json=request), 400)
    assert found["expression"] == ["status"]
    assert f"Observation/{observation['id']}" in found["diagnostics"]


def test_a_prefetch_patient_other_than_the_context_patient_is_400(api: Api) -> None:
    request = hook_request()
    request["context"]["patientId"] = "someone-else"
    found = issue(api.client.post(SERVICE, json=request), 400)
    assert found["expression"] == ["prefetch.patient"]


def test_an_unknown_service_is_404(api: Api) -> None:
    found = issue(api.client.post("/cds-services/no-such-service", json=hook_request()), 404)
    assert found["code"] == "not-found"
    assert "no-such-service" in found["diagnostics"]


def test_feedback_for_an_unknown_service_is_404(api: Api) -> None:
    issue(api.client.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404)


def test_an_unknown_path_is_404(api: Api) -> None:
    issue(api.client.get("/no/such/path"), 404)


def test_a_wrong_method_is_405(api: Api) -> None:
    found = issue(api.client.get(SERVICE), 405)
    assert found["code"] == "not-supported"


def test_missing_prefetch_is_412(api: Api) -> None:
    found = issue(api.client.post(SERVICE, json=_without("prefetch.observations")), 412)
    assert found["expression"] == ["prefetch.observations"]


def test_a_body_declared_too_large_is_413_before_it_is_read(api: Api) -> None:
    body = b"{" + b" " * (LIMIT + 10) + b"}"
    found = issue(api.client.post(SERVICE, content=body, headers={"content-type": "application/json"}), 413)
    assert found["code"] == "too-long"
    assert found["expression"] == ["body"]


def test_a_streamed_body_too_large_is_413(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"{"
        for _ in range(LIMIT // 1024 + 4):
            yield b" " * 1024
        yield b"}"

    response = api.client.post(SERVICE, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    issue(response, 413)


def test_a_body_just_under_the_limit_is_read(api: Api) -> None:
    body = b'{"feedback": []}' + b" " * (LIMIT - 100)
    found = issue(api.client.post(SERVICE + "/feedback", content=body), 400)
    assert found["expression"] == ["feedback"]


class BrokenEvaluator(Evaluator):
    def evaluate_prefetch(self, *args: Any, **kwargs: Any) -> Evaluation:
        raise RuntimeError("patient Beatrice Hookham broke it")


def test_an_unexpected_error_is_a_generic_500_logged_without_its_message(
    tmp_path: Path, pack: RulePack, caplog: pytest.LogCaptureFixture
) -> None:
    with running(dev_settings(tmp_path), evaluator=BrokenEvaluator(pack)) as api:
        with caplog.at_level(logging.INFO, logger="cds"):
            response = api.client.post(SERVICE, json=hook_request())
        found = issue(response, 500)
    assert found == {
        "severity": "error",
        "code": "exception",
        "diagnostics": "internal error; the service logged it",
    }
    failed = [r for r in caplog.records if r.getMessage() == "request.failed"]
    assert failed
    assert failed[0].cds_fields["error"] == "RuntimeError"  # type: ignore[attr-defined]
    assert all("Hookham" not in repr(getattr(r, "cds_fields", "")) + r.getMessage() for r in caplog.records)
