"""The hazard log: every hazard names rules and cases that exist, and a broken link stops the check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.errors import RulePackError
from cds.hazards import HAZARDS_FILE, hazards_by_rule, load_hazards
from cds.rulepack import RulePack
from tests.conftest import RULES


def _hazard_file(tmp_path: Path, change: Any) -> Path:
    data = yaml.safe_load((RULES / HAZARDS_FILE).read_text(encoding="utf-8"))
    change(data["hazards"][0])
    path = tmp_path / HAZARDS_FILE
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_log_loads_and_links_every_hazard(pack: RulePack) -> None:
    log = load_hazards(pack)
    assert len(log.hazards) >= 1
    cases = {f"{r.id}::{c.id}" for r in pack.rules_by_id.values() for c in r.cases}
    for hazard in log.hazards:
        rules = {r for control in hazard.controls for r in control.rules}
        assert rules, hazard.id
        assert rules <= set(pack.rules_by_id), hazard.id
        assert hazard.cases, hazard.id
        assert set(hazard.cases) <= cases, hazard.id
        assert hazard.initial_risk == log.risk(hazard.severity, hazard.likelihood), hazard.id


def test_hazards_by_rule_points_back(pack: RulePack) -> None:
    log = load_hazards(pack)
    index = hazards_by_rule(log)
    first = log.hazards[0]
    for rule in first.controls[0].rules:
        assert first in index[rule]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda h: h.update(controls=[]), "hazards.0.controls", "at least 1"),
        (lambda h: h["controls"][0].update(rules=[]), "hazards.0.controls.0.rules", "at least 1"),
        (
            lambda h: h["controls"][0]["rules"].append("no-such.rule"),
            "hazards.0.controls.0.rules.",
            "'no-such.rule', which is not in the pack",
        ),
        (lambda h: h.update(cases=[]), "hazards.0.cases", "at least 1"),
        (lambda h: h.pop("cases"), "hazards.0.cases", "Field required"),
        (
            lambda h: h["cases"].append("lifestyle.always::no-such-case"),
            "hazards.0.cases.",
            "which is not in the pack",
        ),
        (
            lambda h: h["cases"].append("lifestyle.always::fires-with-cramps"),
            "hazards.0.cases.",
            "belongs to no mitigating rule",
        ),
        (
            lambda h: h.update(initial_risk=5 if h["initial_risk"] != 5 else 1),
            "hazards.0.initial_risk",
            "matrix",
        ),
        (lambda h: h.update(severity="awful"), "hazards.0.severity", "unknown severity"),
    ],
    ids=[
        "no-controls",
        "control-without-rules",
        "unknown-rule",
        "no-cases",
        "cases-missing",
        "unknown-case",
        "case-of-another-rule",
        "risk-not-from-matrix",
        "unknown-severity",
    ],
)
def test_a_broken_hazard_is_an_error_naming_the_field(
    pack: RulePack, tmp_path: Path, change: Any, field: str, words: str
) -> None:
    path = _hazard_file(tmp_path, change)
    with pytest.raises(RulePackError) as caught:
        load_hazards(pack, path)
    assert caught.value.field is not None
    assert caught.value.field.startswith(field), caught.value
    assert words in str(caught.value)
    assert caught.value.resource == f"{RULES.name}/{HAZARDS_FILE}"
