"""The example patients in fixtures/: each produces exactly the topics its manifest entry lists."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from typing import Any

import pytest

from cds.evaluation import Evaluator
from cds.hooks import evaluate_document
from tests.conftest import FIXTURES, load_fixture

MANIFEST: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
BY_FILE = {item["file"]: item for item in MANIFEST}


def end_of(day: str) -> datetime:
    """The CLI's reading of `--now YYYY-MM-DD`: the end of that UTC day."""
    return datetime.combine(datetime.fromisoformat(day).date(), time.max, tzinfo=UTC)


def test_manifest_lists_every_fixture_file() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.json")} - {"manifest.json"}
    assert set(BY_FILE) == on_disk
    assert len(BY_FILE) == len(MANIFEST)


@pytest.mark.parametrize("name", sorted(BY_FILE), ids=lambda n: n.removesuffix(".json"))
def test_fixture_topics_exactly_as_expected(evaluator: Evaluator, name: str) -> None:
    item = BY_FILE[name]
    # As `cds evaluate` and POST /evaluate answer it: a hook request as the service for its hook.
    result = evaluate_document(
        load_fixture(name), evaluator=evaluator, now=end_of(item["now"]), base_url="http://127.0.0.1:8000"
    )
    topics = [card["source"]["topic"]["code"] for card in result.cards]
    assert sorted(topics) == sorted(item["expect_topics"])
    assert len(topics) == len(set(topics))


@pytest.mark.parametrize("name", sorted(BY_FILE), ids=lambda n: n.removesuffix(".json"))
def test_fixture_reads_without_surprises(evaluator: Evaluator, name: str) -> None:
    """Hand-written fixtures use only what the rules read: nothing about another patient or unusable."""
    item = BY_FILE[name]
    result = evaluator.evaluate_document(load_fixture(name), now=end_of(item["now"]))
    assert result.record.patient_key is not None
    assert result.record.age is not None
    expected = item.get("expect_notes", [])  # a fixture that shows an unusable result says so
    surprising = [
        n
        for n in result.notes
        if ("another patient" in n or "not usable" in n or "not understood" in n)
        and not any(words in n for words in expected)
    ]
    assert surprising == []


@pytest.mark.parametrize(
    ("name", "analyte", "band", "grade"),
    [
        pytest.param("vitamin-d-deficiency.json", "vitamin-d-25oh", "low", "deficient", id="vitamin-d-14"),
        pytest.param("magnesium-deficiency.json", "magnesium", "low", None, id="magnesium-1.4-mg-dl"),
        pytest.param("neuromuscular.json", "tsh", "high", None, id="tsh-8.2"),
        pytest.param("neuromuscular.json", "free-t4", "low", None, id="free-t4-0.74"),
        pytest.param("seek-care-pregnant.json", "pregnancy-status", "positive", None, id="pregnant-status"),
        pytest.param("hook-request.json", "bmi", "high", "obese", id="bmi-31.2"),
        pytest.param("hook-request.json", "egfr", "low", None, id="egfr-48"),
    ],
)
def test_fixture_key_readings(
    evaluator: Evaluator, name: str, analyte: str, band: str, grade: str | None
) -> None:
    item = BY_FILE[name]
    lab = evaluator.evaluate_document(load_fixture(name), now=end_of(item["now"])).record.labs[analyte]
    assert (lab.band, lab.grade) == (band, grade)


def test_magnesium_fixture_newer_result_supersedes_older(evaluator: Evaluator) -> None:
    result = evaluator.evaluate_document(load_fixture("magnesium-deficiency.json"), now=end_of("2026-06-01"))
    lab = result.record.labs["magnesium"]
    assert lab.when.year == 2026
    assert lab.value == 0.58  # 1.4 mg/dL x 0.4114 = 0.576, at the reporting precision (2 decimals)
