"""`cds synth`: a deterministic Bulk Data export with new ids, resolvable references and the pack's data."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from cds.rulepack import RulePack
from cds.synth import load_templates, write_export
from tests.conftest import FIXTURES, shared_examples
from tests.support.cli import cds


def lines_of(folder: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".gz"):
            out[path.name] = gzip.decompress(path.read_bytes())
        else:
            out[path.name] = path.read_bytes()
    return out


def resources_of(folder: Path) -> list[dict]:
    found = []
    for name, data in lines_of(folder).items():
        if name != "manifest.json":
            found.extend(json.loads(line) for line in data.splitlines())
    return found


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, pack: RulePack) -> None:
    templates = load_templates(FIXTURES)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_export(
            tmp_path / name, patients=25, seed=seed, pack=pack, templates=templates, source="fixtures"
        )
    assert lines_of(tmp_path / "a") == lines_of(tmp_path / "b")
    assert lines_of(tmp_path / "a") != lines_of(tmp_path / "c")


def test_fixture_templates_give_new_ids_and_references_that_resolve(tmp_path: Path, pack: RulePack) -> None:
    templates = load_templates(FIXTURES)
    assert len(templates) >= 10  # every fixture Bundle with one Patient; hook requests are not Bundles
    write_export(
        tmp_path, patients=40, seed=2, pack=pack, templates=templates, source="fixtures", background=-1
    )
    resources = resources_of(tmp_path)
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources]
    assert len(keys) == len(set(keys)), "ids are unique"
    patients = {k for k in keys if k.startswith("Patient/")}
    assert len(patients) == 40
    fixture_ids = {
        e["resource"].get("id")
        for p in FIXTURES.glob("*.json")
        if p.name != "manifest.json"
        for e in json.loads(p.read_text()).get("entry", [])
    }
    assert not fixture_ids & {r["id"] for r in resources}, "no id is copied from a template"
    for resource in resources:
        subject = resource.get("subject", {}).get("reference")
        if subject is not None:
            assert subject in patients, subject
        medication = resource.get("medicationReference", {}).get("reference")
        if medication is not None:
            assert medication in keys


def test_the_pack_data_occurs_with_missing_rates(tmp_path: Path, pack: RulePack) -> None:
    write_export(
        tmp_path,
        patients=300,
        seed=3,
        pack=pack,
        templates=load_templates(FIXTURES),
        source="f",
        background=0,
    )
    resources = resources_of(tmp_path)
    by_analyte: Counter[str] = Counter()
    for r in resources:
        if r["resourceType"] == "Observation":
            code = r["code"]["coding"][0]
            by_analyte[pack.analyte_by_code.get((code["system"], code["code"]), "other")] += 1
    for analyte in ("vitamin-d-25oh", "magnesium", "tsh", "potassium", "sodium"):
        # present for some patients, missing for others
        assert 0.2 * 300 < by_analyte[analyte] < 0.8 * 300, (analyte, by_analyte[analyte])
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["QuestionnaireResponse"] > 100
    assert kinds["MedicationRequest"] + kinds["MedicationStatement"] > 200
    assert kinds["Medication"] > 0  # some orders refer to a Medication resource


def test_lines_are_shuffled_within_a_type(tmp_path: Path, pack: RulePack) -> None:
    write_export(
        tmp_path, patients=60, seed=4, pack=pack, templates=load_templates(FIXTURES), source="f", background=0
    )
    order = [
        json.loads(line)["subject"]["reference"]
        for line in (tmp_path / "Observation.ndjson").read_text().splitlines()
    ]
    runs = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert runs > len(order) / 2, "one patient's results are not written together"


def test_cli_writes_gzipped_numbered_files_and_a_manifest(tmp_path: Path) -> None:
    done = cds(
        "synth",
        "--patients",
        "12",
        "--seed",
        "9",
        "--gzip",
        "--files-per-type",
        "2",
        "--templates",
        FIXTURES,
        tmp_path / "out",
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["request"] == "cds synth --patients 12 --seed 9"
    for entry in manifest["output"]:
        path = tmp_path / "out" / entry["url"]
        assert path.name.endswith(f".{entry['type']}.ndjson.gz") or path.name == f"{entry['type']}.ndjson.gz"
        assert len(gzip.decompress(path.read_bytes()).splitlines()) == entry["count"]
    assert sum(e["count"] for e in manifest["output"] if e["type"] == "Patient") == 12


def test_synthea_templates_are_read_at_run_time(tmp_path: Path, pack: RulePack) -> None:
    bundles = shared_examples() / "bundles"
    templates = load_templates(bundles)
    assert len(templates) == 5  # the five Synthea patients; the lab report Bundle has no Patient
    write_export(
        tmp_path, patients=5, seed=1, pack=pack, templates=templates, source="synthea", background=30
    )
    resources = resources_of(tmp_path)
    assert Counter(r["resourceType"] for r in resources)["Patient"] == 5
    text = b"".join(lines_of(tmp_path).values())
    for template in templates:
        assert str(template.patient["id"]).encode() not in text
        for name in template.patient.get("name", []):
            assert name["family"].encode() not in text


def test_cli_refuses_a_folder_without_templates(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = cds("synth", "--patients", "1", "--templates", tmp_path / "empty", tmp_path / "out")
    assert done.returncode == 2
    assert "no Bundle with exactly one Patient" in done.stderr


@pytest.mark.parametrize("value", ["2026-13-01", "soon"])
def test_cli_refuses_a_bad_as_of(tmp_path: Path, value: str) -> None:
    done = cds("synth", "--patients", "1", "--as-of", value, tmp_path / "out")
    assert done.returncode == 2
    assert "--as-of" in done.stderr
