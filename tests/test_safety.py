"""Issue 8 over real HTTP: the calcium order being signed for a patient whose calcium is already high.

calcium-order-check is where a high calcium matters most: the clinician is about to add calcium. The
rule cases prove each rule; these tests prove the order-sign service shows the warning, withholds the
high-dose advice and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.support.api import CALCIUM_CARBONATE, Api, dev_settings, order_sign_request, running

PATIENT = "Patient/hook-patient"


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api:
        yield api


def _observation(obs_id: str, loinc: str, value: float, unit: str, flag: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2026-05-20T09:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if flag:
        resource["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": flag,
                    }
                ]
            }
        ]
    return {"fullUrl": f"https://ehr.example.org/fhir/Observation/{obs_id}", "resource": resource}


def _with_labs(request: dict[str, Any], *entries: dict[str, Any]) -> dict[str, Any]:
    bundle = request["prefetch"]["observations"]
    bundle["entry"] = [*bundle.get("entry", []), *entries]
    bundle["total"] = len(bundle["entry"])
    return request


def _thiazide(request: dict[str, Any]) -> dict[str, Any]:
    bundle = request["prefetch"]["medicationRequests"]
    bundle["entry"].append(
        {
            "fullUrl": "https://ehr.example.org/fhir/MedicationRequest/hctz",
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "hctz",
                "status": "active",
                "intent": "order",
                "subject": {"reference": PATIENT},
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "316049"}]
                },
            },
        }
    )
    bundle["total"] = len(bundle["entry"])
    return request


def _cards(api: Api, request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = api.client.post("/cds-services/calcium-order-check", json=request)
    assert response.status_code == 200, response.text
    return {card["source"]["topic"]["code"]: card for card in response.json()["cards"]}


def test_a_calcium_order_with_high_calcium_gets_the_warning(api: Api) -> None:
    request = _with_labs(
        _thiazide(order_sign_request(medication=CALCIUM_CARBONATE)),
        _observation("ca", "17861-6", 11.4, "mg/dL", "H"),
        _observation("vitd", "62292-8", 14, "ng/mL", None),
    )
    cards = _cards(api, request)
    excess = cards["calcium-excess"]
    assert excess["indicator"] == "warning"
    assert "11.4 mg/dL" in excess["summary"]
    for words in ("milk-alkali", "thiazide", "PTH"):
        assert words in excess["detail"]
    fired = {r["rule"] for r in excess["extension"]["cramp-cds-explanation"]["rules"]}
    assert {"calcium-excess.on-calcium-supplement", "calcium-excess.thiazide"} <= fired
    assert {s["label"] for s in excess["suggestions"]} >= {
        "Order intact PTH",
        "Repeat serum calcium with albumin",
    }
    vitamin_d = cards["vitamin-d-deficiency"]["detail"]
    assert "high-dose supplement may be needed" not in vitamin_d
    assert "High-dose vitamin D is not advised" in vitamin_d


def test_a_calcium_order_with_normal_calcium_gets_no_excess_card(api: Api) -> None:
    request = _with_labs(
        order_sign_request(medication=CALCIUM_CARBONATE),
        _observation("ca", "17861-6", 9.4, "mg/dL", None),
        _observation("vitd", "62292-8", 14, "ng/mL", None),
    )
    cards = _cards(api, request)
    assert "calcium-excess" not in cards
    assert "high-dose supplement may be needed" in cards["vitamin-d-deficiency"]["detail"]


def test_a_calcium_order_with_critical_calcium_and_magnesium_gets_a_critical_card(api: Api) -> None:
    request = _with_labs(
        order_sign_request(medication=CALCIUM_CARBONATE),
        _observation("ca", "17861-6", 7.0, "mg/dL", "LL"),
        _observation("mg", "2601-3", 0.42, "mmol/L", "LL"),
    )
    cards = _cards(api, request)
    urgent = cards["urgent"]
    assert urgent["indicator"] == "critical"
    assert "hypocalcaemia does not correct until magnesium is replaced" in urgent["detail"]
    labels = [s["label"] for card in cards.values() for s in card.get("suggestions", [])]
    assert not [label for label in labels if "electromyography" in label.lower()]


# --- The example patients, as fixtures (fixtures/manifest.json lists their topics) ------------


def _fixture_cards(evaluator: Evaluator, name: str) -> dict[str, dict[str, Any]]:
    from tests.conftest import load_fixture
    from tests.test_fixtures import end_of

    result = evaluator.evaluate_document(load_fixture(name), now=end_of("2026-06-01"))
    return {card["source"]["topic"]["code"]: card for card in result.cards}


def _text(card: dict[str, Any]) -> str:
    labels = " ".join(s["label"] for s in card.get("suggestions", []))
    return f"{card['summary']}\n{card['detail']}\n{labels}"


def test_high_calcium_thiazide_patient(evaluator: Evaluator) -> None:
    cards = _fixture_cards(evaluator, "high-calcium-thiazide.json")
    assert cards["calcium-excess"]["indicator"] == "warning"
    assert "Order intact PTH" in _text(cards["calcium-excess"])
    everything = "\n".join(_text(c) for c in cards.values())
    assert "high-dose supplement may be needed" not in everything
    assert "High-dose vitamin D is not advised" in cards["vitamin-d-deficiency"]["detail"]


def test_arterial_patient_gets_no_compression_or_leg_raising(evaluator: Evaluator) -> None:
    cards = _fixture_cards(evaluator, "arterial-disease.json")
    assert "poor-circulation" not in cards
    assert "Measure ankle-brachial index (ABI)" in _text(cards["arterial-disease"])
    for card in cards.values():
        text = _text(card).lower()
        assert "compression stockings can help" not in text
        assert "raising the legs during sleep" not in text
    assert "Compression stockings are not advised" in cards["lifestyle"]["detail"]


def test_critical_calcium_and_magnesium_patient(evaluator: Evaluator) -> None:
    cards = _fixture_cards(evaluator, "critical-calcium-magnesium.json")
    assert cards["urgent"]["indicator"] == "critical"
    assert "hypocalcaemia does not correct until magnesium is replaced" in cards["urgent"]["detail"]
    assert cards["magnesium-deficiency"]["summary"].startswith(
        "Low calcium with low magnesium: replace magnesium"
    )
    everything = "\n".join(_text(c) for c in cards.values()).lower()
    assert "electromyography" not in everything


def test_ckd4_patient_gets_a_kidney_caution_on_every_supplement(evaluator: Evaluator) -> None:
    cards = _fixture_cards(evaluator, "ckd4-supplements.json")
    for topic in ("vitamin-d-deficiency", "magnesium-deficiency", "medication-safety"):
        assert "eGFR below 30" in _text(cards[topic]), topic
    assert "supplement can be considered" not in cards["magnesium-deficiency"]["detail"]
    assert "hypermagnesaemia" in cards["magnesium-deficiency"]["detail"]


@pytest.mark.parametrize("name", ["ppi-product-coded.json", "ppi-brand-coded.json"])
def test_product_and_brand_coded_ppis_count(evaluator: Evaluator, name: str) -> None:
    cards = _fixture_cards(evaluator, name)
    fired = {r["rule"] for r in cards["calcium-absorption"]["extension"]["cramp-cds-explanation"]["rules"]}
    assert fired == {"calcium-absorption.ppi"}
    assert "calcium citrate" in cards["calcium-absorption"]["detail"]


def test_order_sign_answers_with_every_safety_topic(pack: RulePack) -> None:
    """A new safety topic must not silently vanish from calcium-order-check, where calcium is being added."""
    from cds.hooks import CAUSE_TOPICS

    assert set(CAUSE_TOPICS) <= set(pack.topics)
    assert set(pack.topics) - CAUSE_TOPICS == {"lifestyle", "workup"}


def test_every_critical_rule_mitigates_a_hazard(pack: RulePack) -> None:
    from cds.hazards import hazards_by_rule, load_hazards

    linked = hazards_by_rule(load_hazards(pack))
    critical = [rule.id for rule in pack.rules_by_id.values() if rule.indicator == "critical"]
    assert critical
    assert [rule for rule in critical if rule not in linked] == []
