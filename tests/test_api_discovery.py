"""GET /cds-services over HTTP: both services, their prefetch templates and descriptions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluator
from cds.intake import PREFETCH_KEYS
from cds.rulepack import RulePack
from tests.support.api import Api, dev_settings, running


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api:
        yield api


def empty_members(value: Any, path: str = "") -> list[str]:
    """Paths of every null, empty string, empty list or empty object inside `value`."""
    found: list[str] = []
    if value is None or value in ("", [], {}):
        found.append(path or "(root)")
    elif isinstance(value, dict):
        for key, member in value.items():
            found.extend(empty_members(member, f"{path}.{key}" if path else key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            found.extend(empty_members(member, f"{path}[{index}]"))
    return found


def services(api: Api) -> dict[str, dict[str, Any]]:
    response = api.client.get("/cds-services")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return {service["id"]: service for service in response.json()["services"]}


def test_discovery_lists_both_services_on_their_hooks(api: Api) -> None:
    found = services(api)
    assert {sid: s["hook"] for sid, s in found.items()} == {
        "cramp-assessment": "patient-view",
        "calcium-order-check": "order-sign",
    }


def test_each_service_has_the_required_and_recommended_fields(api: Api) -> None:
    for service in services(api).values():
        assert set(service) == {"hook", "id", "title", "description", "prefetch", "usageRequirements"}
        assert all(isinstance(service[f], str) for f in ("hook", "id", "title", "description"))


def test_prefetch_uses_exactly_the_six_keys(api: Api) -> None:
    for service in services(api).values():
        assert tuple(service["prefetch"]) == PREFETCH_KEYS


def test_prefetch_templates_use_only_context_tokens(api: Api) -> None:
    for service in services(api).values():
        for template in service["prefetch"].values():
            assert "{{context.patientId}}" in template
            assert template.count("{{") == template.count("}}") == 1


def test_observation_template_lists_the_packs_loinc_codes(api: Api, pack: RulePack) -> None:
    template = services(api)["cramp-assessment"]["prefetch"]["observations"]
    assert template.startswith("Observation?patient={{context.patientId}}&")
    assert "http://loinc.org|62292-8" in template
    for analyte in pack.analytes.values():
        for code in analyte.codes:
            assert f"{code.system}|{code.code}" in template


def test_usage_requirements_name_the_questionnaire(api: Api, pack: RulePack) -> None:
    for service in services(api).values():
        assert pack.questionnaire_url in service["usageRequirements"]


def test_discovery_has_no_null_or_empty_members(api: Api) -> None:
    response = api.client.get("/cds-services")
    assert empty_members(response.json()) == []


def test_service_ids_are_unique(api: Api) -> None:
    ids = [s["id"] for s in api.client.get("/cds-services").json()["services"]]
    assert len(ids) == len(set(ids))
