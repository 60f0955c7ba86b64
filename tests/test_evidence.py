"""Evidence mechanics of the record (issue 8 classes 7, 11, 12 and issue 9 item 6): windows and
superseding, questionnaire identity, FHIR modifier elements, undotted ICD-10-CM codes, partial birth
dates, and how evidence is worded."""

from __future__ import annotations

from typing import Any

import pytest

from cds.cards import Trace, _summary, evidence_priority
from cds.cases import build_case_bundle
from cds.errors import FhirValidationError
from cds.evaluation import Evaluation, Evaluator
from tests.conftest import FROZEN_NOW, load_fixture


def bundle_of(evaluator: Evaluator, given: dict[str, Any]) -> dict[str, Any]:
    return build_case_bundle(evaluator.pack, given, FROZEN_NOW)


def run(evaluator: Evaluator, document: dict[str, Any]) -> Evaluation:
    return evaluator.evaluate_document(document, now=FROZEN_NOW)


def resources(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == kind]


def notes_with(result: Evaluation, *words: str) -> list[str]:
    return [n for n in result.notes if all(w in n for w in words)]


# --- modifier elements ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        pytest.param("Condition", (), "modifierExtension[0]", id="condition-top-level"),
        pytest.param("MedicationRequest", (), "modifierExtension[0]", id="order-top-level"),
        pytest.param("Observation", (), "modifierExtension[0]", id="observation-top-level"),
        pytest.param("QuestionnaireResponse", ("item", 0), "item[0].modifierExtension[0]", id="answer-item"),
    ],
)
def test_a_modifier_extension_refuses_the_request_naming_resource_and_field(
    evaluator: Evaluator, kind: str, path: tuple[Any, ...], field: str
) -> None:
    document = bundle_of(
        evaluator,
        {
            "answers": {"cramp-frequency": 2},
            "conditions": ["cramp"],
            "medications": ["ppi"],
            "labs": {"magnesium": 0.8},
        },
    )
    node: Any = resources(document, kind)[0]
    for step in path:
        node = node[step]
    node["modifierExtension"] = [{"url": "http://example.org/fhir/negated", "valueBoolean": True}]
    with pytest.raises(FhirValidationError) as caught:
        run(evaluator, document)
    assert caught.value.field == field
    assert str(caught.value.resource).startswith(kind + "/")
    assert "http://example.org/fhir/negated" in caught.value.message


def test_a_modifier_extension_of_another_patient_is_not_read(evaluator: Evaluator) -> None:
    document = bundle_of(evaluator, {"answers": {"cramp-frequency": 2}, "conditions": ["cramp"]})
    condition = resources(document, "Condition")[0]
    condition["subject"] = {"reference": "Patient/someone-else"}
    condition["modifierExtension"] = [{"url": "http://example.org/fhir/negated", "valueBoolean": True}]
    result = run(evaluator, document)
    assert notes_with(result, "another patient")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        pytest.param({"do_not_perform": True}, "doNotPerform", id="do-not-perform"),
        pytest.param({"intent": "proposal"}, "intent proposal", id="proposal"),
        pytest.param({"intent": "plan"}, "intent plan", id="plan"),
        pytest.param({"as": "statement", "status": "not-taken"}, "status not-taken", id="not-taken"),
        pytest.param({"as": "statement", "status": "entered-in-error"}, "entered-in-error", id="in-error"),
    ],
)
def test_medication_modifiers_are_honoured_and_noted(
    evaluator: Evaluator, spec: dict[str, Any], why: str
) -> None:
    result = run(evaluator, bundle_of(evaluator, {"medications": [{"group": "ppi", **spec}]}))
    assert result.record.medications == []
    assert notes_with(result, "medication-0", why, "not counted")


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_conditions_are_noted(evaluator: Evaluator, verification: str) -> None:
    result = run(
        evaluator, bundle_of(evaluator, {"conditions": [{"group": "ckd", "verification": verification}]})
    )
    assert result.record.conditions == []
    assert notes_with(result, "Condition/condition-0", verification)


@pytest.mark.parametrize(
    ("group", "code"),
    [
        pytest.param("cramp", "R252", id="exact-undotted"),
        pytest.param("cramp", "r25.2", id="exact-lower-case"),
        pytest.param("venous-insufficiency", "I872", id="exact-undotted-i872"),
        pytest.param("varicose-veins", "I8390", id="family-undotted"),
    ],
)
def test_icd_10_cm_codes_match_without_their_dot(evaluator: Evaluator, group: str, code: str) -> None:
    document = bundle_of(evaluator, {"conditions": [{"group": group, "code": code.upper()}]})
    resources(document, "Condition")[0]["code"]["coding"][0]["code"] = code
    assert [h.group for h in run(evaluator, document).record.conditions] == [group]


def test_do_not_perform_ppi_fixture_counts_no_ppi(evaluator: Evaluator) -> None:
    result = run(evaluator, load_fixture("ppi-do-not-perform.json"))
    assert result.record.medications == [] or all(h.group != "ppi" for h in result.record.medications)
    assert not {"calcium-absorption.ppi", "finding.on-ppi", "finding.magnesium-risk.ppi"} & set(result.fired)
    assert notes_with(result, "doNotPerform")


def test_superseded_pregnancy_fixture_does_not_escalate(evaluator: Evaluator) -> None:
    result = run(evaluator, load_fixture("pregnancy-superseded.json"))
    assert not [f for f in result.fired if f.startswith("finding.pregnant")]
    assert len(notes_with(result, "superseded by the newer 'not pregnant'")) == 2


# --- questionnaire identity and answer windows ---------------------------------------------------------


def test_unnamed_response_is_read_only_without_a_named_one(evaluator: Evaluator) -> None:
    alone = run(
        evaluator,
        bundle_of(evaluator, {"responses": [{"answers": {"pregnant": True}, "questionnaire": None}]}),
    )
    assert alone.record.answers["pregnant"].value is True
    assert notes_with(alone, "names no questionnaire", "read because")
    beside = run(
        evaluator,
        bundle_of(
            evaluator,
            {
                "answers": {"cramp-frequency": 2},
                "responses": [{"answers": {"pregnant": True}, "questionnaire": None, "days_ago": 0}],
            },
        ),
    )
    assert "pregnant" not in beside.record.answers
    assert notes_with(beside, "QuestionnaireResponse/answers-1", "names no questionnaire", "ignored")


def test_unnamed_response_with_items_not_ours_is_ignored(evaluator: Evaluator) -> None:
    document = bundle_of(evaluator, {"responses": [{"answers": {"pregnant": True}, "questionnaire": None}]})
    resources(document, "QuestionnaireResponse")[0]["item"][0]["item"].append(
        {"linkId": "phq-9-total", "answer": [{"valueInteger": 4}]}
    )
    result = run(evaluator, document)
    assert result.record.answers == {}
    assert notes_with(result, "items not ours")


def test_undated_response_is_not_counted_as_recent(evaluator: Evaluator) -> None:
    document = bundle_of(evaluator, {"answers": {"pregnant": True}})
    del resources(document, "QuestionnaireResponse")[0]["authored"]
    result = run(evaluator, document)
    assert result.record.answers == {}
    assert notes_with(result, "no authored date")


def test_stale_answer_is_dropped_with_a_note(evaluator: Evaluator) -> None:
    result = run(
        evaluator, bundle_of(evaluator, {"responses": [{"answers": {"pregnant": True}, "months_ago": 30}]})
    )
    assert result.record.answers == {}
    assert notes_with(result, "pregnant", "older than 10 months")
    assert "finding.pregnant.answer" not in result.fired


def test_answer_windows_come_from_the_pack(evaluator: Evaluator) -> None:
    pack = evaluator.pack
    assert pack.answer_window("pregnant") == pack.analytes["pregnancy-status"].recent_months == 10
    assert pack.answer_window("cramp-frequency") == 12


# --- superseding ---------------------------------------------------------------------------------------


def test_newer_negative_status_supersedes_pregnancy_condition_with_note(evaluator: Evaluator) -> None:
    given = {
        "conditions": [{"group": "pregnancy", "months_ago": 3}],
        "labs": {"pregnancy-status": {"coded": "negative", "months_ago": 1}},
    }
    result = run(evaluator, bundle_of(evaluator, given))
    assert result.record.conditions == []
    assert notes_with(result, "Condition/condition-0", "superseded", "not pregnant", "Observation/lab-0")


def test_newer_no_answer_supersedes_an_older_positive_status(evaluator: Evaluator) -> None:
    given = {
        "labs": {"pregnancy-status": {"coded": "positive", "months_ago": 2}},
        "answers": {"pregnant": False},
    }
    result = run(evaluator, bundle_of(evaluator, given))
    assert "pregnancy-status" not in result.record.labs
    assert notes_with(result, "Observation/lab-0", "superseded")


def test_newer_zero_cramps_supersedes_an_old_cramp_condition(evaluator: Evaluator) -> None:
    result = run(
        evaluator, bundle_of(evaluator, {"conditions": ["cramp"], "answers": {"cramp-frequency": 0}})
    )
    assert result.record.conditions == []
    assert notes_with(result, "Condition/condition-0", "superseded", "0 cramps a week")
    assert result.cards == []


def test_condition_recorded_after_the_answer_is_kept(evaluator: Evaluator) -> None:
    given = {
        "conditions": [{"group": "cramp", "months_ago": None, "recorded_days_ago": 0}],
        "answers": {"cramp-frequency": 0},
    }
    assert [h.group for h in run(evaluator, bundle_of(evaluator, given)).record.conditions] == ["cramp"]


# --- partial birth dates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "age", "label"),
    [
        pytest.param("1980", 45, "age 45 (at least; partial birth date)", id="1980-45-or-46"),
        pytest.param("1981", None, "age unknown (44 or 45: partial birth date)", id="1981-across-45"),
        pytest.param("1981-06", None, "age unknown (44 or 45: partial birth date)", id="1981-06-across-45"),
        pytest.param("1981-07", 44, "age 44", id="1981-07-certain"),
        pytest.param("1946", None, "age unknown (79 or 80: partial birth date)", id="1946-across-80"),
    ],
)
def test_partial_birth_date_gives_the_certain_age_or_none(
    evaluator: Evaluator, birth: str, age: int | None, label: str
) -> None:
    result = run(evaluator, bundle_of(evaluator, {"birth_date": birth}))
    patient = next(f for f in result.facts.facts if f["type"] == "patient")
    assert patient.get("age") == age
    assert patient["age_known"] is (age is not None)
    assert patient["label"] == label


# --- wording -------------------------------------------------------------------------------------------


def test_medication_without_text_or_display_is_shown_by_system_and_code(evaluator: Evaluator) -> None:
    given = {"answers": {"cramp-frequency": 2}, "medications": [{"group": "ppi", "code": "198052"}]}
    result = run(evaluator, bundle_of(evaluator, given))
    assert [h.display for h in result.record.medications] == ["RxNorm 198052"]
    card = next(c for c in result.cards if c["source"]["topic"]["code"] == "calcium-absorption")
    assert "RxNorm 198052 (active)" in card["detail"]
    assert " medication (active)" not in card["detail"]


def test_cramp_frequency_is_read_per_week(evaluator: Evaluator) -> None:
    result = run(evaluator, bundle_of(evaluator, {"answers": {"cramp-frequency": 3}}))
    labels = [f["label"] for f in result.facts.facts if f["type"] == "answer"]
    assert labels == ["cramp frequency: 3 a week"]


def test_trimmed_summary_keeps_critical_and_pregnancy_evidence_first() -> None:
    facts = [
        {"type": "answer", "item": "cramp-frequency", "number": 3, "label": "cramp frequency: 3 a week"},
        {"type": "lab", "analyte": "bmi", "band": "high", "label": "BMI 41 kg/m² (obese) " + "x" * 60},
        {
            "type": "lab",
            "analyte": "sodium",
            "band": "low",
            "critical": True,
            "label": "Sodium 119 mmol/L (low, critical)",
        },
        {"type": "condition", "group": "pregnancy", "label": "Pregnancy (onset 2026-03)"},
    ]
    trace = Trace(
        labels=tuple(str(f["label"]) for f in facts),
        refs=(),
        priorities=tuple(evidence_priority(f) for f in facts),
    )
    ordered = trace.by_priority()
    assert ordered[:2] == ("Sodium 119 mmol/L (low, critical)", "Pregnancy (onset 2026-03)")
    summary = _summary(
        "Electrolyte imbalance can cause cramps in this patient, see below: {evidence}", ordered, []
    )
    assert len(summary) <= 139
    assert "Sodium 119 mmol/L (low, critical)" in summary
    assert "Pregnancy" in summary


def test_a_single_long_label_is_cut_at_a_word_not_dropped() -> None:
    label = "25-OH vitamin D 14 ng/mL (deficient) of 2026-01-14, earlier result; newer 12 mcg/L of 2026-05-20 could not be read (unit 'mcg/L' not known)"
    summary = _summary("Newest vitamin D result could not be read; repeat it: {evidence}", (label,), [])
    assert len(summary) <= 139
    assert summary.startswith(
        "Newest vitamin D result could not be read; repeat it: 25-OH vitamin D 14 ng/mL"
    )
    assert summary.endswith("…")
