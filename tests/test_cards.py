"""Cards: CDS Hooks 2.0 shape, explanation and evidence, ServiceRequest suggestions, workup de-duplication."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds.cards import EXPLANATION_KEY
from cds.cases import build_case_bundle
from cds.evaluation import Evaluation, Evaluator
from cds.rulepack import RulePack
from tests.conftest import FIXTURES, FROZEN_NOW, load_fixture

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))

# Built cases that between them make every topic fire, with long evidence lists and many suggestions.
CASES: dict[str, dict[str, Any]] = {
    "everything": {
        "age": 52,
        "answers": {
            "cramp-frequency": 4,
            "cramp-nocturnal": True,
            "cramp-symmetrical": True,
            "low-sun-exposure": True,
            "chronic-diarrhea": True,
            "calcium-with-meals": False,
            "acid-suppressant": True,
            "prolonged-sitting-standing": True,
            "back-pain-radiating": True,
            "numbness-tingling": True,
            "persisting-after-lifestyle-changes": True,
            "pregnant": True,
        },
        "conditions": [
            "ckd",
            "liver-disease",
            "obesity",
            "varicose-veins",
            "peripheral-neuropathy",
            "hypothyroidism",
        ],
        "medications": [
            "ppi",
            "h2-blocker",
            "loop-diuretic",
            {"group": "thiazide-diuretic", "as": "statement"},
        ],
    },
    "all-electrolytes-low": {
        "answers": {"cramp-frequency": 2},
        "labs": {
            "potassium": 3.1,
            "sodium": 128,
            "calcium-total": {"value": 1.9, "unit": "mmol/L"},
            "calcium-ionized": 0.9,
            "tsh": 9.5,
            "free-t4": {"value": 7, "unit": "pmol/L"},
        },
    },
    "deficient-labs": {
        "answers": {"cramp-frequency": 1},
        "labs": {
            "vitamin-d-25oh": {"value": 30, "unit": "nmol/L"},
            "magnesium": {"value": 1.2, "unit": "mg/dL"},
        },
    },
    "workup-only": {"age": 29, "answers": {"cramp-frequency": 2}},
    "cramp-condition-only": {"age": 70, "conditions": ["cramp"]},
}


def evaluate_case(evaluator: Evaluator, given: dict[str, Any]) -> Evaluation:
    return evaluator.evaluate_document(build_case_bundle(evaluator.pack, given, FROZEN_NOW), now=FROZEN_NOW)


def input_keys(document: dict[str, Any]) -> set[str]:
    """`Type/id` of every resource in a Bundle or in a hook request's prefetch (searchsets opened)."""
    keys: set[str] = set()

    def visit(resource: dict[str, Any]) -> None:
        if resource.get("resourceType") == "Bundle":
            for entry in resource.get("entry", []):
                if "resource" in entry:
                    visit(entry["resource"])
        elif "id" in resource:
            keys.add(f"{resource['resourceType']}/{resource['id']}")

    if "prefetch" in document:
        for value in document["prefetch"].values():
            if value is not None:
                visit(value)
    else:
        visit(document)
    return keys


def empty_values(node: Any, path: str = "$") -> list[str]:
    """Paths of every key or item whose value is None, "", [] or {}, at any depth."""
    found: list[str] = []
    if isinstance(node, dict):
        items: list[tuple[str, Any]] = [(f"{path}.{k}", v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
    else:
        return found
    for where, value in items:
        if value is None or (isinstance(value, str | list | dict) and len(value) == 0):
            found.append(where)
        else:
            found.extend(empty_values(value, where))
    return found


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        pytest.param({"a": {"b": [{"c": None}]}}, ["$.a.b[0].c"], id="deep-none"),
        pytest.param({"a": ""}, ["$.a"], id="empty-string"),
        pytest.param({"a": [1, []]}, ["$.a[1]"], id="empty-list-in-list"),
        pytest.param({"a": {}}, ["$.a"], id="empty-object"),
        pytest.param({"a": 0, "b": False, "c": [0]}, [], id="falsy-but-present"),
    ],
)
def test_empty_value_checker(node: Any, expected: list[str]) -> None:
    assert empty_values(node) == expected


def documents() -> list[Any]:
    params = [
        pytest.param(("fixture", item["file"]), id=item["file"].removesuffix(".json")) for item in MANIFEST
    ]
    params += [pytest.param(("case", name), id=f"case-{name}") for name in CASES]
    return params


def produce(evaluator: Evaluator, which: tuple[str, str]) -> tuple[dict[str, Any], Evaluation]:
    kind, name = which
    if kind == "fixture":
        document = load_fixture(name)
    else:
        document = build_case_bundle(evaluator.pack, CASES[name], FROZEN_NOW)
    return document, evaluator.evaluate_document(document, now=FROZEN_NOW)


@pytest.mark.parametrize("which", documents())
def test_response_has_no_empty_values(evaluator: Evaluator, which: tuple[str, str]) -> None:
    _, result = produce(evaluator, which)
    response = json.loads(json.dumps(result.response()))
    assert set(response) == {"cards"}
    # `{"cards": []}` is the required answer when nothing fires; below it nothing may be empty
    assert empty_values(response["cards"], "$.cards") == []


@pytest.mark.parametrize("which", documents())
def test_card_shape(evaluator: Evaluator, pack: RulePack, which: tuple[str, str]) -> None:
    _, result = produce(evaluator, which)
    seen_uuids: set[str] = set()
    orders = [pack.topics[c["source"]["topic"]["code"]].order for c in result.cards]
    assert orders == sorted(orders), "cards follow the pack's topic order"
    for card in result.cards:
        assert str(uuid.UUID(card["uuid"])) == card["uuid"]
        assert card["uuid"] not in seen_uuids
        seen_uuids.add(card["uuid"])
        assert 0 < len(card["summary"]) < 140
        assert card["indicator"] in {"info", "warning", "critical"}
        source = card["source"]
        assert source["label"].strip()
        topic = source["topic"]
        assert set(topic) == {"system", "code", "display"}
        assert topic["system"] == pack.manifest.topic_system
        assert topic["code"] in pack.topics
        assert topic["display"] == pack.topics[topic["code"]].spec.display
        assert card["detail"].startswith(pack.topics[topic["code"]].spec.detail.strip()[:40])
        for reason in card.get("overrideReasons", []):
            assert set(reason) == {"code", "system", "display"}


@pytest.mark.parametrize("which", documents())
def test_explanation_names_fired_rules_and_real_evidence(
    evaluator: Evaluator, pack: RulePack, which: tuple[str, str]
) -> None:
    document, result = produce(evaluator, which)
    keys = input_keys(document)
    for card in result.cards:
        explanation = card["extension"][EXPLANATION_KEY]
        assert explanation["packVersion"] == pack.version
        topic = card["source"]["topic"]["code"]
        assert explanation["rules"], "every card says which rules fired"
        for entry in explanation["rules"]:
            assert entry["rule"] in pack.rules_by_id
            assert entry["rule"] in result.fired
            assert pack.topic_of_rule[entry["rule"]] == topic
            assert f"`{entry['rule']}`" in card["detail"]
            assert set(entry["evidence"]) <= keys
            assert entry["facts"]
        assert explanation["evidence"]
        assert set(explanation["evidence"]) <= keys
        assert set(explanation["evidence"]) == {r for e in explanation["rules"] for r in e["evidence"]}


@pytest.mark.parametrize("which", documents())
def test_suggestions_are_valid_service_request_proposals(
    evaluator: Evaluator, pack: RulePack, which: tuple[str, str]
) -> None:
    _, result = produce(evaluator, which)
    order_codes = {(o.code.system, o.code.code) for o in pack.orders.values()}
    for card in result.cards:
        if "suggestions" not in card:
            assert "selectionBehavior" not in card
            continue
        assert card["selectionBehavior"] == "any"
        for suggestion in card["suggestions"]:
            assert suggestion["label"].strip()
            uuid.UUID(suggestion["uuid"])
            [action] = suggestion["actions"]
            assert action["type"] == "create"
            assert action["description"] == suggestion["label"]
            resource = action["resource"]
            request = ServiceRequest.model_validate(resource)
            assert (request.status, request.intent) == ("draft", "proposal")
            assert request.subject.reference == result.record.patient_key
            [coding] = request.code.coding
            assert (coding.system, coding.code) in order_codes


def test_suggestions_carry_pinned_ids(evaluator: Evaluator) -> None:
    result = evaluate_case(evaluator, CASES["workup-only"])
    ids = [c["uuid"] for c in result.cards] + [
        s["uuid"] for c in result.cards for s in c.get("suggestions", [])
    ]
    assert sorted(ids) == [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, len(ids) + 1)]


def test_case_bundle_subject_is_the_patient(evaluator: Evaluator) -> None:
    result = evaluate_case(evaluator, CASES["deficient-labs"])
    assert result.record.patient_key == "Patient/case-patient"
    requests = [s["actions"][0]["resource"] for c in result.cards for s in c.get("suggestions", [])]
    assert requests
    assert {r["subject"]["reference"] for r in requests} == {"Patient/case-patient"}


def test_no_cards_without_cramp_context(evaluator: Evaluator) -> None:
    # Magnesium 0.6 is low but not critical: without cramps there is nothing to say.
    given = {"age": 70, "labs": {"vitamin-d-25oh": 8, "magnesium": 0.6}, "conditions": ["hypothyroidism"]}
    result = evaluate_case(evaluator, given)
    assert result.response() == {"cards": []}
    assert "vitamin-d-deficiency.deficient" not in result.fired


def test_a_critical_value_gives_a_critical_card_without_cramp_context(evaluator: Evaluator) -> None:
    """Issue 8: a critically low magnesium needs action today whatever the visit is about."""
    given = {"age": 70, "labs": {"vitamin-d-25oh": 8, "magnesium": 0.4}, "conditions": ["hypothyroidism"]}
    result = evaluate_case(evaluator, given)
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in result.cards] == [("urgent", "critical")]
    assert result.cards[0]["summary"].startswith("Critically low magnesium: replace magnesium today")


def test_summary_quotes_evidence(evaluator: Evaluator) -> None:
    result = evaluate_case(evaluator, {"answers": {"cramp-frequency": 1}, "labs": {"vitamin-d-25oh": 14}})
    card = next(c for c in result.cards if c["source"]["topic"]["code"] == "vitamin-d-deficiency")
    assert "25-OH vitamin D 14 ng/mL (deficient)" in card["summary"]
    assert card["indicator"] == "warning"


def test_long_evidence_is_trimmed_under_140(evaluator: Evaluator) -> None:
    result = evaluate_case(evaluator, CASES["all-electrolytes-low"])
    card = next(c for c in result.cards if c["source"]["topic"]["code"] == "neuromuscular")
    assert len(card["summary"]) < 140
    rules = {e["rule"] for e in card["extension"][EXPLANATION_KEY]["rules"]}
    assert {"neuromuscular.electrolyte-low", "neuromuscular.tsh-high", "neuromuscular.free-t4-low"} <= rules
    evidence = card["extension"][EXPLANATION_KEY]["evidence"]
    assert len(evidence) >= 6 + 1  # six labs and the questionnaire response


# --- suggestions: workup and recent results -------------------------------------------------------


def suggested(card: dict[str, Any]) -> list[str]:
    return [s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in card.get("suggestions", [])]


def order_code(pack: RulePack, order: str) -> str:
    return pack.orders[order].code.code


def cards_by_topic(result: Evaluation) -> dict[str, dict[str, Any]]:
    return {c["source"]["topic"]["code"]: c for c in result.cards}


def test_workup_suggests_all_baselines_when_nothing_else_does(evaluator: Evaluator, pack: RulePack) -> None:
    cards = cards_by_topic(evaluate_case(evaluator, CASES["workup-only"]))
    assert set(cards) == {"lifestyle", "workup"}
    assert suggested(cards["workup"]) == [
        order_code(pack, o) for o in ("vitamin-d-25oh-test", "magnesium-test", "tsh-test")
    ]


def test_workup_drops_orders_another_card_suggests(evaluator: Evaluator, pack: RulePack) -> None:
    cards = cards_by_topic(
        evaluate_case(evaluator, {"answers": {"cramp-frequency": 2, "low-sun-exposure": True}})
    )
    assert suggested(cards["vitamin-d-deficiency"]) == [order_code(pack, "vitamin-d-25oh-test")]
    assert suggested(cards["workup"]) == [order_code(pack, o) for o in ("magnesium-test", "tsh-test")]


def test_workup_disappears_when_nothing_is_left(evaluator: Evaluator) -> None:
    given = {
        "answers": {"cramp-frequency": 2, "low-sun-exposure": True, "chronic-diarrhea": True},
        "labs": {"tsh": 2.0},
    }
    result = evaluate_case(evaluator, given)
    cards = cards_by_topic(result)
    assert {"vitamin-d-deficiency", "magnesium-deficiency", "lifestyle"} <= set(cards)
    assert "workup" not in cards
    assert "workup.vitamin-d-untested" in result.fired  # the rule fired; the card was left out


def test_workup_absent_with_all_baselines_recent(evaluator: Evaluator) -> None:
    given = {"answers": {"cramp-frequency": 2}, "labs": {"vitamin-d-25oh": 35, "magnesium": 0.85, "tsh": 2.0}}
    assert set(cards_by_topic(evaluate_case(evaluator, given))) == {"lifestyle"}


@pytest.mark.parametrize(
    ("given", "topic", "absent", "present"),
    [
        pytest.param(
            {"answers": {"cramp-frequency": 1}, "labs": {"tsh": 8.0}},
            "neuromuscular",
            # Issue 8 item 10: nerve studies only where a neuropathy is suspected.
            ["tsh-test", "emg", "nerve-conduction-study"],
            ["free-t4-test"],
            id="neuromuscular-recent-tsh",
        ),
        pytest.param(
            {
                "answers": {"cramp-frequency": 1, "numbness-tingling": True},
                "labs": {"tsh": 8.0, "free-t4": 1.1},
            },
            "neuromuscular",
            ["tsh-test", "free-t4-test"],
            ["emg", "nerve-conduction-study"],
            id="neuromuscular-recent-tsh-and-free-t4",
        ),
        pytest.param(
            {"answers": {"cramp-frequency": 1, "numbness-tingling": True}},
            "neuromuscular",
            ["free-t4-test"],
            ["emg", "nerve-conduction-study"],
            id="neuromuscular-nothing-recent",
        ),
        pytest.param(
            {
                "answers": {"cramp-frequency": 1, "persisting-after-lifestyle-changes": True},
                "labs": {"calcium-total": 9.4, "vitamin-d-25oh": 40, "tsh": 1.5},
            },
            "seek-care",
            [
                "calcium-test",
                "vitamin-d-25oh-test",
                "tsh-test",
                "free-t4-test",
                "emg",
                "nerve-conduction-study",
            ],
            ["phosphate-test", "pth-test", "magnesium-test", "electrolyte-panel"],
            id="seek-care-recent-calcium-vitamin-d-tsh",
        ),
        pytest.param(
            {
                "answers": {"cramp-frequency": 1, "low-sun-exposure": True},
                "labs": {"vitamin-d-25oh": {"value": 40, "months_ago": 13}},
            },
            "vitamin-d-deficiency",
            [],
            ["vitamin-d-25oh-test"],
            id="stale-result-is-suggested-again",
        ),
    ],
)
def test_test_with_recent_result_never_suggested_again(
    evaluator: Evaluator,
    pack: RulePack,
    given: dict[str, Any],
    topic: str,
    absent: list[str],
    present: list[str],
) -> None:
    result = evaluate_case(evaluator, given)
    codes = [c for card in result.cards for c in suggested(card)]
    mine = suggested(cards_by_topic(result)[topic])
    for order in absent:
        assert order_code(pack, order) not in codes
    for order in present:
        assert order_code(pack, order) in mine


def test_each_order_suggested_once_per_response(evaluator: Evaluator) -> None:
    result = evaluate_case(evaluator, CASES["everything"])
    codes = [
        c for card in result.cards for c in suggested(card) if card["source"]["topic"]["code"] == "workup"
    ]
    assert codes == []  # everything else already suggests the baselines
    for card in result.cards:
        assert len(suggested(card)) == len(set(suggested(card)))


def test_everything_case_fires_every_cause_topic(evaluator: Evaluator) -> None:
    topics = set(cards_by_topic(evaluate_case(evaluator, CASES["everything"])))
    assert topics == {
        "seek-care",
        "vitamin-d-deficiency",
        "magnesium-deficiency",
        "calcium-absorption",
        "poor-circulation",
        "neuromuscular",
        "lifestyle",
    }


def test_topics_argument_limits_cards(evaluator: Evaluator) -> None:
    document = build_case_bundle(evaluator.pack, CASES["workup-only"], FROZEN_NOW)
    result = evaluator.evaluate_document(document, now=FROZEN_NOW, topics={"workup"})
    assert [c["source"]["topic"]["code"] for c in result.cards] == ["workup"]
