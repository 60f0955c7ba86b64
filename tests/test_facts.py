"""Facts: a record -> flat, type-checked facts, each tied to the FHIR resources that are its evidence."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cds.cases import build_case_bundle
from cds.evaluation import Evaluation, Evaluator
from cds.facttypes import FACT_FIELDS, LAB_BANDS, check_fact
from cds.rulepack import RulePack
from tests.conftest import FROZEN_NOW

GIVEN: dict[str, Any] = {
    "age": 52,
    "answers": {"cramp-frequency": 3, "low-sun-exposure": True, "calcium-with-meals": False},
    "labs": {
        "vitamin-d-25oh": 14,
        "magnesium": {"value": 1.4, "unit": "mg/dL"},
        "tsh": {"value": 12, "unit": "u[IU]/mL"},
    },
    "conditions": ["ckd", {"group": "pregnancy", "months_ago": 3}],
    "medications": ["ppi", {"group": "loop-diuretic", "as": "statement"}],
}


def evaluate(evaluator: Evaluator, given: dict[str, Any]) -> Evaluation:
    return evaluator.evaluate_document(build_case_bundle(evaluator.pack, given, FROZEN_NOW), now=FROZEN_NOW)


def of_type(result: Evaluation, kind: str) -> list[dict[str, Any]]:
    return [f for f in result.facts.facts if f["type"] == kind]


def test_every_fact_passes_the_vocabulary_check(evaluator: Evaluator) -> None:
    result = evaluate(evaluator, GIVEN)
    for fact in result.facts.facts:
        check_fact(fact)
    ids = [f["id"] for f in result.facts.facts]
    assert len(ids) == len(set(ids))
    assert set(result.facts.evidence) == set(ids)


def test_one_lab_fact_per_analyte(evaluator: Evaluator, pack: RulePack) -> None:
    labs = of_type(evaluate(evaluator, GIVEN), "lab")
    assert sorted(f["analyte"] for f in labs) == sorted(pack.analytes)
    assert {f["band"] for f in labs} <= LAB_BANDS


def test_lab_facts_carry_canonical_values_and_evidence(evaluator: Evaluator) -> None:
    result = evaluate(evaluator, GIVEN)
    labs = {f["analyte"]: f for f in of_type(result, "lab")}
    vitd, mg, tsh = labs["vitamin-d-25oh"], labs["magnesium"], labs["tsh"]
    assert (vitd["band"], vitd["grade"], vitd["value"], vitd["unit"]) == ("low", "deficient", 14.0, "ng/mL")
    assert (mg["band"], mg["unit"]) == ("low", "mmol/L")
    assert mg["value"] == 0.58  # 1.4 mg/dL x 0.4114 = 0.576, at the reporting precision of 2 decimals
    assert "1.4 mg/dL" in str(mg["label"])
    assert (tsh["band"], tsh["value"]) == ("high", 12.0)
    for fact in (vitd, mg, tsh):
        [ref] = result.facts.evidence[str(fact["id"])]
        assert ref.startswith("Observation/lab-")
        assert result.record.labs[str(fact["analyte"])].ref == ref


def test_missing_lab_is_band_none_without_evidence(evaluator: Evaluator) -> None:
    result = evaluate(evaluator, {"answers": {"cramp-frequency": 1}})
    labs = of_type(result, "lab")
    assert {f["band"] for f in labs} == {"none"}
    assert all(result.facts.evidence[str(f["id"])] == () for f in labs)
    assert all("value" not in f and "grade" not in f for f in labs)
    vitd = next(f for f in labs if f["analyte"] == "vitamin-d-25oh")
    assert vitd["label"] == "no 25-OH vitamin D result in 12 months"


@pytest.mark.parametrize(
    ("age", "expected"),
    [pytest.param(52, {"age": 52}, id="with-age"), pytest.param(None, {}, id="unknown-age")],
)
def test_patient_fact(evaluator: Evaluator, age: int | None, expected: dict[str, Any]) -> None:
    result = evaluate(evaluator, {"age": age})
    [patient] = of_type(result, "patient")
    assert {k: v for k, v in patient.items() if k == "age"} == expected
    assert result.facts.evidence[str(patient["id"])] == ("Patient/case-patient",)


def test_condition_and_medication_facts(evaluator: Evaluator) -> None:
    result = evaluate(evaluator, GIVEN)
    conditions = {f["group"]: f for f in of_type(result, "condition")}
    assert set(conditions) == {"ckd", "pregnancy"}
    assert conditions["pregnancy"]["onset_months"] == 3
    assert conditions["ckd"]["onset_months"] == 24
    meds = {f["group"]: f for f in of_type(result, "medication")}
    assert set(meds) == {"ppi", "loop-diuretic"}
    assert str(meds["ppi"]["label"]).endswith("(active)")
    assert result.facts.evidence[str(meds["loop-diuretic"]["id"])] == ("MedicationStatement/medication-1",)


def test_answer_facts(evaluator: Evaluator) -> None:
    answers = {f["item"]: f for f in of_type(evaluate(evaluator, GIVEN), "answer")}
    assert answers["cramp-frequency"]["number"] == 3
    assert "says" not in answers["cramp-frequency"]
    assert answers["low-sun-exposure"]["says"] is True
    assert answers["calcium-with-meals"]["says"] is False
    assert answers["calcium-with-meals"]["label"] == "calcium with meals: no"


@pytest.mark.parametrize(
    "fact",
    [
        pytest.param(
            {"id": "f1", "type": "lab", "label": "x", "analyte": "tsh", "band": "low", "value": "abc"},
            id="string-for-float",
        ),
        pytest.param(
            {"id": "f1", "type": "lab", "label": "x", "analyte": "tsh", "band": "low", "value": math.nan},
            id="nan-value",
        ),
        pytest.param(
            {"id": "f1", "type": "lab", "label": "x", "analyte": "tsh", "band": "low", "value": True},
            id="bool-for-float",
        ),
        pytest.param({"id": "f1", "type": "patient", "label": "x", "age": True}, id="bool-for-int"),
        pytest.param({"id": "f1", "type": "patient", "label": "x", "age": 45.0}, id="float-for-int"),
        pytest.param(
            {"id": "f1", "type": "answer", "label": "x", "item": "pregnant", "says": 1}, id="int-for-bool"
        ),
        pytest.param({"id": "f1", "type": "patient", "label": "x", "sex": "female"}, id="unknown-field"),
        pytest.param({"id": "f1", "type": "vital", "label": "x"}, id="unknown-type"),
        pytest.param({"id": 1, "type": "patient", "label": "x"}, id="id-not-string"),
    ],
)
def test_check_fact_refuses_loose_types(fact: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        check_fact(fact)


@pytest.mark.parametrize(
    "fact",
    [
        pytest.param(
            {"id": "f1", "type": "lab", "label": "x", "analyte": "tsh", "band": "high", "value": 5},
            id="int-where-float",
        ),
        pytest.param({"id": "f1", "type": "patient", "label": "x", "age": 0}, id="age-zero"),
        pytest.param({"id": "f1", "type": "sentinel", "label": "x"}, id="sentinel"),
    ],
)
def test_check_fact_accepts(fact: dict[str, Any]) -> None:
    check_fact(fact)
    assert fact["type"] in FACT_FIELDS
