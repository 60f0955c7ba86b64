"""Prefetch templates follow the rule pack, and fill in with the hook context."""

from __future__ import annotations

import dataclasses

from cds.fhirclient import fill_template
from cds.intake import PREFETCH_KEYS
from cds.prefetch import missing_keys, prefetch_templates, template_context
from cds.rulepack import CodeEntry, RulePack


def test_templates_cover_exactly_the_prefetch_keys(pack: RulePack) -> None:
    assert tuple(prefetch_templates(pack)) == PREFETCH_KEYS


def test_templates_change_when_the_pack_changes(pack: RulePack) -> None:
    name, analyte = next(iter(pack.analytes.items()))
    extra = CodeEntry(system="http://loinc.org", code="99999-9", display="test", source="U", checked="test")
    changed = dataclasses.replace(
        pack, analytes={**pack.analytes, name: analyte.model_copy(update={"codes": (*analyte.codes, extra)})}
    )
    assert "http://loinc.org|99999-9" not in prefetch_templates(pack)["observations"]
    assert "http://loinc.org|99999-9" in prefetch_templates(changed)["observations"]


def test_conditions_are_not_filtered_by_code_while_the_pack_uses_prefixes(pack: RulePack) -> None:
    assert any(vs.prefixes for vs in pack.valuesets.conditions.values())
    assert prefetch_templates(pack)["conditions"] == "Condition?patient={{context.patientId}}"


def test_conditions_are_filtered_by_code_without_prefixes(pack: RulePack) -> None:
    plain = {k: vs.model_copy(update={"prefixes": ()}) for k, vs in pack.valuesets.conditions.items()}
    changed = dataclasses.replace(pack, valuesets=pack.valuesets.model_copy(update={"conditions": plain}))
    template = prefetch_templates(changed)["conditions"]
    assert "&code=" in template
    first = next(c for vs in plain.values() for c in vs.codes)
    assert f"{first.system}|{first.code}" in template


def test_questionnaire_template_names_the_packs_questionnaire(pack: RulePack) -> None:
    assert prefetch_templates(pack)["questionnaireResponses"].endswith(
        f"questionnaire={pack.questionnaire_url}"
    )


def test_templates_fill_with_the_patient_id_only_from_primitive_context(pack: RulePack) -> None:
    context = template_context({"patientId": "p 1", "userId": "Practitioner/x", "draftOrders": {"entry": []}})
    assert context == {"patientId": "p 1", "userId": "Practitioner/x"}
    assert fill_template(prefetch_templates(pack)["patient"], context) == "Patient/p%201"


def test_missing_keys_counts_operation_outcomes_as_absent() -> None:
    prefetch = {
        "patient": {"resourceType": "Patient"},
        "observations": None,
        "conditions": {"resourceType": "OperationOutcome"},
    }
    assert missing_keys(prefetch) == [
        "conditions",
        "medicationRequests",
        "medicationStatements",
        "questionnaireResponses",
    ]


def test_templates_use_only_reads_and_simple_patient_searches(pack: RulePack) -> None:
    """https://cds-hooks.hl7.org/2.0/#prefetch-query-restrictions: instance reads and type searches on
    the patient with token parameters; no chained, _include or _has queries."""
    for key, template in prefetch_templates(pack).items():
        _kind, _, query = template.partition("?")
        if not query:
            assert template == "Patient/{{context.patientId}}", key
            continue
        params = dict(part.split("=", 1) for part in query.split("&"))
        assert params["patient"] == "{{context.patientId}}"
        assert set(params) <= {"patient", "code", "status", "questionnaire"}, key
        assert not any(name.startswith("_") or ":" in name or "." in name for name in params)
