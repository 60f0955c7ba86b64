"""Lab results (cds/record/labs.py): critical values, the high calcium band, bands at the reporting
precision, and results that cannot be read (issue 8 classes 3, 8 and 9)."""

from __future__ import annotations

from typing import Any

import pytest

from cds.cases import build_case_bundle
from cds.evaluation import Evaluation, Evaluator
from cds.record import LabResult
from tests.conftest import FROZEN_NOW

CRAMPS = {"cramp-frequency": 2}


def evaluate(evaluator: Evaluator, labs: dict[str, Any], **given: Any) -> Evaluation:
    bundle = build_case_bundle(evaluator.pack, {"answers": CRAMPS, "labs": labs, **given}, FROZEN_NOW)
    return evaluator.evaluate_document(bundle, now=FROZEN_NOW)


def lab(evaluator: Evaluator, analyte: str, spec: Any) -> LabResult:
    return evaluate(evaluator, {analyte: spec}).record.labs[analyte]


def lab_fact(result: Evaluation, analyte: str) -> dict[str, Any]:
    return next(f for f in result.facts.facts if f["type"] == "lab" and f["analyte"] == analyte)


# --- critical values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "band"),
    [
        pytest.param("LL", 3.4, "low", id="LL-is-critical-low"),
        pytest.param("HH", 5.0, "high", id="HH-is-critical-high"),
        pytest.param("<", 2.0, "low", id="off-scale-low"),
        pytest.param(">", 9.0, "high", id="off-scale-high"),
        pytest.param("AA", 3.3, "low", id="AA-band-from-the-cut-offs"),
    ],
)
def test_critical_flags_keep_their_direction(
    evaluator: Evaluator, flag: str, value: float, band: str
) -> None:
    result = lab(evaluator, "potassium", {"value": value, "interpretation": flag})
    assert (result.band, result.critical) == (band, True)
    assert "critical" in result.display


@pytest.mark.parametrize(("flag", "band"), [("L", "low"), ("H", "high"), ("LU", "low"), ("N", "normal")])
def test_ordinary_flags_are_not_critical(evaluator: Evaluator, flag: str, band: str) -> None:
    result = lab(evaluator, "potassium", {"value": 4.0, "interpretation": flag})
    assert (result.band, result.critical) == (band, False)


@pytest.mark.parametrize(
    ("analyte", "spec", "band", "critical"),
    [
        # calcium total (mg/dL, and mmol/L converted at the reporting precision of 2 decimals)
        pytest.param("calcium-total", 7.0, "low", True, id="ca-7.0-critical"),
        pytest.param("calcium-total", 7.1, "low", False, id="ca-7.1-low"),
        pytest.param(
            "calcium-total", {"value": 1.74, "unit": "mmol/L"}, "low", True, id="ca-1.74-mmol-critical"
        ),
        pytest.param("calcium-total", {"value": 1.75, "unit": "mmol/L"}, "low", False, id="ca-1.75-mmol-low"),
        pytest.param("calcium-total", 10.5, "normal", False, id="ca-10.5-normal"),
        pytest.param("calcium-total", 10.6, "high", False, id="ca-10.6-high"),
        pytest.param(
            "calcium-total", {"value": 2.62, "unit": "mmol/L"}, "normal", False, id="ca-2.62-mmol-normal"
        ),
        pytest.param(
            "calcium-total", {"value": 2.63, "unit": "mmol/L"}, "high", False, id="ca-2.63-mmol-high"
        ),
        pytest.param("calcium-total", 11.9, "high", False, id="ca-11.9-high"),
        pytest.param("calcium-total", 12.0, "high", True, id="ca-12.0-critical"),
        pytest.param(
            "calcium-total", {"value": 3.0, "unit": "mmol/L"}, "high", True, id="ca-3.0-mmol-critical"
        ),
        # ionized calcium (mmol/L, and mg/dL)
        pytest.param("calcium-ionized", 0.82, "low", True, id="ica-0.82-critical"),
        pytest.param("calcium-ionized", 0.83, "low", False, id="ica-0.83-low"),
        pytest.param("calcium-ionized", 1.32, "normal", False, id="ica-1.32-normal"),
        pytest.param("calcium-ionized", 1.33, "high", False, id="ica-1.33-high"),
        pytest.param(
            "calcium-ionized", {"value": 5.31, "unit": "mg/dL"}, "normal", False, id="ica-5.31-mg-1.32"
        ),
        pytest.param(
            "calcium-ionized", {"value": 5.33, "unit": "mg/dL"}, "high", False, id="ica-5.33-mg-1.33"
        ),
        pytest.param("calcium-ionized", 1.55, "high", True, id="ica-1.55-critical"),
        # magnesium (mmol/L, mg/dL, mEq/L)
        pytest.param("magnesium", 0.49, "low", True, id="mg-0.49-critical"),
        pytest.param("magnesium", 0.50, "low", False, id="mg-0.50-low"),
        pytest.param("magnesium", {"value": 1.2, "unit": "mg/dL"}, "low", True, id="mg-1.2-mg-dl-critical"),
        pytest.param("magnesium", {"value": 1.22, "unit": "mg/dL"}, "low", False, id="mg-1.22-mg-dl-low"),
        pytest.param("magnesium", {"value": 0.98, "unit": "meq/L"}, "low", True, id="mg-0.98-meq-critical"),
        pytest.param("magnesium", 1.9, "high", True, id="mg-1.9-critical-high"),
        pytest.param("magnesium", 1.89, "normal", False, id="mg-1.89-normal"),
        # potassium and sodium: no high band of their own; critical high is still high
        pytest.param("potassium", 2.8, "low", True, id="k-2.8-critical"),
        pytest.param("potassium", 2.9, "low", False, id="k-2.9-low"),
        pytest.param("potassium", 6.1, "normal", False, id="k-6.1-normal"),
        pytest.param("potassium", 6.2, "high", True, id="k-6.2-critical-high"),
        pytest.param("sodium", 120, "low", True, id="na-120-critical"),
        pytest.param("sodium", 121, "low", False, id="na-121-low"),
        pytest.param("sodium", 155, "high", True, id="na-155-critical-high"),
        pytest.param("sodium", 154, "normal", False, id="na-154-normal"),
    ],
)
def test_critical_cut_offs_and_bands(
    evaluator: Evaluator, analyte: str, spec: Any, band: str, critical: bool
) -> None:
    result = evaluate(evaluator, {analyte: spec})
    assert (result.record.labs[analyte].band, result.record.labs[analyte].critical) == (band, critical)
    assert lab_fact(result, analyte)["critical"] is critical


def test_critical_cut_off_wins_over_a_normal_flag(evaluator: Evaluator) -> None:
    """A laboratory that flags potassium 2.5 as N is not believed: beyond a critical cut-off is never normal."""
    result = lab(evaluator, "potassium", {"value": 2.5, "interpretation": "N"})
    assert (result.band, result.critical) == ("low", True)


def test_every_critical_cut_off_names_its_source(evaluator: Evaluator) -> None:
    critical = [t for a in evaluator.pack.analytes.values() for t in a.critical]
    named = {name for name, a in evaluator.pack.analytes.items() if a.critical}
    assert named == {"calcium-total", "calcium-ionized", "magnesium", "potassium", "sodium"}
    assert all(t.source and t.year and t.certainty for t in critical)


# --- reporting precision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("analyte", "spec", "band", "shown"),
    [
        pytest.param("magnesium", {"value": 1.7, "unit": "mg/dL"}, "normal", "0.7 mmol/L", id="mg-1.7-mg-dl"),
        pytest.param("magnesium", {"value": 1.68, "unit": "mg/dL"}, "low", "0.69 mmol/L", id="mg-1.68-mg-dl"),
        pytest.param("magnesium", {"value": 1.4, "unit": "meq/L"}, "normal", "0.7 mmol/L", id="mg-1.4-meq"),
        pytest.param("magnesium", {"value": 1.39, "unit": "meq/L"}, "normal", "0.7 mmol/L", id="mg-1.39-meq"),
        pytest.param("magnesium", {"value": 1.38, "unit": "meq/L"}, "low", "0.69 mmol/L", id="mg-1.38-meq"),
        pytest.param("magnesium", 0.70, "normal", "0.7 mmol/L", id="mg-0.70-mmol"),
        pytest.param("magnesium", 0.69, "low", "0.69 mmol/L", id="mg-0.69-mmol"),
        pytest.param("calcium-total", {"value": 2.12, "unit": "mmol/L"}, "normal", "8.5 mg/dL", id="ca-2.12"),
        pytest.param("calcium-total", {"value": 2.11, "unit": "mmol/L"}, "low", "8.46 mg/dL", id="ca-2.11"),
        pytest.param(
            "calcium-total", {"value": 4.24, "unit": "meq/L"}, "normal", "8.5 mg/dL", id="ca-4.24-meq"
        ),
        pytest.param(
            "calcium-total", {"value": 4.23, "unit": "meq/L"}, "low", "8.48 mg/dL", id="ca-4.23-meq"
        ),
        pytest.param(
            "calcium-ionized", {"value": 4.49, "unit": "mg/dL"}, "normal", "1.12 mmol/L", id="ica-4.49"
        ),
        pytest.param(
            "calcium-ionized", {"value": 4.47, "unit": "mg/dL"}, "normal", "1.12 mmol/L", id="ica-4.47"
        ),
        pytest.param(
            "calcium-ionized", {"value": 4.46, "unit": "mg/dL"}, "low", "1.11 mmol/L", id="ica-4.46"
        ),
        pytest.param(
            "vitamin-d-25oh", {"value": 49.9, "unit": "nmol/L"}, "low", "19.99 ng/mL", id="vitd-49.9"
        ),
        pytest.param(
            "vitamin-d-25oh", {"value": 74.8, "unit": "nmol/L"}, "low", "29.97 ng/mL", id="vitd-74.8"
        ),
        pytest.param("free-t4", {"value": 10.3, "unit": "pmol/L"}, "normal", "0.8 ng/dL", id="ft4-10.3-pmol"),
        pytest.param("free-t4", {"value": 10.2, "unit": "pmol/L"}, "low", "0.79 ng/dL", id="ft4-10.2-pmol"),
    ],
)
def test_bands_at_the_reporting_precision(
    evaluator: Evaluator, analyte: str, spec: Any, band: str, shown: str
) -> None:
    """The band and the number the card shows never disagree: no "0.7 mmol/L (low)" at a 0.70 cut-off."""
    result = lab(evaluator, analyte, spec)
    assert result.band == band
    assert f" {shown}" in result.display
    assert result.display.endswith(f"({result.grade or band})")


def test_vitamin_d_74_9_nmol_is_not_low_at_its_precision(evaluator: Evaluator) -> None:
    """74.9 nmol/L is 30.01 ng/mL: the 30 ng/mL cut-off is 74.88 nmol/L. Listed apart because the
    parametrised row above would hide a wrong expectation: it must be normal."""
    result = lab(evaluator, "vitamin-d-25oh", {"value": 74.9, "unit": "nmol/L"})
    assert result.band == "normal"


def test_units_are_shown_without_ucum_braces(evaluator: Evaluator) -> None:
    result = lab(evaluator, "egfr", 45)
    assert result.display == "eGFR 45 mL/min/1.73 m² (low)"
    assert "{" not in result.display
    assert lab(evaluator, "bmi", 31).display == "BMI 31 kg/m² (obese)"


# --- unreadable results ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        pytest.param({"value": 12, "unit": "mcg/L"}, "unit 'mcg/L' not known", id="unknown-unit"),
        pytest.param({"value": None}, "no value", id="no-value"),
    ],
)
def test_unreadable_latest_result_is_a_fact_with_its_reason(
    evaluator: Evaluator, spec: Any, why: str
) -> None:
    result = evaluate(evaluator, {"vitamin-d-25oh": {**spec, "days_ago": 3}})
    found = result.record.labs["vitamin-d-25oh"]
    assert (found.band, found.why, found.earlier) == ("unreadable", why, False)
    fact = lab_fact(result, "vitamin-d-25oh")
    assert (fact["band"], fact["unreadable"], fact["earlier"]) == ("unreadable", True, False)
    assert why in str(fact["label"])
    assert result.facts.evidence[str(fact["id"])] == ("Observation/lab-0",)


def test_unknown_pregnancy_code_is_unreadable(evaluator: Evaluator) -> None:
    spec = {"coded_as": {"system": "http://snomed.info/sct", "code": "102874004"}, "months_ago": 1}
    found = lab(evaluator, "pregnancy-status", spec)
    assert found.band == "unreadable"


def test_earlier_usable_result_in_the_window_is_used_and_said_to_be_earlier(evaluator: Evaluator) -> None:
    result = evaluate(
        evaluator,
        {"vitamin-d-25oh": [{"value": 12, "unit": "mcg/L", "days_ago": 3}, {"value": 14, "months_ago": 4}]},
    )
    found = result.record.labs["vitamin-d-25oh"]
    assert (found.band, found.grade, found.earlier, found.ref) == (
        "low",
        "deficient",
        True,
        "Observation/lab-1",
    )
    assert found.newer_unreadable is not None
    assert found.newer_unreadable.ref == "Observation/lab-0"
    fact = lab_fact(result, "vitamin-d-25oh")
    assert (fact["band"], fact["unreadable"], fact["earlier"]) == ("low", True, True)
    assert "earlier result" in str(fact["label"])
    assert "could not be read" in str(fact["label"])
    assert result.facts.evidence[str(fact["id"])] == ("Observation/lab-0", "Observation/lab-1")
    assert any("Observation/lab-1" in note and "earlier" in note for note in result.notes)


def test_earlier_result_outside_the_window_is_not_used(evaluator: Evaluator) -> None:
    result = evaluate(
        evaluator,
        {"vitamin-d-25oh": [{"value": 12, "unit": "mcg/L", "days_ago": 3}, {"value": 14, "months_ago": 13}]},
    )
    assert result.record.labs["vitamin-d-25oh"].band == "unreadable"


def test_usable_latest_result_hides_older_unreadable_ones(evaluator: Evaluator) -> None:
    result = evaluate(
        evaluator,
        {"vitamin-d-25oh": [{"value": 35, "days_ago": 3}, {"value": 12, "unit": "mcg/L", "months_ago": 4}]},
    )
    found = result.record.labs["vitamin-d-25oh"]
    assert (found.band, found.earlier, found.newer_unreadable) == ("normal", False, None)
    assert lab_fact(result, "vitamin-d-25oh")["unreadable"] is False


def test_the_tie_key_is_computed_only_for_results_at_the_same_time(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tie key serialises a whole model; results at distinct times never need it (work counted)."""
    import orjson

    from bench.patients import NOW, make_patient
    from cds.intake import load_json
    from cds.record import labs

    calls: list[str] = []
    original = labs._tie_key

    def counting(resource: Any) -> tuple[str, str]:
        calls.append(resource.key)
        return original(resource)

    monkeypatch.setattr(labs, "_tie_key", counting)
    bundle = make_patient(250)  # many results per analyte, in and out of their windows, no two at one time
    evaluator.evaluate_document(load_json(orjson.dumps(bundle)), now=NOW)
    assert calls == []
    # A second result at the very time of the newest vitamin D result: now the tie key decides.
    vitamin_d = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "62292-8"
    ]
    tied = dict(max(vitamin_d, key=lambda r: str(r["effectiveDateTime"])), id="tied-copy")
    bundle["entry"].append({"fullUrl": "urn:uuid:00000000-0000-0000-0000-00000000abcd", "resource": tied})
    evaluator.evaluate_document(load_json(orjson.dumps(bundle)), now=NOW)
    assert len(calls) >= 2
