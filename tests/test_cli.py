"""The real `cds` console script, run as a subprocess: evaluate, bad input, rules check and rules test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, RULES, load_fixture
from tests.support.cli import cds

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
CAUSE_TOPICS = {
    "calcium-absorption",
    "magnesium-deficiency",
    "vitamin-d-deficiency",
    "poor-circulation",
    "neuromuscular",
    "seek-care",
}


def topics_of(stdout: str) -> list[str]:
    return sorted(card["source"]["topic"]["code"] for card in json.loads(stdout)["cards"])


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize("item", MANIFEST, ids=[i["file"].removesuffix(".json") for i in MANIFEST])
def test_evaluate_fixture_topics_match_manifest(item: dict[str, Any]) -> None:
    done = cds("evaluate", "--now", item["now"], FIXTURES / item["file"])
    assert done.returncode == 0, done.stderr
    assert topics_of(done.stdout) == sorted(item["expect_topics"])


def test_evaluate_without_now_uses_the_clock() -> None:
    done = cds("evaluate", FIXTURES / "workup.json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"cards"}


def test_evaluate_accepts_a_full_iso_now() -> None:
    done = cds("evaluate", "--now", "2026-06-01T12:00:00+12:00", FIXTURES / "neuromuscular.json")
    assert done.returncode == 0, done.stderr
    assert topics_of(done.stdout) == ["lifestyle", "medication-safety", "neuromuscular"]


def test_calcium_order_check_service_shows_causes_only() -> None:
    done = cds(
        "evaluate",
        "--now",
        "2026-06-01",
        "--service",
        "calcium-order-check",
        FIXTURES / "order-sign-request.json",
    )
    assert done.returncode == 0, done.stderr
    topics = topics_of(done.stdout)
    assert topics == ["calcium-absorption", "magnesium-deficiency", "seek-care", "vitamin-d-deficiency"]
    assert set(topics) <= CAUSE_TOPICS


def test_service_takes_only_its_own_hook_request() -> None:
    """A Bundle is not a hook request: `--service` answers as POST /cds-services/ID does (400 -> exit 2)."""
    done = cds(
        "evaluate", "--now", "2026-06-01", "--service", "calcium-order-check", FIXTURES / "workup.json"
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "hook: must be a non-empty string" in done.stderr


def test_unknown_service_refused() -> None:
    done = cds("evaluate", "--service", "nope", FIXTURES / "workup.json")
    assert done.returncode == 2
    assert "nope" in done.stderr


def test_notes_go_to_stderr_and_stdout_stays_json(tmp_path: Path) -> None:
    bundle = load_fixture("workup.json")
    bundle["entry"].append({"resource": {"resourceType": "Procedure", "id": "x", "status": "completed"}})
    done = cds("evaluate", "--now", "2026-06-01", write(tmp_path, "b.json", bundle))
    assert done.returncode == 0, done.stderr
    [note] = [line for line in done.stderr.splitlines() if "Procedure" in line]
    assert note.startswith("cds: note: not read by the rules, ignored:")
    assert topics_of(done.stdout) == ["lifestyle", "workup"]


def invalid_observation() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "abc",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
                    "subject": {"reference": "Patient/p1"},
                    "effectiveDateTime": "2026-05-01",
                    "valueQuantity": {"value": "abc", "unit": "mmol/L"},
                }
            },
        ],
    }


def hook_without(key: str) -> dict[str, Any]:
    request = load_fixture("hook-request.json")
    del request["prefetch"][key]
    return request


BAD_INPUTS = [
    pytest.param("broken.json", "{not json", ["not valid JSON"], id="not-json"),
    pytest.param("empty.json", "", ["not valid JSON"], id="empty-file"),
    pytest.param(
        "patient.json", {"resourceType": "Patient", "id": "p1"}, ["Bundle", "got Patient"], id="bare-patient"
    ),
    pytest.param("list.json", [1, 2, 3], ["Bundle"], id="json-list"),
    pytest.param(
        "doc.json",
        {"resourceType": "Bundle", "type": "document", "entry": []},
        ["Bundle.type"],
        id="document-bundle",
    ),
    pytest.param(
        "invalid.json", invalid_observation(), ["Observation/abc", "valueQuantity.value"], id="invalid-fhir"
    ),
    pytest.param(
        "hook.json", hook_without("conditions"), ["prefetch.conditions"], id="hook-missing-conditions"
    ),
    pytest.param(
        "hook2.json",
        hook_without("questionnaireResponses"),
        ["prefetch.questionnaireResponses"],
        id="hook-missing-answers",
    ),
    pytest.param(
        "hook3.json",
        load_fixture("hook-request.json") | {"context": {"userId": "Practitioner/1"}},
        ["context.patientId"],
        id="hook-without-patient-id",
    ),
    pytest.param(
        "two.json",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "a"}},
                {"resource": {"resourceType": "Patient", "id": "b"}},
            ],
        },
        ["Patient/b", "2 Patient resources"],
        id="two-patients",
    ),
]


@pytest.mark.parametrize(("name", "content", "mentions"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_paragraph(
    tmp_path: Path, name: str, content: Any, mentions: list[str]
) -> None:
    path = write(tmp_path, name, content)
    done = cds("evaluate", "--now", "2026-06-01", path)
    assert done.returncode == 2
    assert done.stdout == ""
    message = done.stderr.strip()
    assert message.startswith("cds: error: ")
    assert "\n\n" not in message
    assert name in message
    for text in mentions:
        assert text in message


def test_missing_file_exits_2(tmp_path: Path) -> None:
    done = cds("evaluate", tmp_path / "absent.json")
    assert done.returncode == 2
    assert "absent.json" in done.stderr


def test_bad_now_exits_2() -> None:
    done = cds("evaluate", "--now", "01/06/2026", FIXTURES / "workup.json")
    assert done.returncode == 2
    assert "--now" in done.stderr


# --- rules check / rules test -----------------------------------------------------------------------


def test_rules_check_passes() -> None:
    done = cds("rules", "check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("OK")


def test_rules_test_passes() -> None:
    done = cds("rules", "test")
    assert done.returncode == 0, done.stdout
    assert "FAIL" not in done.stdout
    passed, total = done.stdout.strip().splitlines()[-1].split(" rule cases")[0].split(" of ")
    assert passed == total
    assert int(total) > 100


def rules_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "rules"
    shutil.copytree(RULES, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_rules_test_fails_on_a_broken_case(tmp_path: Path) -> None:
    rules = rules_copy(tmp_path)
    edit(
        rules / "topics" / "vitamin-d-deficiency.yaml",
        "labs: {vitamin-d-25oh: 20}}, expect: silent}",
        "labs: {vitamin-d-25oh: 20}}, expect: fires}",
    )
    assert cds("rules", "check", "--rules", rules).returncode == 0
    done = cds("rules", "test", "--rules", rules)
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert failures == [
        "FAIL vitamin-d-deficiency.deficient::silent-at-20-ng-ml: expected it to fire, but it stayed silent"
    ]


@pytest.mark.parametrize(
    ("file", "old", "new", "field"),
    [
        pytest.param(
            "analytes.yaml",
            "display: Magnesium\n  unit: mmol/L\n  recent_months: 12",
            "display: Magnesium\n  unit: mmol/L\n  recent_months: twelve",
            "recent_months",
            id="analyte-months-not-a-number",
        ),
        pytest.param(
            "topics/lifestyle.yaml",
            "indicator: info\n",
            "indicator: info\n    colour: blue\n",
            "colour",
            id="unknown-rule-field",
        ),
        pytest.param(
            "topics/lifestyle.yaml",
            "indicator: info\n",
            "indicator: urgent\n",
            "indicator",
            id="indicator-not-in-list",
        ),
        pytest.param(
            "orders.yaml",
            "label: Order TSH\n",
            "labl: Order TSH\n",
            "label",
            id="order-missing-label",
        ),
    ],
)
def test_rules_check_names_file_and_field(tmp_path: Path, file: str, old: str, new: str, field: str) -> None:
    rules = rules_copy(tmp_path)
    edit(rules / file, old, new)
    done = cds("rules", "check", "--rules", rules)
    assert done.returncode == 2
    assert f"rules/{file}" in done.stderr
    assert field in done.stderr
