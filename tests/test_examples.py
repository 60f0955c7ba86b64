"""Real, public FHIR R4 examples (US Core, the FHIR spec, Synthea) from ../shared/fhir-examples.

Read in place and never copied; every test skips when the folder is absent (a fresh clone).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluation, Evaluator
from tests.conftest import FROZEN_NOW, SHARED_EXAMPLES, shared_examples
from tests.support.cli import cds

QUESTIONNAIRE = "https://cramp-cds.example.org/fhir/Questionnaire/cramp-assessment"


def names(folder: str) -> list[str]:
    """File names for parametrize; one placeholder when the folder is absent (the test then skips)."""
    directory = SHARED_EXAMPLES / folder
    found = sorted(p.name for p in directory.glob("*.json")) if directory.is_dir() else []
    return found or ["(absent)"]


def read(folder: str, name: str) -> Any:
    return json.loads((shared_examples() / folder / name).read_text(encoding="utf-8"))


def wrap(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def patient_example() -> dict[str, Any]:
    return read("resources", "patient-example.json")


def cramps_for(subject: str, per_week: int = 2) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "test-cramps",
        "questionnaire": QUESTIONNAIRE,
        "status": "completed",
        "subject": {"reference": subject},
        "authored": "2026-05-30T10:00:00Z",
        "item": [{"linkId": "cramp-frequency", "answer": [{"valueInteger": per_week}]}],
    }


def evidence_refs(result: Evaluation) -> set[str]:
    return {
        ref
        for card in result.cards
        for entry in card["extension"]["cramp-cds-explanation"]["rules"]
        for ref in entry["evidence"]
    }


# --- everything passes through `cds evaluate` --------------------------------------------------------


@pytest.mark.parametrize("now", [["--now", "2026-06-01"], []], ids=["now-2026-06-01", "default-now"])
@pytest.mark.parametrize("name", names("bundles"))
def test_bundle_evaluates_with_exit_0(name: str, now: list[str]) -> None:
    path = shared_examples() / "bundles" / name
    done = cds("evaluate", *now, path)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"cards"}


@pytest.mark.parametrize("name", names("resources"))
def test_resource_wrapped_with_patient_evaluates_with_exit_0(tmp_path: Path, name: str) -> None:
    resource = read("resources", name)
    bundle = wrap(patient_example()) if name == "patient-example.json" else wrap(patient_example(), resource)
    path = tmp_path / name
    path.write_text(json.dumps(bundle), encoding="utf-8")
    done = cds("evaluate", "--now", "2026-06-01", path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cards": []}  # no cramp context in any of them


@pytest.mark.parametrize("name", names("other-patient"))
def test_other_patient_file_evaluates_with_exit_0(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(wrap(patient_example(), read("other-patient", name))), encoding="utf-8")
    done = cds("evaluate", "--now", "2026-06-01", path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "mentions"),
    [
        pytest.param("Questionnaire-phq-9-example.json", "1 Questionnaire", id="questionnaire"),
        pytest.param("uscore-med2.json", "Medication/uscore-med2", id="medication"),
        pytest.param(
            "QuestionnaireResponse-phq-9-example.json",
            "QuestionnaireResponse/phq-9-example",
            id="phq-9-answers",
        ),
        pytest.param("servicerequest-bmp.json", "1 ServiceRequest", id="service-request"),
        pytest.param("diagnosticreport-metabolic-panel.json", "1 DiagnosticReport", id="diagnostic-report"),
    ],
)
def test_non_patient_data_accepted_and_ignored_with_note(
    evaluator: Evaluator, name: str, mentions: str
) -> None:
    result = evaluator.evaluate_document(wrap(patient_example(), read("resources", name)), now=FROZEN_NOW)
    assert [n for n in result.notes if mentions in n and "ignored" in n]
    assert result.record.answers == {}
    assert result.record.medications == []


@pytest.mark.parametrize("name", names("other-patient"))
def test_other_patient_resources_never_counted(evaluator: Evaluator, name: str) -> None:
    other = read("other-patient", name)
    label = f"{other['resourceType']}/{other['id']}"
    document = wrap(patient_example(), other, cramps_for("Patient/example"))
    result = evaluator.evaluate_document(document, now=FROZEN_NOW)
    assert result.cards, "cramp context given, so cards are issued"
    assert label not in evidence_refs(result)
    assert all(label not in refs for refs in result.facts.evidence.values())
    assert result.record.labs == {}
    assert [n for n in result.notes if other["resourceType"] in n and "ignored" in n]


def test_other_patient_egfr_note_names_it(evaluator: Evaluator) -> None:
    document = wrap(patient_example(), read("other-patient", "observation-example-f205-egfr.json"))
    result = evaluator.evaluate_document(document, now=datetime(2013, 5, 1, tzinfo=UTC))
    assert "Observation/f205 is about another patient; ignored" in result.notes
    assert "egfr" not in result.record.labs


# --- real readings ---------------------------------------------------------------------------------

JULY_2005 = datetime(2005, 7, 6, 12, tzinfo=UTC)  # the day after the US Core metabolic panel


@pytest.mark.parametrize(
    ("name", "analyte", "value", "band", "basis"),
    [
        pytest.param(
            "observation-serum-calcium.json",
            "calcium-total",
            7.7,
            "low",
            "interpretation",
            id="calcium-7.7-flag-L",
        ),
        pytest.param(
            "observation-serum-potassium.json",
            "potassium",
            5.4,
            "normal",
            "interpretation",
            id="potassium-5.4-flag-N",
        ),
        pytest.param(
            "observation-serum-sodium.json",
            "sodium",
            137.0,
            "normal",
            "interpretation",
            id="sodium-137-flag-N",
        ),
    ],
)
def test_us_core_lab_readings(
    evaluator: Evaluator, name: str, analyte: str, value: float, band: str, basis: str
) -> None:
    result = evaluator.evaluate_document(wrap(patient_example(), read("resources", name)), now=JULY_2005)
    lab = result.record.labs[analyte]
    assert (lab.value, lab.band, lab.basis) == (pytest.approx(value), band, basis)


def test_us_core_potassium_range_alone_says_normal(evaluator: Evaluator) -> None:
    potassium = read("resources", "observation-serum-potassium.json")
    del potassium["interpretation"]
    result = evaluator.evaluate_document(wrap(patient_example(), potassium), now=JULY_2005)
    lab = result.record.labs["potassium"]
    assert (lab.band, lab.basis) == ("normal", "reference-range")


def test_us_core_labs_are_not_recent_in_2026(evaluator: Evaluator) -> None:
    calcium = read("resources", "observation-serum-calcium.json")
    result = evaluator.evaluate_document(wrap(patient_example(), calcium), now=FROZEN_NOW)
    assert result.record.labs == {}


def test_us_core_pregnancy_status_counts_only_while_recent(evaluator: Evaluator) -> None:
    status = read("resources", "observation-pregnancy-status.json")
    document = wrap(patient_example(), status, cramps_for("Patient/example"))
    soon = evaluator.evaluate_document(document, now=datetime(2022, 9, 1, tzinfo=UTC))
    assert soon.record.labs["pregnancy-status"].band == "positive"
    assert "finding.pregnant.status-observation" in soon.fired
    later = evaluator.evaluate_document(document, now=FROZEN_NOW)
    assert "pregnancy-status" not in later.record.labs
    assert not any(rule.startswith("finding.pregnant.") for rule in later.fired)


def test_us_core_nizatidine_order_is_an_h2_blocker(evaluator: Evaluator) -> None:
    order = read("resources", "medicationrequest-coded-oral-axid.json")
    result = evaluator.evaluate_document(
        wrap(patient_example(), order, cramps_for("Patient/example")), now=FROZEN_NOW
    )
    assert [(m.group, m.ref) for m in result.record.medications] == [
        ("h2-blocker", "MedicationRequest/medicationrequest-coded-oral-axid")
    ]
    assert "calcium-absorption" in [c["source"]["topic"]["code"] for c in result.cards]


def ghp_dated() -> dict[str, Any]:
    """The FHIR spec's ghp lab report with each result given the report's effective time.

    The Observations carry no date of their own; the DiagnosticReport says when they were taken.
    """
    bundle = copy.deepcopy(read("bundles", "diagnosticreport-example-ghp.json"))
    report = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["effectiveDateTime"] = report["effectiveDateTime"]
    return bundle


def test_ghp_si_calcium_converted_to_mg_dl(evaluator: Evaluator) -> None:
    result = evaluator.evaluate_document(ghp_dated(), now=datetime(2015, 9, 1, tzinfo=UTC))
    calcium = result.record.labs["calcium-total"]
    assert calcium.ref == "Observation/o17"
    assert calcium.value == 9.54  # 2.38 x 4.008 = 9.539, at the reporting precision (2 decimals)
    assert calcium.unit == "mg/dL"
    assert (calcium.band, calcium.basis) == ("normal", "reference-range")
    assert "from 2.38 mmol/L" in calcium.display
    assert (result.record.labs["potassium"].value, result.record.labs["potassium"].band) == (4.2, "normal")
    assert (result.record.labs["sodium"].value, result.record.labs["sodium"].band) == (140.0, "normal")


def test_ghp_undated_results_are_noted_not_counted(evaluator: Evaluator) -> None:
    result = evaluator.evaluate_document(read("bundles", "diagnosticreport-example-ghp.json"), now=FROZEN_NOW)
    assert result.record.patient_key == "Patient/pat2"
    assert result.record.labs == {}
    for key in ("Observation/o1", "Observation/o2", "Observation/o17"):
        assert f"{key} has no effective or issued time; not counted as recent" in result.notes


ALMEDA = "Almeda_Conn_67e13ece-8aed-46fa-ab6c-673137d5460e.json"


def almeda_with_cramps() -> dict[str, Any]:
    bundle = copy.deepcopy(read("bundles", ALMEDA))
    me = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    bundle["entry"].append({"resource": cramps_for(me["fullUrl"])})
    return bundle


def test_almeda_conn_1990_pregnancy_is_not_pregnant_now(evaluator: Evaluator) -> None:
    result = evaluator.evaluate_document(almeda_with_cramps(), now=FROZEN_NOW)
    assert not any(rule.startswith("finding.pregnant.") for rule in result.fired)
    assert result.record.age == 83
    seek_care = next(c for c in result.cards if c["source"]["topic"]["code"] == "seek-care")
    assert "pregnan" not in seek_care["summary"].lower()
    assert {e["rule"] for e in seek_care["extension"]["cramp-cds-explanation"]["rules"]} == {
        "seek-care.recurrent-older-adult"
    }


def test_almeda_conn_active_pregnancy_condition_stale_even_when_coded_pregnant(evaluator: Evaluator) -> None:
    bundle = almeda_with_cramps()
    tubal = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Condition"
        and e["resource"]["code"]["coding"][0]["code"] == "79586000"
    )
    assert tubal["clinicalStatus"]["coding"][0]["code"] == "active"
    tubal["code"]["coding"][0]["code"] = "77386006"  # a code in the pregnancy value set
    result = evaluator.evaluate_document(bundle, now=FROZEN_NOW)
    hits = [c for c in result.record.conditions if c.group == "pregnancy"]
    assert hits
    assert all(c.onset_months is not None and c.onset_months > 400 for c in hits)
    assert not any(rule.startswith("finding.pregnant.") for rule in result.fired)


@pytest.mark.parametrize("name", [n for n in names("bundles") if n != "diagnosticreport-example-ghp.json"])
def test_synthea_bundle_reads_one_patient(evaluator: Evaluator, name: str) -> None:
    bundle = read("bundles", name)
    [patient] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    result = evaluator.evaluate_document(bundle, now=FROZEN_NOW)
    assert result.record.patient_key == f"Patient/{patient['resource']['id']}"
    assert result.record.age is not None
    assert not [n for n in result.notes if "another patient" in n]
