"""Operations over HTTP: health, readiness, Prometheus metrics, the OpenAPI document, CORS, JSON logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cds.evaluation import Evaluator
from cds.logs import JsonFormatter
from cds.rulepack import RulePack
from cds.store import Store
from tests.support.api import NOW, Api, dev_settings, hook_request, running, wait_for_request_log

SANDBOX = "https://sandbox.cds-hooks.org"


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api:
        yield api


def test_healthz(api: Api) -> None:
    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_rule_pack_and_store(api: Api, pack: RulePack) -> None:
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "rulePack": f"cramp-cds {pack.version}",
        "store": "ok",
        "backlog": 0,
        "setAside": 0,
    }


class UnreachableStore(Store):
    def ping(self) -> bool:
        return False


def test_readyz_is_503_when_the_store_does_not_answer(tmp_path: Path, pack: RulePack) -> None:
    store = UnreachableStore(f"sqlite:///{tmp_path / 's.sqlite3'}")
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack), store=store) as api:
        response = api.client.get("/readyz")
    store.close()
    assert response.status_code == 503
    assert response.json()["store"] == "unreachable"


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in the metrics")


def test_metrics_count_requests_latency_cards_and_feedback(api: Api) -> None:
    cards = api.client.post("/cds-services/cramp-assessment", json=hook_request()).json()["cards"]
    feedback = {
        "feedback": [{"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}]
    }
    assert api.client.post("/cds-services/cramp-assessment/feedback", json=feedback).status_code == 200
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/cds-services/{service_id}"
    assert metric(text, "cds_http_requests_total", route=route, method="POST", status="200") == 1
    assert metric(text, "cds_request_duration_seconds_count", route=route, service="cramp-assessment") == 1
    for card in cards:
        topic = card["source"]["topic"]["code"]
        assert metric(text, "cds_cards_issued_total", service="cramp-assessment", topic=topic) == 1
    assert metric(text, "cds_feedback_total", service="cramp-assessment", outcome="accepted") == 1


def test_openapi_describes_every_endpoint_with_real_schemas(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths) >= {
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
        "/evaluate",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    schemas = document["components"]["schemas"]

    def ref(schema: dict[str, Any]) -> str:
        name = schema["$ref"].rsplit("/", 1)[1]
        assert name in schemas
        return str(name)

    post = paths["/cds-services/{service_id}"]["post"]
    assert ref(post["requestBody"]["content"]["application/json"]["schema"]) == "HookRequestBody"
    assert ref(post["responses"]["200"]["content"]["application/json"]["schema"]) == "CardsResponse"
    for status in ("400", "401", "404", "412", "413"):
        assert ref(post["responses"][status]["content"]["application/json"]["schema"]) == "OperationOutcome"
    assert "422" not in post["responses"]
    feedback = paths["/cds-services/{service_id}/feedback"]["post"]
    assert ref(feedback["requestBody"]["content"]["application/json"]["schema"]) == "FeedbackRequest"
    assert {"card", "outcome", "outcomeTimestamp"} <= set(schemas["FeedbackEntry"]["required"])
    assert (
        ref(paths["/evaluate"]["post"]["requestBody"]["content"]["application/json"]["schema"])
        == "FhirBundle"
    )
    discovery = paths["/cds-services"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ref(discovery) == "DiscoveryResponse"


def test_cors_is_off_by_default(api: Api) -> None:
    response = api.client.get("/cds-services", headers={"Origin": SANDBOX})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_the_configured_origin(tmp_path: Path, pack: RulePack) -> None:
    settings = dev_settings(tmp_path, cors_origins=(SANDBOX,))
    with running(settings, evaluator=Evaluator(pack)) as api:
        preflight = api.client.options(
            "/cds-services/cramp-assessment",
            headers={
                "Origin": SANDBOX,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        simple = api.client.get("/cds-services", headers={"Origin": SANDBOX})
        other = api.client.get("/cds-services", headers={"Origin": "https://evil.example.org"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == SANDBOX
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert simple.headers["access-control-allow-origin"] == SANDBOX
    assert "access-control-allow-origin" not in other.headers


def test_request_log_is_json_with_hook_instance_and_timing_and_no_phi(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    request = hook_request()
    with caplog.at_level(logging.INFO, logger="cds"):
        assert api.client.post("/cds-services/cramp-assessment", json=request).status_code == 200
        wait_for_request_log(lambda: caplog.records)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name.startswith("cds")]
    [line] = [entry for entry in lines if entry["event"] == "request"]
    assert line["hookInstance"] == request["hookInstance"]
    assert line["service"] == "cramp-assessment"
    assert line["status"] == 200
    assert line["cards"] == 5
    assert isinstance(line["durationMs"], float)
    everything = json.dumps(lines)
    for phi in (request["context"]["patientId"], "Hookham", "Beatrice", "1967-08-03"):
        assert phi not in everything
