"""Normalisation through the whole pipeline: Bundles built here, evaluated by the real Evaluator.

Covers unit conversion per analyte, interpretation -> referenceRange -> default precedence, recency,
patient selection, pregnancy and age, questionnaire answers and medications.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds.errors import PatientError
from cds.evaluation import Evaluation, Evaluator
from cds.fhirvalues import subtract_months
from tests.conftest import FROZEN_NOW, shared_examples

NOW = FROZEN_NOW  # 2026-06-01 21:30 in Pacific/Auckland (09:30 UTC)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
QUESTIONNAIRE = "https://cramp-cds.example.org/fhir/Questionnaire/cramp-assessment"
PATIENT_URL = "urn:uuid:11111111-1111-4111-8111-111111111111"
SUBJECT = {"reference": PATIENT_URL}

CODE = {
    "vitamin-d-25oh": "62292-8",
    "vitamin-d3-molar": "14635-7",
    "magnesium": "19123-9",
    "calcium-total": "17861-6",
    "calcium-molar": "2000-8",
    "calcium-ionized": "1995-0",
    "potassium": "2823-3",
    "sodium": "2951-2",
    "tsh": "3016-3",
    "free-t4": "3024-7",
    "free-t4-molar": "14920-3",
    "egfr": "33914-3",
    "bmi": "39156-5",
    "pregnancy-status": "82810-3",
}


# --- builders ---------------------------------------------------------------------------------------


def months_ago(months: int, *, days: int = 0) -> str:
    return (subtract_months(NOW, months) - timedelta(days=days)).isoformat()


def patient(*, pid: str = "p1", birth: str | None = "1980-03-15") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if birth is not None:
        resource["birthDate"] = birth
    return resource


def quantity(
    value: float, unit: str | None, *, code: str | bool = True, comparator: str | None = None
) -> dict[str, Any]:
    """A valueQuantity: `code=True` uses the unit as UCUM code, a string gives another code, False none."""
    q: dict[str, Any] = {"value": value}
    if unit is not None:
        q["unit"] = unit
    if code is not False:
        q["system"] = UCUM
        q["code"] = unit if code is True else code
    if comparator is not None:
        q["comparator"] = comparator
    return q


def observation(
    loinc: str,
    value: dict[str, Any] | None = None,
    *,
    oid: str = "obs-1",
    status: str = "final",
    when: dict[str, Any] | None = None,
    interpretation: tuple[str, str] | None = None,
    reference_range: dict[str, Any] | None = None,
    subject: dict[str, Any] | None = None,
    coded: str | None = None,
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": subject or SUBJECT,
    }
    obs.update(when if when is not None else {"effectiveDateTime": months_ago(1)})
    if value is not None:
        obs["valueQuantity"] = value
    if coded is not None:
        obs["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": coded}]}
    if interpretation is not None:
        system, code = interpretation
        obs["interpretation"] = [{"coding": [{"system": system, "code": code}]}]
    if reference_range is not None:
        obs["referenceRange"] = [reference_range]
    return obs


def ref_range(low: float | None, high: float | None, unit: str | None) -> dict[str, Any]:
    rng: dict[str, Any] = {}
    for name, value in (("low", low), ("high", high)):
        if value is not None:
            rng[name] = {"value": value} | ({"unit": unit, "system": UCUM, "code": unit} if unit else {})
    return rng


def condition(
    system: str, code: str, *, cid: str = "cond-1", onset: str | None = None, clinical: str = "active"
) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}
            ]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": SUBJECT,
    }
    if onset is not None:
        cond["onsetDateTime"] = onset
    return cond


def questionnaire_response(
    items: list[dict[str, Any]],
    *,
    qid: str = "qr-1",
    status: str = "completed",
    authored: str | None = None,
    questionnaire: str = QUESTIONNAIRE,
) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": qid,
        "questionnaire": questionnaire,
        "status": status,
        "subject": SUBJECT,
        "authored": authored or months_ago(0, days=1),
        "item": items,
    }


def item(link_id: str, **answer: Any) -> dict[str, Any]:
    return {"linkId": link_id, "answer": [answer]}


def cramps(per_week: int = 2, *, qid: str = "qr-cramps") -> dict[str, Any]:
    return questionnaire_response([item("cramp-frequency", valueInteger=per_week)], qid=qid)


def bundle(*resources: dict[str, Any], with_patient: dict[str, Any] | None = None) -> dict[str, Any]:
    entries = [{"fullUrl": PATIENT_URL, "resource": with_patient or patient()}]
    for index, resource in enumerate(resources, start=2):
        entries.append({"fullUrl": f"urn:uuid:11111111-1111-4111-8111-{index:012d}", "resource": resource})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def run(evaluator: Evaluator, document: dict[str, Any], now: datetime = NOW) -> Evaluation:
    return evaluator.evaluate_document(document, now=now)


def notes_about(result: Evaluation, key: str) -> list[str]:
    return [note for note in result.notes if key in note]


# --- unit conversion ------------------------------------------------------------------------------

CONVERSIONS = [
    # (id, loinc, valueQuantity, analyte, canonical value, band, grade)
    (
        "vitd-49.9-nmol-deficient",
        CODE["vitamin-d-25oh"],
        quantity(49.9, "nmol/L"),
        "vitamin-d-25oh",
        19.99,
        "low",
        "deficient",
    ),
    (
        "vitd-50-nmol-insufficient",
        CODE["vitamin-d-25oh"],
        quantity(50, "nmol/L"),
        "vitamin-d-25oh",
        20.03,
        "low",
        "insufficient",
    ),
    (
        "vitd-74.8-nmol-insufficient",
        CODE["vitamin-d-25oh"],
        quantity(74.8, "nmol/L"),
        "vitamin-d-25oh",
        29.97,
        "low",
        "insufficient",
    ),
    (
        "vitd-75-nmol-normal",
        CODE["vitamin-d-25oh"],
        quantity(75, "nmol/L"),
        "vitamin-d-25oh",
        30.05,
        "normal",
        None,
    ),
    (
        "vitd-d3-molar-code-nmol",
        CODE["vitamin-d3-molar"],
        quantity(35, "nmol/L"),
        "vitamin-d-25oh",
        14.02,
        "low",
        "deficient",
    ),
    (
        "vitd-ug-per-l-same-as-ng-ml",
        CODE["vitamin-d-25oh"],
        quantity(25, "ug/L"),
        "vitamin-d-25oh",
        25.0,
        "low",
        "insufficient",
    ),
    (
        "vitd-nmol-unit-text-only",
        CODE["vitamin-d-25oh"],
        quantity(49.9, "nmol/L", code=False),
        "vitamin-d-25oh",
        19.99,
        "low",
        "deficient",
    ),
    (
        "vitd-unit-text-when-code-not-ucum",
        CODE["vitamin-d-25oh"],
        {"value": 50, "unit": "nmol/L", "system": "http://lab.example.org/units", "code": "NMOLL"},
        "vitamin-d-25oh",
        20.03,
        "low",
        "insufficient",
    ),
    # 1.7 mg/dL is 0.69938 mmol/L: at the reporting precision (0.70) it is on the cut-off, not under it.
    ("mg-1.7-mg-dl-normal", CODE["magnesium"], quantity(1.7, "mg/dL"), "magnesium", 0.70, "normal", None),
    ("mg-1.68-mg-dl-low", CODE["magnesium"], quantity(1.68, "mg/dL"), "magnesium", 0.69, "low", None),
    (
        "mg-1.71-mg-dl-normal",
        CODE["magnesium"],
        quantity(1.71, "mg/dL"),
        "magnesium",
        0.7,
        "normal",
        None,
    ),
    ("mg-1.38-meq-low", CODE["magnesium"], quantity(1.38, "meq/L"), "magnesium", 0.69, "low", None),
    ("mg-1.4-meq-normal", CODE["magnesium"], quantity(1.4, "mEq/L"), "magnesium", 0.70, "normal", None),
    ("mg-0.69-mmol-low", CODE["magnesium"], quantity(0.69, "mmol/L"), "magnesium", 0.69, "low", None),
    ("mg-0.70-mmol-normal", CODE["magnesium"], quantity(0.70, "mmol/L"), "magnesium", 0.70, "normal", None),
    # 2.12 mmol/L is 8.497 mg/dL: 8.50 at the reporting precision, on the cut-off (the SI lower limit).
    (
        "ca-2.12-mmol-normal",
        CODE["calcium-total"],
        quantity(2.12, "mmol/L"),
        "calcium-total",
        8.5,
        "normal",
        None,
    ),
    ("ca-2.11-mmol-low", CODE["calcium-total"], quantity(2.11, "mmol/L"), "calcium-total", 8.46, "low", None),
    (
        "ca-2.13-mmol-normal",
        CODE["calcium-molar"],
        quantity(2.13, "mmol/L"),
        "calcium-total",
        8.54,
        "normal",
        None,
    ),
    ("ca-8.4-mg-dl-low", CODE["calcium-total"], quantity(8.4, "mg/dL"), "calcium-total", 8.4, "low", None),
    (
        "ionized-ca-1.11-low",
        CODE["calcium-ionized"],
        quantity(1.11, "mmol/L"),
        "calcium-ionized",
        1.11,
        "low",
        None,
    ),
    ("k-3.4-meq-low", CODE["potassium"], quantity(3.4, "mEq/L"), "potassium", 3.4, "low", None),
    ("k-3.5-mmol-normal", CODE["potassium"], quantity(3.5, "mmol/L"), "potassium", 3.5, "normal", None),
    ("na-134-meq-low", CODE["sodium"], quantity(134, "meq/L"), "sodium", 134.0, "low", None),
    ("na-135-mmol-normal", CODE["sodium"], quantity(135, "mmol/L"), "sodium", 135.0, "normal", None),
    ("tsh-4.6-uiu-ml-high", CODE["tsh"], quantity(4.6, "u[IU]/mL"), "tsh", 4.6, "high", None),
    ("tsh-4.5-miu-l-normal", CODE["tsh"], quantity(4.5, "m[IU]/L"), "tsh", 4.5, "normal", None),
    ("tsh-micro-sign-text", CODE["tsh"], quantity(6.0, "\u00b5IU/mL", code=False), "tsh", 6.0, "high", None),
    ("tsh-greek-mu-text", CODE["tsh"], quantity(6.0, "\u03bcIU/mL", code=False), "tsh", 6.0, "high", None),
    ("tsh-spaced-upper-text", CODE["tsh"], quantity(6.0, " MIU / L ", code=False), "tsh", 6.0, "high", None),
    ("ft4-10-pmol-low", CODE["free-t4-molar"], quantity(10, "pmol/L"), "free-t4", 0.78, "low", None),
    ("ft4-10.5-pmol-normal", CODE["free-t4"], quantity(10.5, "pmol/L"), "free-t4", 0.82, "normal", None),
    ("ft4-0.79-ng-dl-low", CODE["free-t4"], quantity(0.79, "ng/dL"), "free-t4", 0.79, "low", None),
    ("egfr-59-low", CODE["egfr"], quantity(59, "mL/min/{1.73_m2}"), "egfr", 59.0, "low", None),
    ("bmi-30-obese", CODE["bmi"], quantity(30, "kg/m2"), "bmi", 30.0, "high", "obese"),
    ("bmi-29.9-normal", CODE["bmi"], quantity(29.9, "kg/m2"), "bmi", 29.9, "normal", None),
]


@pytest.mark.parametrize(
    ("loinc", "value", "analyte", "canonical", "band", "grade"),
    [pytest.param(*row[1:], id=row[0]) for row in CONVERSIONS],
)
def test_unit_conversion_to_canonical_unit(
    evaluator: Evaluator,
    loinc: str,
    value: dict[str, Any],
    analyte: str,
    canonical: float,
    band: str,
    grade: str | None,
) -> None:
    result = run(evaluator, bundle(observation(loinc, value)))
    lab = result.record.labs[analyte]
    assert lab.value == pytest.approx(canonical, abs=1e-9)  # rounded to the reporting precision
    assert lab.unit == evaluator.pack.analytes[analyte].unit
    assert (lab.band, lab.grade) == (band, grade)
    assert lab.ref == "Observation/obs-1"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        pytest.param(quantity(20, "mg/L"), "'mg/L'", id="unknown-ucum-code"),
        pytest.param(quantity(20, "furlongs", code=False), "'furlongs'", id="unknown-unit-text"),
        pytest.param({"value": 20}, "None", id="no-unit-at-all"),
        pytest.param(
            {"value": 20, "system": "http://lab.example.org/units", "code": "NGML"},
            "None",
            id="local-code-no-text",
        ),
    ],
)
def test_unknown_unit_is_unreadable_and_noted(evaluator: Evaluator, value: dict[str, Any], why: str) -> None:
    result = run(evaluator, bundle(observation(CODE["vitamin-d-25oh"], value, oid="odd-unit"), cramps()))
    lab = result.record.labs["vitamin-d-25oh"]
    assert lab.band == "unreadable"
    assert lab.value is None
    assert "could not be read" in lab.display
    notes = notes_about(result, "Observation/odd-unit")
    assert len(notes) == 1
    assert why in notes[0]
    assert "not understood" in notes[0]
    # the fact is still asserted (never silently skipped) and tied to the resource
    fact_ids = [f["id"] for f in result.facts.facts if f.get("analyte") == "vitamin-d-25oh"]
    assert [result.facts.evidence[str(i)] for i in fact_ids] == [("Observation/odd-unit",)]
    assert not any(c["source"]["topic"]["code"] == "vitamin-d-deficiency" for c in result.cards)


def test_observation_without_value_is_unreadable_and_noted(evaluator: Evaluator) -> None:
    result = run(evaluator, bundle(observation(CODE["magnesium"], None, oid="no-value")))
    assert result.record.labs["magnesium"].band == "unreadable"
    assert result.record.labs["magnesium"].why == "no value"
    assert notes_about(result, "Observation/no-value")


@pytest.mark.parametrize(
    ("loinc", "value", "analyte", "band", "grade"),
    [
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(10, "ng/mL", comparator="<"),
            "vitamin-d-25oh",
            "low",
            "deficient",
            id="vitd-lt-10-deficient",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(20, "ng/mL", comparator="<"),
            "vitamin-d-25oh",
            "low",
            "deficient",
            id="vitd-lt-20-deficient",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(25, "ng/mL", comparator="<"),
            "vitamin-d-25oh",
            "low",
            "insufficient",
            id="vitd-lt-25-certainly-low-not-certainly-deficient",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(50, "ng/mL", comparator="<"),
            "vitamin-d-25oh",
            "indeterminate",
            None,
            id="vitd-lt-50-indeterminate",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(25, "nmol/L", comparator="<"),
            "vitamin-d-25oh",
            "low",
            "deficient",
            id="vitd-lt-25-nmol-deficient",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(150, "ng/mL", comparator=">"),
            "vitamin-d-25oh",
            "normal",
            None,
            id="vitd-gt-150-normal",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(30, "ng/mL", comparator=">="),
            "vitamin-d-25oh",
            "normal",
            None,
            id="vitd-ge-30-normal",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(10, "ng/mL", comparator=">"),
            "vitamin-d-25oh",
            "indeterminate",
            None,
            id="vitd-gt-10-indeterminate",
        ),
        pytest.param(
            CODE["egfr"],
            quantity(60, "mL/min/{1.73_m2}", comparator=">"),
            "egfr",
            "normal",
            None,
            id="egfr-gt-60-not-low",
        ),
        pytest.param(
            CODE["egfr"],
            quantity(90, "mL/min/{1.73_m2}", comparator=">"),
            "egfr",
            "normal",
            None,
            id="egfr-gt-90-not-low",
        ),
        pytest.param(
            CODE["egfr"],
            quantity(60, "mL/min/{1.73_m2}", comparator="<"),
            "egfr",
            "low",
            None,
            id="egfr-lt-60-low",
        ),
        pytest.param(
            CODE["egfr"],
            quantity(61, "mL/min/{1.73_m2}", comparator="<"),
            "egfr",
            "indeterminate",
            None,
            id="egfr-lt-61-indeterminate",
        ),
        pytest.param(
            CODE["egfr"],
            quantity(15, "mL/min/{1.73_m2}", comparator="<"),
            "egfr",
            "low",
            None,
            id="egfr-lt-15-low",
        ),
        pytest.param(
            CODE["tsh"],
            quantity(0.01, "m[IU]/L", comparator="<"),
            "tsh",
            "normal",
            None,
            id="tsh-lt-0.01-not-high",
        ),
        pytest.param(
            CODE["tsh"], quantity(100, "m[IU]/L", comparator=">"), "tsh", "high", None, id="tsh-gt-100-high"
        ),
        pytest.param(
            CODE["tsh"], quantity(4.5, "m[IU]/L", comparator=">"), "tsh", "high", None, id="tsh-gt-4.5-high"
        ),
        pytest.param(
            CODE["tsh"],
            quantity(4.5, "m[IU]/L", comparator=">="),
            "tsh",
            "indeterminate",
            None,
            id="tsh-ge-4.5-indeterminate",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(10, "ng/mL", comparator="ad"),
            "vitamin-d-25oh",
            "indeterminate",
            None,
            id="ad-says-nothing",
        ),
    ],
)
def test_comparator_makes_value_a_limit(
    evaluator: Evaluator, loinc: str, value: dict[str, Any], analyte: str, band: str, grade: str | None
) -> None:
    lab = run(evaluator, bundle(observation(loinc, value))).record.labs[analyte]
    assert (lab.band, lab.grade) == (band, grade)
    assert value["comparator"] in lab.display


# --- precedence: interpretation -> referenceRange -> defaults -------------------------------------

STU3_INTERPRETATION = "http://hl7.org/fhir/v2/0078"
V2_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v2-0078"


@pytest.mark.parametrize(
    ("loinc", "value", "interpretation", "rng", "analyte", "band", "basis"),
    [
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            (V3_INTERPRETATION, "N"),
            ref_range(3.5, 5.0, "mmol/L"),
            "potassium",
            "normal",
            "interpretation",
            id="interpretation-beats-range-and-default",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(4.0, "mmol/L"),
            (V3_INTERPRETATION, "L"),
            ref_range(3.5, 5.0, "mmol/L"),
            "potassium",
            "low",
            "interpretation",
            id="interpretation-low-inside-range",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(4.0, "mmol/L"),
            (V3_INTERPRETATION, "LL"),
            None,
            "potassium",
            "low",
            "interpretation",
            id="interpretation-LL",
        ),
        pytest.param(
            CODE["tsh"],
            quantity(2.0, "m[IU]/L"),
            (V3_INTERPRETATION, "HH"),
            None,
            "tsh",
            "high",
            "interpretation",
            id="interpretation-HH",
        ),
        pytest.param(
            CODE["tsh"],
            quantity(2.0, "m[IU]/L"),
            (V3_INTERPRETATION, "HU"),
            None,
            "tsh",
            "high",
            "interpretation",
            id="interpretation-HU",
        ),
        pytest.param(
            CODE["magnesium"],
            quantity(0.8, "mmol/L"),
            (V3_INTERPRETATION, "LU"),
            None,
            "magnesium",
            "low",
            "interpretation",
            id="interpretation-LU",
        ),
        pytest.param(
            CODE["magnesium"],
            quantity(0.8, "mmol/L"),
            (STU3_INTERPRETATION, "L"),
            None,
            "magnesium",
            "low",
            "interpretation",
            id="stu3-v2-0078-system",
        ),
        pytest.param(
            CODE["magnesium"],
            quantity(0.8, "mmol/L"),
            (V2_INTERPRETATION, "L"),
            None,
            "magnesium",
            "low",
            "interpretation",
            id="r4-v2-0078-system",
        ),
        pytest.param(
            CODE["magnesium"],
            quantity(0.8, "mmol/L"),
            ("http://lab.example.org/flags", "L"),
            None,
            "magnesium",
            "normal",
            "default",
            id="unknown-interpretation-system-ignored",
        ),
        pytest.param(
            CODE["magnesium"],
            quantity(0.8, "mmol/L"),
            (V3_INTERPRETATION, "A"),
            None,
            "magnesium",
            "normal",
            "default",
            id="abnormal-flag-is-no-band",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(3.2, 5.0, "mmol/L"),
            "potassium",
            "normal",
            "reference-range",
            id="range-beats-default",
        ),
        pytest.param(
            CODE["tsh"],
            quantity(4.2, "m[IU]/L"),
            None,
            ref_range(0.4, 4.0, "m[IU]/L"),
            "tsh",
            "high",
            "reference-range",
            id="range-high",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.6, "mmol/L"),
            None,
            ref_range(3.8, None, "mmol/L"),
            "potassium",
            "low",
            "reference-range",
            id="range-low-bound-only",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(3.2, 5.0, None),
            "potassium",
            "normal",
            "reference-range",
            id="unitless-range-taken-in-value-unit",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(13.0, 20.0, "mg/dL"),
            "potassium",
            "low",
            "default",
            id="range-in-other-unit-ignored",
        ),
        pytest.param(
            CODE["calcium-total"],
            quantity(2.1, "mmol/L"),
            None,
            ref_range(8.0, 10.5, "mg/dL"),
            "calcium-total",
            "low",
            "default",
            id="mg-dl-range-for-mmol-value-ignored",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(0, 0, "mmol/L"),
            "potassium",
            "low",
            "default",
            id="zero-zero-range-ignored",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.6, "mmol/L"),
            None,
            ref_range(0, 0, "mmol/L"),
            "potassium",
            "normal",
            "default",
            id="zero-zero-range-ignored-normal",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(5.0, 3.0, "mmol/L"),
            "potassium",
            "low",
            "default",
            id="inverted-range-ignored",
        ),
        pytest.param(
            CODE["potassium"],
            quantity(3.4, "mmol/L"),
            None,
            ref_range(3.0, 3.0, "mmol/L"),
            "potassium",
            "low",
            "default",
            id="low-equals-high-range-ignored",
        ),
        pytest.param(
            CODE["vitamin-d-25oh"],
            quantity(25, "ng/mL"),
            None,
            None,
            "vitamin-d-25oh",
            "low",
            "default",
            id="default-when-nothing-else",
        ),
    ],
)
def test_band_precedence(
    evaluator: Evaluator,
    loinc: str,
    value: dict[str, Any],
    interpretation: tuple[str, str] | None,
    rng: dict[str, Any] | None,
    analyte: str,
    band: str,
    basis: str,
) -> None:
    obs = observation(loinc, value, interpretation=interpretation, reference_range=rng)
    lab = run(evaluator, bundle(obs)).record.labs[analyte]
    assert (lab.band, lab.basis) == (band, basis)


def test_non_normal_range_type_is_not_used(evaluator: Evaluator) -> None:
    rng = ref_range(3.2, 5.0, "mmol/L") | {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
                    "code": "therapeutic",
                }
            ]
        }
    }
    lab = run(evaluator, bundle(observation(CODE["potassium"], quantity(3.4, "mmol/L"), reference_range=rng)))
    assert (lab.record.labs["potassium"].band, lab.record.labs["potassium"].basis) == ("low", "default")


def test_interpretation_low_above_default_cut_off_gives_mildest_grade(evaluator: Evaluator) -> None:
    obs = observation(CODE["vitamin-d-25oh"], quantity(32, "ng/mL"), interpretation=(V3_INTERPRETATION, "L"))
    lab = run(evaluator, bundle(obs)).record.labs["vitamin-d-25oh"]
    assert (lab.band, lab.grade, lab.basis) == ("low", "insufficient", "interpretation")


# --- recency ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "counted"),
    [
        pytest.param("final", True, id="final"),
        pytest.param("amended", True, id="amended"),
        pytest.param("corrected", True, id="corrected"),
        pytest.param("preliminary", False, id="preliminary"),
        pytest.param("registered", False, id="registered"),
        pytest.param("cancelled", False, id="cancelled"),
        pytest.param("entered-in-error", False, id="entered-in-error"),
        pytest.param("unknown", False, id="unknown"),
    ],
)
def test_observation_status_filter(evaluator: Evaluator, status: str, counted: bool) -> None:
    result = run(evaluator, bundle(observation(CODE["magnesium"], quantity(0.6, "mmol/L"), status=status)))
    assert ("magnesium" in result.record.labs) is counted
    assert bool(notes_about(result, f"status {status}")) is not counted


@pytest.mark.parametrize(
    ("when", "recent"),
    [
        pytest.param({"effectiveDateTime": months_ago(12)}, True, id="exactly-12-months-recent"),
        pytest.param(
            {"effectiveDateTime": months_ago(12, days=1)}, False, id="12-months-and-a-day-not-recent"
        ),
        pytest.param(
            {"effectiveDateTime": subtract_months(NOW, 12).date().isoformat()},
            True,
            id="date-only-12-months-recent",
        ),
        pytest.param({"effectiveDateTime": months_ago(11)}, True, id="11-months"),
        pytest.param({"effectiveDateTime": months_ago(13)}, False, id="13-months"),
        pytest.param({"effectiveDateTime": "2026-05"}, True, id="partial-year-month"),
        pytest.param({"effectiveDateTime": "2025"}, False, id="partial-year-start-too-old"),
        pytest.param({"effectiveInstant": months_ago(2)}, True, id="effective-instant"),
        pytest.param(
            {"effectivePeriod": {"start": months_ago(14), "end": months_ago(2)}}, True, id="period-end-counts"
        ),
        pytest.param({"effectivePeriod": {"start": months_ago(2)}}, True, id="period-start-only"),
        pytest.param(
            {"effectivePeriod": {"start": months_ago(15), "end": months_ago(13)}}, False, id="old-period"
        ),
        pytest.param({"issued": months_ago(2)}, True, id="issued-when-no-effective"),
        pytest.param(
            {"effectiveDateTime": months_ago(14), "issued": months_ago(1)},
            False,
            id="effective-wins-over-issued",
        ),
    ],
)
def test_recency_window(evaluator: Evaluator, when: dict[str, Any], recent: bool) -> None:
    result = run(evaluator, bundle(observation(CODE["magnesium"], quantity(0.6, "mmol/L"), when=when)))
    assert ("magnesium" in result.record.labs) is recent


def test_recency_boundary_on_the_case_runner_clock(evaluator: Evaluator) -> None:
    """At `--now 2026-06-01` (end of that UTC day) a result of 2025-06-01 is recent, 2025-05-31 is not."""
    now = datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=UTC)
    inside = observation(
        CODE["tsh"], quantity(9, "m[IU]/L"), oid="in", when={"effectiveDateTime": "2025-06-01"}
    )
    outside = observation(
        CODE["magnesium"],
        quantity(0.5, "mmol/L"),
        oid="out",
        when={"effectiveDateTime": "2025-05-31T23:59:59Z"},
    )
    labs = run(evaluator, bundle(inside, outside), now=now).record.labs
    assert set(labs) == {"tsh"}


@pytest.mark.parametrize("reverse", [False, True], ids=["older-first", "newer-first"])
def test_latest_result_per_analyte_wins(evaluator: Evaluator, reverse: bool) -> None:
    older_low = observation(
        CODE["magnesium"], quantity(0.5, "mmol/L"), oid="older", when={"effectiveDateTime": months_ago(6)}
    )
    newer_normal = observation(
        CODE["magnesium"], quantity(2.0, "mg/dL"), oid="newer", when={"effectiveDateTime": months_ago(1)}
    )
    pair = [older_low, newer_normal][::-1] if reverse else [older_low, newer_normal]
    lab = run(evaluator, bundle(*pair)).record.labs["magnesium"]
    assert (lab.ref, lab.band) == ("Observation/newer", "normal")


def test_latest_by_issued_when_no_effective_time(evaluator: Evaluator) -> None:
    first = observation(CODE["tsh"], quantity(9, "m[IU]/L"), oid="a", when={"issued": months_ago(3)})
    second = observation(CODE["tsh"], quantity(2, "m[IU]/L"), oid="b", when={"issued": months_ago(2)})
    assert run(evaluator, bundle(second, first)).record.labs["tsh"].ref == "Observation/b"


def test_results_for_different_codes_of_one_analyte_compete(evaluator: Evaluator) -> None:
    mass = observation(
        CODE["calcium-total"], quantity(8.0, "mg/dL"), oid="mass", when={"effectiveDateTime": months_ago(4)}
    )
    molar = observation(
        CODE["calcium-molar"], quantity(2.4, "mmol/L"), oid="molar", when={"effectiveDateTime": months_ago(2)}
    )
    lab = run(evaluator, bundle(mass, molar)).record.labs["calcium-total"]
    assert (lab.ref, lab.band) == ("Observation/molar", "normal")


def test_future_dated_result_ignored_with_note(evaluator: Evaluator) -> None:
    future = observation(
        CODE["magnesium"],
        quantity(0.5, "mmol/L"),
        oid="future",
        when={"effectiveDateTime": (NOW + timedelta(days=3)).isoformat()},
    )
    older = observation(
        CODE["magnesium"], quantity(0.9, "mmol/L"), oid="older", when={"effectiveDateTime": months_ago(2)}
    )
    result = run(evaluator, bundle(future, older))
    assert result.record.labs["magnesium"].ref == "Observation/older"
    assert any("after the evaluation time" in n for n in notes_about(result, "Observation/future"))


def test_result_dated_today_in_the_evaluation_zone_counts(evaluator: Evaluator) -> None:
    """A date-only result from the evaluation day (local date in Auckland) is not in the future.

    CAUTION: NOW is 2026-06-01 21:30 in Auckland but 09:30 UTC; a FHIR date has no zone.
    """
    morning = datetime(2026, 6, 1, 8, 0, tzinfo=NOW.tzinfo)  # 2026-05-31 20:00 UTC
    obs = observation(
        CODE["tsh"], quantity(9, "m[IU]/L"), oid="today", when={"effectiveDateTime": "2026-06-01"}
    )
    result = run(evaluator, bundle(obs), now=morning)
    assert "tsh" in result.record.labs, result.notes


def test_result_without_any_date_noted(evaluator: Evaluator) -> None:
    result = run(
        evaluator, bundle(observation(CODE["magnesium"], quantity(0.5, "mmol/L"), oid="undated", when={}))
    )
    assert "magnesium" not in result.record.labs
    assert any("no effective or issued time" in n for n in notes_about(result, "Observation/undated"))


# --- patient selection -----------------------------------------------------------------------------


def _with_subject(reference: str) -> dict[str, Any]:
    return observation(CODE["tsh"], quantity(9, "m[IU]/L"), subject={"reference": reference})


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param(PATIENT_URL, id="urn-uuid"),
        pytest.param("Patient/p1", id="relative"),
        pytest.param("https://ehr.example.org/fhir/Patient/p1", id="absolute"),
        pytest.param("https://ehr.example.org/fhir/Patient/p1/_history/3", id="absolute-history"),
    ],
)
def test_resources_about_the_patient_are_read(evaluator: Evaluator, reference: str) -> None:
    result = run(evaluator, bundle(_with_subject(reference)))
    assert result.record.patient_key == "Patient/p1"
    assert result.record.labs["tsh"].band == "high"


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("Patient/someone-else", id="other-id"),
        pytest.param("urn:uuid:22222222-2222-4222-8222-222222222222", id="other-urn"),
    ],
)
def test_resources_about_another_patient_ignored_with_note(evaluator: Evaluator, reference: str) -> None:
    result = run(evaluator, bundle(_with_subject(reference)))
    assert "tsh" not in result.record.labs
    assert any("another patient" in n for n in notes_about(result, "Observation/obs-1"))


def test_resource_without_subject_ignored_with_note(evaluator: Evaluator) -> None:
    obs = _with_subject(PATIENT_URL)
    del obs["subject"]
    result = run(evaluator, bundle(obs))
    assert "tsh" not in result.record.labs
    assert any("no subject" in n for n in notes_about(result, "Observation/obs-1"))


@pytest.mark.parametrize("name", ["observation-example-f205-egfr.json", "servicerequest-example-ft4.json"])
def test_shared_other_patient_resources_never_counted(evaluator: Evaluator, name: str) -> None:
    root = shared_examples()
    me = json.loads((root / "resources" / "patient-example.json").read_text(encoding="utf-8"))
    other = json.loads((root / "other-patient" / name).read_text(encoding="utf-8"))
    document = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": me}, {"resource": other}],
    }
    result = run(evaluator, document)
    assert result.record.patient_key == "Patient/example"
    assert result.record.labs == {}
    label = f"{other['resourceType']}/{other['id']}"
    assert all(label not in refs for refs in result.facts.evidence.values())
    assert any(other["resourceType"] in n for n in result.notes)
    if other["resourceType"] == "Observation":
        assert any("another patient" in n for n in notes_about(result, label))


def test_two_patients_in_one_bundle_refused(evaluator: Evaluator) -> None:
    document = bundle(patient(pid="p2"))
    with pytest.raises(PatientError) as caught:
        run(evaluator, document)
    assert caught.value.resource == "Patient/p2"
    assert "2 Patient resources" in str(caught.value)


def test_bundle_without_patient_uses_the_single_subject(evaluator: Evaluator) -> None:
    obs = observation(CODE["tsh"], quantity(9, "m[IU]/L"), subject={"reference": "Patient/only"})
    document = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": obs}]}
    result = run(evaluator, document)
    assert result.record.patient_key == "Patient/only"
    assert result.record.age is None
    assert result.record.labs["tsh"].band == "high"


def test_bundle_without_patient_and_two_subjects_refused(evaluator: Evaluator) -> None:
    a = observation(CODE["tsh"], quantity(9, "m[IU]/L"), oid="a", subject={"reference": "Patient/one"})
    b = observation(CODE["tsh"], quantity(2, "m[IU]/L"), oid="b", subject={"reference": "Patient/two"})
    document = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": a}, {"resource": b}]}
    with pytest.raises(PatientError):
        run(evaluator, document)


def test_ghp_bundle_without_patient_reads_its_subject(evaluator: Evaluator) -> None:
    path = shared_examples() / "bundles" / "diagnosticreport-example-ghp.json"
    result = run(evaluator, json.loads(path.read_text(encoding="utf-8")))
    assert result.record.patient_key == "Patient/pat2"


@pytest.mark.parametrize(
    ("birth", "age"),
    [
        pytest.param("1981-06-01", 45, id="45th-birthday-today"),
        pytest.param("1981-06-02", 44, id="45th-birthday-tomorrow"),
        # A partial date gives the certain age: the youngest possible (born on its last day).
        pytest.param("1980", 45, id="year-only-45-or-46"),
        pytest.param("1981", 44, id="year-only-44-or-45"),
        pytest.param("1981-07", 44, id="year-month"),
        pytest.param("1981-05", 45, id="year-month-before-birthday"),
        pytest.param(None, None, id="no-birth-date"),
    ],
)
def test_age_from_birth_date(evaluator: Evaluator, birth: str | None, age: int | None) -> None:
    result = run(evaluator, bundle(cramps(2), with_patient=patient(birth=birth)))
    assert result.record.age == age
    older = "finding.older-adult" in result.fired
    assert older is (age is not None and age >= 45)


PREGNANCY_CASES = [
    (
        "status-observation-positive",
        [observation(CODE["pregnancy-status"], coded="77386006", when={"effectiveDateTime": months_ago(2)})],
        True,
    ),
    (
        "status-observation-negative",
        [observation(CODE["pregnancy-status"], coded="60001007", when={"effectiveDateTime": months_ago(2)})],
        False,
    ),
    (
        "status-observation-11-months-old",
        [observation(CODE["pregnancy-status"], coded="77386006", when={"effectiveDateTime": months_ago(11)})],
        False,
    ),
    ("condition-onset-3-months", [condition(SNOMED, "77386006", onset=months_ago(3))], True),
    ("condition-onset-10-months", [condition(SNOMED, "72892002", onset=months_ago(10))], True),
    ("stale-condition-30-months", [condition(SNOMED, "77386006", onset=months_ago(30))], False),
    ("condition-without-onset", [condition(SNOMED, "77386006")], False),
    ("resolved-condition", [condition(SNOMED, "77386006", onset=months_ago(3), clinical="resolved")], False),
    ("icd-z34-prefix", [condition("http://hl7.org/fhir/sid/icd-10-cm", "Z34.00", onset=months_ago(2))], True),
    (
        "answer-yes",
        [
            questionnaire_response(
                [item("cramp-frequency", valueInteger=2), item("pregnant", valueBoolean=True)]
            )
        ],
        True,
    ),
    (
        "answer-no",
        [
            questionnaire_response(
                [item("cramp-frequency", valueInteger=2), item("pregnant", valueBoolean=False)]
            )
        ],
        False,
    ),
]


@pytest.mark.parametrize(("resources", "pregnant"), [pytest.param(r, p, id=i) for i, r, p in PREGNANCY_CASES])
def test_pregnancy_sources(evaluator: Evaluator, resources: list[dict[str, Any]], pregnant: bool) -> None:
    extra = [] if any(r["resourceType"] == "QuestionnaireResponse" for r in resources) else [cramps(2)]
    result = run(evaluator, bundle(*resources, *extra, with_patient=patient(birth="1996-01-01")))
    fired = any(rule.startswith("finding.pregnant.") for rule in result.fired)
    assert fired is pregnant
    seek_care = [c for c in result.cards if c["source"]["topic"]["code"] == "seek-care"]
    assert bool(seek_care) is pregnant


# --- questionnaire answers --------------------------------------------------------------------------

Y_N = "http://terminology.hl7.org/CodeSystem/v2-0136"


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([item("numbness-tingling", valueBoolean=True)], True, id="top-level-boolean"),
        pytest.param(
            [
                {
                    "linkId": "g1",
                    "item": [
                        {
                            "linkId": "g2",
                            "item": [
                                {"linkId": "g3", "item": [item("numbness-tingling", valueBoolean=True)]}
                            ],
                        }
                    ],
                }
            ],
            True,
            id="three-groups-deep",
        ),
        pytest.param(
            [
                {
                    "linkId": "taking-calcium",
                    "answer": [
                        {"valueBoolean": True, "item": [item("numbness-tingling", valueBoolean=False)]}
                    ],
                }
            ],
            False,
            id="nested-under-answer-item",
        ),
        pytest.param(
            [item("numbness-tingling", valueCoding={"system": Y_N, "code": "Y"})], True, id="v2-0136-Y"
        ),
        pytest.param(
            [item("numbness-tingling", valueCoding={"system": Y_N, "code": "N"})], False, id="v2-0136-N"
        ),
        pytest.param(
            [item("numbness-tingling", valueCoding={"system": SNOMED, "code": "373066001"})],
            True,
            id="snomed-yes",
        ),
        pytest.param(
            [item("numbness-tingling", valueCoding={"system": SNOMED, "code": "373067005"})],
            False,
            id="snomed-no",
        ),
    ],
)
def test_yes_no_answers_at_any_depth(
    evaluator: Evaluator, items: list[dict[str, Any]], expected: bool
) -> None:
    qr = questionnaire_response([item("cramp-frequency", valueInteger=1), *items])
    answers = run(evaluator, bundle(qr)).record.answers
    assert answers["numbness-tingling"].value is expected
    assert answers["numbness-tingling"].ref == "QuestionnaireResponse/qr-1"


@pytest.mark.parametrize(
    ("answer", "note"),
    [
        pytest.param({"valueCoding": {"system": Y_N, "code": "NA"}}, True, id="v2-0136-not-applicable"),
        pytest.param(
            {"valueCoding": {"system": "http://example.org/yn", "code": "Y"}}, True, id="unknown-system"
        ),
        pytest.param({"valueString": "yes"}, True, id="string"),
    ],
)
def test_unreadable_yes_no_answer_noted(evaluator: Evaluator, answer: dict[str, Any], note: bool) -> None:
    qr = questionnaire_response(
        [item("cramp-frequency", valueInteger=1), {"linkId": "numbness-tingling", "answer": [answer]}]
    )
    result = run(evaluator, bundle(qr))
    assert "numbness-tingling" not in result.record.answers
    assert (
        bool([n for n in notes_about(result, "numbness-tingling") if "QuestionnaireResponse/qr-1" in n])
        is note
    )


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        pytest.param({"valueInteger": 3}, 3, id="integer"),
        pytest.param({"valueInteger": 0}, 0, id="zero"),
        pytest.param({"valueDecimal": 4.0}, 4, id="whole-decimal"),
        pytest.param({"valueDecimal": 2.5}, None, id="fractional-decimal"),
        pytest.param({"valueInteger": -1}, None, id="negative"),
        pytest.param({"valueString": "often"}, None, id="string"),
        pytest.param({"valueBoolean": True}, None, id="boolean"),
    ],
)
def test_cramp_frequency_must_be_a_count(
    evaluator: Evaluator, answer: dict[str, Any], value: int | None
) -> None:
    result = run(
        evaluator, bundle(questionnaire_response([{"linkId": "cramp-frequency", "answer": [answer]}]))
    )
    got = result.record.answers.get("cramp-frequency")
    assert (got.value if got else None) == value
    noted = [
        n for n in notes_about(result, "cramp-frequency") if "not a integer" in n or "not an integer" in n
    ]
    assert bool(noted) is (value is None)


def test_latest_completed_or_amended_response_wins(evaluator: Evaluator) -> None:
    old = questionnaire_response([item("cramp-frequency", valueInteger=5)], qid="old", authored=months_ago(3))
    amended = questionnaire_response(
        [item("cramp-frequency", valueInteger=1)], qid="amended", status="amended", authored=months_ago(1)
    )
    draft = questionnaire_response(
        [item("cramp-frequency", valueInteger=9)],
        qid="draft",
        status="in-progress",
        authored=months_ago(0, days=1),
    )
    stopped = questionnaire_response(
        [item("cramp-frequency", valueInteger=8)],
        qid="stopped",
        status="stopped",
        authored=months_ago(0, days=2),
    )
    answers = run(evaluator, bundle(draft, old, stopped, amended)).record.answers
    assert (answers["cramp-frequency"].value, answers["cramp-frequency"].ref) == (
        1,
        "QuestionnaireResponse/amended",
    )


def test_newest_answer_per_item_wins(evaluator: Evaluator) -> None:
    """Per item the newest answer in its window counts (issue 8 class 7); an item the newest response
    leaves unanswered keeps its older answer (pregnant: 3 months old, inside its 10-month window)."""
    old = questionnaire_response(
        [item("cramp-frequency", valueInteger=5), item("pregnant", valueBoolean=True)],
        qid="old",
        authored=months_ago(3),
    )
    new = questionnaire_response([item("cramp-frequency", valueInteger=2)], qid="new", authored=months_ago(1))
    answers = run(evaluator, bundle(old, new)).record.answers
    assert (answers["cramp-frequency"].value, answers["cramp-frequency"].ref) == (
        2,
        "QuestionnaireResponse/new",
    )
    assert (answers["pregnant"].value, answers["pregnant"].ref) == (True, "QuestionnaireResponse/old")


def test_in_progress_response_alone_gives_no_answers(evaluator: Evaluator) -> None:
    draft = questionnaire_response([item("cramp-frequency", valueInteger=3)], status="in-progress")
    result = run(evaluator, bundle(draft))
    assert result.record.answers == {}
    assert result.cards == []


def test_response_to_another_questionnaire_ignored_with_note(evaluator: Evaluator) -> None:
    phq = questionnaire_response(
        [item("/44250-9", valueCoding={"system": LOINC, "code": "LA6568-5"})],
        qid="phq",
        questionnaire="http://hl7.org/fhir/us/core/Questionnaire/phq-9-example",
    )
    result = run(evaluator, bundle(phq, cramps(2)))
    assert [n for n in notes_about(result, "QuestionnaireResponse/phq") if "another questionnaire" in n]
    assert result.record.answers["cramp-frequency"].ref == "QuestionnaireResponse/qr-cramps"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(QUESTIONNAIRE, id="canonical"),
        pytest.param(QUESTIONNAIRE + "|1.0.0", id="versioned"),
        pytest.param(QUESTIONNAIRE + "|2.0.0", id="other-version"),
    ],
)
def test_response_accepted_by_canonical_url(evaluator: Evaluator, url: str) -> None:
    qr = questionnaire_response([item("cramp-frequency", valueInteger=2)], questionnaire=url)
    assert run(evaluator, bundle(qr)).record.answers["cramp-frequency"].value == 2


def test_other_questionnaire_sharing_our_link_ids_is_never_read(evaluator: Evaluator) -> None:
    """Issue 8 class 11: a newer response to another questionnaire that shares linkIds must not replace ours."""
    ours = questionnaire_response(
        [item("cramp-frequency", valueInteger=2)], qid="ours", authored=months_ago(1)
    )
    other = questionnaire_response(
        [item("pregnant", valueBoolean=False), item("cramp-frequency", valueInteger=0)],
        qid="other",
        questionnaire="http://other.example.org/Questionnaire/copy",
        authored=months_ago(0),
    )
    result = run(evaluator, bundle(ours, other))
    assert result.record.answers["cramp-frequency"].ref == "QuestionnaireResponse/ours"
    assert "pregnant" not in result.record.answers
    assert [n for n in notes_about(result, "QuestionnaireResponse/other") if "another questionnaire" in n]


def test_pack_questionnaire_url_is_the_one_used_here(evaluator: Evaluator) -> None:
    assert evaluator.pack.questionnaire_url == QUESTIONNAIRE


# --- medications -------------------------------------------------------------------------------------


def med_request(
    concept: dict[str, Any] | None = None, *, mid: str = "med-1", status: str = "active", **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "subject": SUBJECT,
    }
    if concept is not None:
        resource["medicationCodeableConcept"] = concept
    resource.update(extra)
    return resource


def med_statement(concept: dict[str, Any], *, mid: str = "stmt-1", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": mid,
        "status": status,
        "medicationCodeableConcept": concept,
        "subject": SUBJECT,
    }


def rx(code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": RXNORM, "code": code} | ({"display": display} if display else {})
    return {"coding": [coding]}


@pytest.mark.parametrize(
    ("resource", "group"),
    [
        pytest.param(med_request(rx("7646")), "ppi", id="ingredient-omeprazole"),
        pytest.param(med_request(rx("40790")), "ppi", id="ingredient-pantoprazole"),
        pytest.param(med_request(rx("4278")), "h2-blocker", id="ingredient-famotidine"),
        pytest.param(med_request(rx("4603")), "loop-diuretic", id="ingredient-furosemide"),
        pytest.param(med_request(rx("5487")), "thiazide-diuretic", id="ingredient-hctz"),
        pytest.param(
            med_request(rx("316049", "Hydrochlorothiazide 25 MG")), "thiazide-diuretic", id="product-hctz-25"
        ),
        pytest.param(med_request(rx("476872")), "h2-blocker", id="product-nizatidine-solution"),
        pytest.param(
            med_request({"text": "Omeprazole 20 mg delayed-release capsule"}), "ppi", id="text-only"
        ),
        pytest.param(
            med_request(
                {
                    "coding": [
                        {"system": "http://example.org/local", "code": "X1", "display": "FUROSEMIDE 40MG TAB"}
                    ]
                }
            ),
            "loop-diuretic",
            id="local-code-display",
        ),
        pytest.param(med_request(rx("1897")), "calcium-supplement", id="calcium-carbonate"),
        pytest.param(med_statement(rx("7646")), "ppi", id="statement-active"),
    ],
)
def test_active_medication_matched(evaluator: Evaluator, resource: dict[str, Any], group: str) -> None:
    meds = run(evaluator, bundle(resource)).record.medications
    assert [(m.group, m.ref) for m in meds] == [(group, f"{resource['resourceType']}/{resource['id']}")]


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(med_request(rx("7646"), status="stopped"), id="request-stopped"),
        pytest.param(med_request(rx("7646"), status="completed"), id="request-completed"),
        pytest.param(med_request(rx("7646"), status="cancelled"), id="request-cancelled"),
        pytest.param(med_request(rx("7646"), status="entered-in-error"), id="request-entered-in-error"),
        pytest.param(med_request(rx("7646"), status="on-hold"), id="request-on-hold"),
        pytest.param(med_statement(rx("7646"), status="stopped"), id="statement-stopped"),
        pytest.param(med_statement(rx("7646"), status="completed"), id="statement-completed"),
        pytest.param(med_statement(rx("7646"), status="not-taken"), id="statement-not-taken"),
        pytest.param(med_request({"text": "Omeprazolex 20 mg"}), id="text-must-match-whole-word"),
        pytest.param(med_request(rx("197361", "Amlodipine 5 MG")), id="unrelated-drug"),
    ],
)
def test_inactive_or_unrelated_medication_not_counted(evaluator: Evaluator, resource: dict[str, Any]) -> None:
    assert run(evaluator, bundle(resource)).record.medications == []


def medication(mid: str = "omeprazole-20") -> dict[str, Any]:
    return {"resourceType": "Medication", "id": mid, "code": rx("7646", "omeprazole")}


def test_medication_reference_by_full_url(evaluator: Evaluator) -> None:
    document = bundle(medication())
    med_url = document["entry"][1]["fullUrl"]
    document["entry"].append(
        {
            "fullUrl": "urn:uuid:11111111-1111-4111-8111-000000000099",
            "resource": med_request(medicationReference={"reference": med_url}),
        }
    )
    meds = run(evaluator, document).record.medications
    assert [(m.group, m.ref) for m in meds] == [("ppi", "MedicationRequest/med-1")]


def test_medication_reference_by_type_and_id(evaluator: Evaluator) -> None:
    document = bundle(
        medication(), med_request(medicationReference={"reference": "Medication/omeprazole-20"})
    )
    meds = run(evaluator, document).record.medications
    assert [(m.group, m.ref) for m in meds] == [("ppi", "MedicationRequest/med-1")]


def test_contained_medication(evaluator: Evaluator) -> None:
    resource = med_request(contained=[medication("m")], medicationReference={"reference": "#m"})
    meds = run(evaluator, bundle(resource)).record.medications
    assert [(m.group, m.ref) for m in meds] == [("ppi", "MedicationRequest/med-1")]


def test_missing_medication_falls_back_to_display_with_note(evaluator: Evaluator) -> None:
    resource = med_request(
        medicationReference={"reference": "Medication/absent", "display": "Pantoprazole 40 mg"}
    )
    result = run(evaluator, bundle(resource))
    assert [m.group for m in result.record.medications] == ["ppi"]
    assert any("not in the submission" in n for n in notes_about(result, "MedicationRequest/med-1"))


def test_unreferenced_medication_resource_is_noted(evaluator: Evaluator) -> None:
    """A Medication that no order or statement points to is not patient data: accepted, ignored, announced."""
    result = run(evaluator, bundle(medication("lonely")))
    assert result.record.medications == []
    assert notes_about(result, "Medication/lonely")


# --- conditions ---------------------------------------------------------------------------------------

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.mark.parametrize(
    ("system", "code", "group"),
    [
        pytest.param(SNOMED, "55300003", "cramp", id="cramp-snomed"),
        pytest.param(ICD10, "R25.2", "cramp", id="cramp-icd"),
        pytest.param(ICD10, "E03.9", "hypothyroidism", id="hypothyroidism-E03.9"),
        pytest.param(ICD10, "E039", "hypothyroidism", id="hypothyroidism-undotted"),
        pytest.param(ICD10, "N18.31", "ckd", id="ckd-N18.31"),
        pytest.param(ICD10, "K90.0", "ibd-coeliac", id="coeliac-K90.0"),
        pytest.param(ICD10, "K76.9", "liver-disease", id="liver-K76.9"),
        pytest.param(SNOMED, "431855005", "ckd", id="ckd-stage-1"),
    ],
)
def test_condition_value_sets(evaluator: Evaluator, system: str, code: str, group: str) -> None:
    conditions = run(evaluator, bundle(condition(system, code))).record.conditions
    assert [c.group for c in conditions] == [group]


@pytest.mark.parametrize(
    ("system", "code"),
    [
        pytest.param(ICD10, "K90.1", id="K90.1-tropical-sprue-not-coeliac"),
        pytest.param(ICD10, "E04.9", id="goitre-not-hypothyroidism"),
        pytest.param(ICD10, "N17.9", id="acute-kidney-failure-not-ckd"),
        pytest.param(SNOMED, "E03.9", id="icd-code-under-snomed-system"),
        pytest.param(ICD10, "55300003", id="snomed-code-under-icd-system"),
    ],
)
def test_condition_outside_value_sets(evaluator: Evaluator, system: str, code: str) -> None:
    assert run(evaluator, bundle(condition(system, code))).record.conditions == []


@pytest.mark.parametrize("clinical", ["resolved", "inactive", "remission"])
def test_inactive_condition_not_counted(evaluator: Evaluator, clinical: str) -> None:
    assert run(evaluator, bundle(condition(SNOMED, "55300003", clinical=clinical))).record.conditions == []


def test_refuted_condition_not_counted(evaluator: Evaluator) -> None:
    cond = condition(SNOMED, "55300003")
    cond["verificationStatus"] = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "refuted"}
        ]
    }
    assert run(evaluator, bundle(cond)).record.conditions == []
