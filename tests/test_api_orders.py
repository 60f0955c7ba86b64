"""order-sign draft orders: which MedicationRequests count as calcium supplements, and how they enter the record."""

from __future__ import annotations

from typing import Any

import pytest

from cds.errors import ShapeError
from cds.evaluation import Evaluator
from cds.orders import CALCIUM_SET, calcium_drafts
from cds.rulepack import RulePack
from tests.conftest import FROZEN_NOW
from tests.support.api import ATORVASTATIN, CALCIUM_BY_TEXT, CALCIUM_CARBONATE, order_sign_request

PATIENT = "hook-patient"


def drafts(request: dict[str, Any], pack: RulePack) -> list[tuple[str, Any, str]]:
    vs = pack.valuesets.medications[CALCIUM_SET]
    return calcium_drafts(request["context"]["draftOrders"], vs, patient_id=PATIENT)


@pytest.mark.parametrize(
    ("medication", "matches"),
    [
        (CALCIUM_CARBONATE, True),
        (CALCIUM_BY_TEXT, True),
        (
            {"coding": [{"system": "http://example.org", "code": "1897", "display": "Calcium carbonate"}]},
            True,
        ),
        ({"coding": [{"system": "http://example.org", "code": "1897"}]}, False),
        (ATORVASTATIN, False),
        ({"text": "calciumcarbonatefree"}, False),
    ],
    ids=["rxnorm-code", "text", "display", "code-in-other-system", "other-drug", "not-a-word"],
)
def test_which_drafts_are_calcium(pack: RulePack, medication: dict[str, Any], matches: bool) -> None:
    assert bool(drafts(order_sign_request(medication=medication), pack)) is matches


def test_a_calcium_draft_is_marked_active_without_changing_the_request(pack: RulePack) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    [(where, resource, _)] = drafts(request, pack)
    assert where == "context.draftOrders.entry[0].resource"
    assert resource["status"] == "active"
    assert request["context"]["draftOrders"]["entry"][0]["resource"]["status"] == "draft"


def test_a_calcium_draft_referencing_a_bundle_medication_brings_it_along(pack: RulePack) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/calcium"}
    request["context"]["draftOrders"]["entry"].append(
        {"resource": {"resourceType": "Medication", "id": "calcium", "code": CALCIUM_CARBONATE}}
    )
    found = drafts(request, pack)
    assert [r["resourceType"] for _, r, _ in found] == ["MedicationRequest", "Medication"]


def test_the_draft_becomes_an_active_calcium_medication_of_the_record(pack: RulePack) -> None:
    request = order_sign_request(medication=CALCIUM_CARBONATE)
    evaluation = Evaluator(pack).evaluate_prefetch(
        request["prefetch"], patient_id=PATIENT, now=FROZEN_NOW, extra=drafts(request, pack)
    )
    hits = [(m.group, m.ref) for m in evaluation.record.medications]
    assert (CALCIUM_SET, "MedicationRequest/draft-1") in hits


@pytest.mark.parametrize(
    ("draft_orders", "field"),
    [
        ([], "context.draftOrders"),
        ({"resourceType": "Patient"}, "context.draftOrders"),
        ({"resourceType": "Bundle", "entry": {}}, "context.draftOrders.entry"),
        ({"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]}, "context.draftOrders.entry[0]"),
    ],
    ids=["list", "not-a-bundle", "entry-not-list", "entry-without-resource"],
)
def test_malformed_draft_orders_name_the_field(pack: RulePack, draft_orders: Any, field: str) -> None:
    with pytest.raises(ShapeError) as caught:
        calcium_drafts(draft_orders, pack.valuesets.medications[CALCIUM_SET], patient_id=PATIENT)
    assert caught.value.field == field
