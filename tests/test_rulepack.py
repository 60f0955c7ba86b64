"""The rule pack: every rule's own cases, the compiled golden file, and load-time errors naming file and field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.cases import all_cases, run_case
from cds.errors import RulePackError
from cds.evaluation import Evaluator
from cds.rulepack import CaseSpec, RulePack, RuleSpec, load_rule_pack
from tests.conftest import RULES

GOLDEN = Path(__file__).parent / "golden" / "compiled-rules.json"
PACK = load_rule_pack(RULES)
CASES = all_cases(PACK)


@pytest.mark.parametrize(("rule", "case"), CASES, ids=[f"{r.id}::{c.id}" for r, c in CASES])
def test_rule_case(evaluator: Evaluator, rule: RuleSpec, case: CaseSpec) -> None:
    result = run_case(evaluator, rule, case)
    assert result.passed, result.message


def test_every_topic_fires_and_stays_silent_in_its_cases(pack: RulePack) -> None:
    for topic in pack.topics.values():
        outcomes = {case.expect for rule in topic.spec.rules for case in rule.cases}
        assert outcomes == {"fires", "silent"}, topic.name


def test_compiled_rules_match_the_golden_file(pack: RulePack) -> None:
    """Regenerate with `make goldens` after a deliberate rule change, and review the diff."""
    golden = json.loads(GOLDEN.read_text())
    compiled = [
        {"id": r.id, "topic": r.topic, "patterns": list(r.patterns), "produces": r.produces}
        for r in pack.compiled
    ]
    assert golden["version"] == pack.version
    assert golden["rules"] == json.loads(json.dumps(compiled))


def test_boundaries_named_in_the_issue_have_cases(pack: RulePack) -> None:
    ids = {f"{r.id}::{c.id}" for r, c in CASES}
    for expected in [
        "vitamin-d-deficiency.deficient::fires-at-19-9-ng-ml",
        "vitamin-d-deficiency.deficient::silent-at-20-ng-ml",
        "vitamin-d-deficiency.insufficient::fires-at-29-9-ng-ml",
        "vitamin-d-deficiency.insufficient::silent-at-30-ng-ml",
        "magnesium-deficiency.low::fires-at-0-69-mmol-l",
        "magnesium-deficiency.low::silent-at-0-70-mmol-l",
        "finding.older-adult::fires-at-45",
        "finding.older-adult::silent-at-44",
        "workup.vitamin-d-untested::silent-with-result-at-12-months",
        "workup.vitamin-d-untested::fires-with-result-at-12-months-and-a-day",
    ]:
        assert expected in ids


def test_thresholds_live_in_the_pack(pack: RulePack) -> None:
    vitamin_d = pack.analytes["vitamin-d-25oh"]
    assert [(t.grade, t.below) for t in vitamin_d.thresholds] == [("deficient", 20), ("insufficient", 30)]
    assert pack.analytes["tsh"].thresholds[0].above == 4.5


def test_questionnaire_link_ids_are_the_contract(pack: RulePack) -> None:
    assert set(pack.question_types) == {
        "cramp-frequency",
        "cramp-nocturnal",
        "cramp-symmetrical",
        "taking-calcium",
        "calcium-with-meals",
        "acid-suppressant",
        "chronic-diarrhea",
        "lactose-intolerance",
        "low-sun-exposure",
        "magnesium-rich-diet",
        "prolonged-sitting-standing",
        "leg-swelling-or-varicose-veins",
        "back-pain-radiating",
        "numbness-tingling",
        "pregnant",
        "persisting-after-lifestyle-changes",
        # Red flags added for issue 8 (additions only: the linkIds above never change).
        "claudication",
        "calf-swelling-one-side",
        "weakness-wasting-fasciculations",
        "perioral-tingling-tetany",
    }
    assert pack.question_types["cramp-frequency"] == "integer"


def test_every_code_says_where_it_was_checked(pack: RulePack) -> None:
    entries = [c for a in pack.analytes.values() for c in a.codes]
    entries += [c for vs in pack.valuesets.conditions.values() for c in vs.codes]
    entries += [c for vs in pack.valuesets.medications.values() for c in vs.codes]
    entries += [o.code for o in pack.orders.values()]
    assert entries
    assert all(e.source in {"V", "C", "U"} and e.checked.strip() for e in entries)


def _edit_yaml(path: Path, change: Callable[[Any], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _set(*keys: Any, value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


BROKEN = [
    pytest.param(
        "topics/lifestyle.yaml",
        _set("rules", 0, "indicator", value="urgent"),
        "topics/lifestyle.yaml",
        "rules.0.indicator",
        id="bad-indicator",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set("rules", 0, "when", 0, "band", value=3),
        "topics/workup.yaml",
        "rules.0.when.1.band",
        id="wrong-type-in-pattern",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set("rules", 0, "when", 0, "analyte", value="vitamin-z"),
        "topics/workup.yaml",
        "rules.0.when.1.analyte",
        id="unknown-analyte",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set("rules", 0, "when", 0, "shoe_size", value=3),
        "topics/workup.yaml",
        "rules.0.when.1.shoe_size",
        id="unknown-field",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set("rules", 0, "when", 0, "band", value={"not": "none"}),
        "topics/workup.yaml",
        "rules.0.when.1.band",
        id="negation-refused",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set("rules", 0, "suggest", value=["x-ray"]),
        "topics/workup.yaml",
        "rules.0.suggest",
        id="unknown-order",
    ),
    pytest.param(
        "topics/workup.yaml",
        _set(
            "rules",
            0,
            "cases",
            value=[{"id": "only-one", "expect": "fires"}, {"id": "again", "expect": "fires"}],
        ),
        "topics/workup.yaml",
        "rules.0.cases",
        id="cases-must-go-both-ways",
    ),
    pytest.param(
        "analytes.yaml",
        _set("tsh", "units", 0, "divide", value=2),
        "analytes.yaml",
        "units.0",
        id="two-factors",
    ),
    pytest.param(
        "findings.yaml",
        _set("rules", 0, "when", 0, "item", value="favourite-colour"),
        "findings.yaml",
        "rules.0.when.0.item",
        id="unknown-question",
    ),
    pytest.param(
        "valuesets.yaml",
        _set("conditions", "cramp", "codes", 0, "source", value="X"),
        "valuesets.yaml",
        "conditions.cramp.codes.0.source",
        id="bad-source-tag",
    ),
    pytest.param("pack.yaml", _set("topics", value=[]), "pack.yaml", "topics", id="no-topics"),
]


@pytest.mark.parametrize(("relative", "change", "file", "field"), BROKEN)
def test_broken_rule_file_names_file_and_field(
    tmp_path: Path, relative: str, change: Callable[[Any], None], file: str, field: str
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    _edit_yaml(rules / relative, change)
    with pytest.raises(RulePackError) as caught:
        load_rule_pack(rules)
    assert caught.value.resource == f"rules/{file}"
    assert caught.value.field == field
    assert f"rules/{file}" in str(caught.value)


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "orders.yaml").write_text("tsh-test: [unclosed\n")
    with pytest.raises(RulePackError, match=r"rules/orders.yaml: not valid YAML"):
        load_rule_pack(rules)
