"""`cds screen`: the worklist of a Bulk Data export agrees with `cds evaluate` of each patient's Bundle;
errors are rows naming line, resource and field; outputs, progress, and the work folder."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle

from cds.cli import main, parse_now
from cds.evaluation import Evaluator
from cds.hooks import NOTICE_TOPIC, evaluate_document
from cds.rulepack import RulePack, load_rule_pack
from cds.synth import load_templates, write_export
from tests.conftest import FIXTURES, RULES, SHARED_EXAMPLES
from tests.support.cli import cds

NOW = "2026-06-01"


def templates_dir() -> Path:
    bundles = SHARED_EXAMPLES / "bundles"
    return bundles if bundles.is_dir() else FIXTURES


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    pack = load_rule_pack(RULES)
    write_export(
        folder,
        patients=80,
        seed=11,
        pack=pack,
        templates=load_templates(templates_dir()),
        source="test",
        background=20,
    )
    return folder


def screen(*args: str | Path) -> Any:
    result = CliRunner().invoke(main, ["screen", *map(str, args)], catch_exceptions=False)
    return result


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def patient_bundles(export: Path) -> dict[str, dict[str, Any]]:
    """Each patient's resources as a collection Bundle, grouped here independently of cds.screen."""
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    medications = {}
    for path in sorted(export.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            kind = resource["resourceType"]
            if kind == "Patient":
                by_patient[resource["id"]].append(resource)
            elif kind == "Medication":
                medications[f"Medication/{resource['id']}"] = resource
            elif resource.get("subject", {}).get("reference", "").startswith("Patient/"):
                by_patient[resource["subject"]["reference"].removeprefix("Patient/")].append(resource)
    bundles = {}
    for pid, resources in by_patient.items():
        refs = {r.get("medicationReference", {}).get("reference") for r in resources}
        extra = [m for key, m in medications.items() if key in refs]
        bundles[pid] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                for r in resources + extra
            ],
        }
    return bundles


def cards_row_of(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "topics": [c["source"]["topic"]["code"] for c in cards],
        "indicators": {c["source"]["topic"]["code"]: c["indicator"] for c in cards},
        "codes": [
            a["resource"]["code"]["coding"][0]["code"]
            for c in cards
            for s in c.get("suggestions", [])
            for a in s["actions"]
        ],
    }


def test_worklist_equals_evaluating_each_patients_bundle(
    export: Path, tmp_path: Path, pack: RulePack
) -> None:
    """Every patient through the Bundle path of `cds evaluate` (the same Evaluator call, without
    reloading the pack 80 times), and the first ten through the `cds evaluate` command itself."""
    out = tmp_path / "worklist.ndjson"
    result = screen(export, "--now", NOW, "--out", out, "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = {row["patient"]: row for row in read_ndjson(out)}
    assert not [r for r in rows.values() if "error" in r]
    bundles = patient_bundles(export)
    assert len(bundles) == 80
    evaluator = Evaluator(pack)
    now = parse_now(NOW)
    runner = CliRunner()
    for index, (pid, bundle) in enumerate(sorted(bundles.items())):
        if index < 10:
            path = tmp_path / f"{pid}.json"
            path.write_text(json.dumps(bundle))
            done = runner.invoke(main, ["evaluate", "--now", NOW, str(path)], catch_exceptions=False)
            assert done.exit_code == 0, done.output
            cards = json.loads(done.stdout)["cards"]
        else:
            cards = evaluate_document(bundle, evaluator=evaluator, now=now, base_url="http://x").cards
        if not cards:
            assert pid not in rows, pid
            continue
        row = rows.pop(pid)
        expected = cards_row_of(cards)
        assert row["topics"] == expected["topics"], pid
        assert row["indicators"] == expected["indicators"], pid
        assert [t["code"] for t in row["tests"]] == expected["codes"], pid
    assert not rows, "every row is a patient with cards"
    assert "patients read: 80" in result.stderr


def test_every_topic_occurs_and_the_summary_counts_them(tmp_path: Path, pack: RulePack) -> None:
    write_export(
        tmp_path / "export",
        patients=400,
        seed=12,
        pack=pack,
        templates=load_templates(FIXTURES),
        source="test",
        background=0,
    )
    out = tmp_path / "w.csv"
    result = screen(tmp_path / "export", "--now", NOW, "--out", out, "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen = {t for row in rows for t in row["topics"].split("; ")}
    assert seen == {*pack.topics, NOTICE_TOPIC}  # every topic, and the notice asking for the questionnaire
    for topic in seen:
        count = sum(topic in row["topics"].split("; ") for row in rows)
        assert f"  {topic}: {count}\n" in result.stderr
    without = 400 - len(rows)
    assert f"with cards: {len(rows)}; without cards: {without}; errors: 0" in result.stderr
    assert all(row["pack_version"] == pack.version for row in rows)
    assert all(row["status"] == "cards" for row in rows)


def test_the_bundle_output_is_valid_fhir_with_draft_requests_and_tasks(export: Path, tmp_path: Path) -> None:
    result = screen(
        export,
        "--now",
        NOW,
        "--out",
        tmp_path / "w.ndjson",
        "--out",
        tmp_path / "w.json",
        "--workers",
        "1",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "w.json").read_text())
    Bundle.model_validate(document)
    rows = read_ndjson(tmp_path / "w.ndjson")
    kinds = [e["resource"]["resourceType"] for e in document["entry"]]
    assert kinds.count("Task") == sum(len(r["topics"]) for r in rows)
    assert kinds.count("ServiceRequest") == sum(len(r["tests"]) for r in rows)
    urls = {e["fullUrl"] for e in document["entry"]}
    for entry in document["entry"]:
        resource = entry["resource"]
        assert resource["status"] == "draft"
        assert resource["intent"] == "proposal"
        assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
        for ref in resource.get("basedOn", []):
            assert ref["reference"] in urls


def test_manifest_gzip_and_numbered_files_give_the_same_worklist(
    export: Path, tmp_path: Path, pack: RulePack
) -> None:
    write_export(
        tmp_path / "gz",
        patients=80,
        seed=11,
        pack=pack,
        templates=load_templates(templates_dir()),
        source="test",
        background=20,
        files_per_type=3,
        compress=True,
    )
    assert any(p.name.startswith("2.") for p in (tmp_path / "gz").iterdir())
    plain = screen(export, "--now", NOW, "--out", tmp_path / "a.csv", "--workers", "1", "--no-progress")
    zipped = screen(
        tmp_path / "gz" / "manifest.json",
        "--now",
        NOW,
        "--out",
        tmp_path / "b.csv",
        "--workers",
        "1",
        "--no-progress",
    )
    assert plain.exit_code == zipped.exit_code == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_a_process_pool_gives_the_same_worklist_byte_for_byte(export: Path, tmp_path: Path) -> None:
    one = screen(export, "--now", NOW, "--out", tmp_path / "a.ndjson", "--workers", "1", "--no-progress")
    two = screen(export, "--now", NOW, "--out", tmp_path / "b.ndjson", "--workers", "2", "--no-progress")
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()
    assert one.stderr == two.stderr


def bad_export(export: Path, tmp_path: Path) -> tuple[Path, str]:
    """The export plus unreadable lines; returns the folder and one patient's id."""
    folder = tmp_path / "bad"
    shutil.copytree(export, folder)
    (folder / "manifest.json").unlink()
    pid = json.loads((folder / "Patient.ndjson").read_text().splitlines()[0])["id"]
    observation = {
        "resourceType": "Observation",
        "id": "bad-value",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-05-01",
        "valueQuantity": {"value": "twelve", "unit": "ng/mL"},
    }
    orphan = {
        "resourceType": "Condition",
        "id": "no-subject",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
    }
    with (folder / "Extra.ndjson").open("w") as handle:
        handle.write('{"resourceType": "Observation", "id": \n')  # line 1: not JSON
        handle.write('{"id": "x"}\n')  # line 2: no resourceType
        handle.write(json.dumps(observation) + "\n")  # line 3: invalid FHIR for a real patient
        handle.write(json.dumps(orphan) + "\n")  # line 4: belongs to no patient
        handle.write("[1, 2]\n")  # line 5: not an object
    data = gzip.compress(b"\n".join(json.dumps(observation | {"id": f"o{i}"}).encode() for i in range(50)))
    (folder / "Broken.ndjson.gz").write_bytes(data[: len(data) // 2])  # a truncated download
    return folder, pid


def test_unreadable_lines_resources_and_patients_are_error_rows(export: Path, tmp_path: Path) -> None:
    folder, pid = bad_export(export, tmp_path)
    out = tmp_path / "w.ndjson"
    result = screen(
        folder, "--now", NOW, "--out", out, "--out", tmp_path / "w.csv", "--workers", "1", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    errors = [r for r in read_ndjson(out) if "error" in r]
    by_where = {e["error"]["where"]: e for e in errors}
    assert by_where["Extra.ndjson:1"]["error"]["message"].startswith("not valid JSON")
    assert by_where["Extra.ndjson:2"]["error"]["field"] == "resourceType"
    assert by_where["Extra.ndjson:4"]["error"]["resource"] == "Condition/no-subject"
    assert by_where["Extra.ndjson:4"]["error"]["field"] == "subject.reference"
    assert by_where["Extra.ndjson:5"]["error"]["message"] == "not a JSON object"
    patient_error = by_where["Extra.ndjson:3"]
    assert patient_error["patient"] == pid
    assert patient_error["error"]["resource"] == "Observation/bad-value"
    assert patient_error["error"]["field"] == "valueQuantity.value"
    broken = [e for e in errors if (e["error"]["where"] or "").startswith("Broken.ndjson.gz")]
    assert len(broken) == 1
    assert "cannot be read after line" in broken[0]["error"]["message"]
    assert f"errors: {len(errors)}" in result.stderr
    with (tmp_path / "w.csv").open(newline="") as handle:
        csv_errors = [r for r in csv.DictReader(handle) if r["status"] == "error"]
    assert {r["error_where"] for r in csv_errors} == set(by_where)
    assert pid not in {r["patient"] for r in read_ndjson(out) if "topics" in r}


def test_a_missing_export_or_a_bad_output_name_exits_2(tmp_path: Path) -> None:
    done = cds("screen", tmp_path / "nothing", "--now", NOW, "--out", tmp_path / "w.csv")
    assert done.returncode == 2
    assert "nothing" in done.stderr
    assert "not a folder" in done.stderr
    (tmp_path / "empty").mkdir()
    done = cds("screen", tmp_path / "empty", "--now", NOW, "--out", tmp_path / "w.csv")
    assert done.returncode == 2
    assert "no .ndjson" in done.stderr
    done = cds("screen", tmp_path / "empty", "--now", NOW, "--out", tmp_path / "w.xlsx")
    assert done.returncode == 2
    assert ".csv, .ndjson or .json" in done.stderr


def test_the_work_folder_is_removed_after_success_unless_kept(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.csv"
    assert screen(export, "--now", NOW, "--out", out, "--workers", "1", "--no-progress").exit_code == 0
    assert not (tmp_path / "w.csv.work").exists()
    result = screen(export, "--now", NOW, "--out", out, "--workers", "1", "--no-progress", "--keep-work")
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "w.csv.work" / "summary.json").read_text())
    assert summary["patients"] == 80
