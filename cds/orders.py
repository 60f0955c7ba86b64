"""order-sign: find calcium supplement MedicationRequests among the draft orders and count them as active.

The draft orders are a FHIR Bundle (`context.draftOrders`) whose `type` CDS clients often leave out, so
entries are read leniently here; each resource is validated later by intake like any other.
CAUTION: a draft matches on the pack's `calcium-supplement` value set, by code or by name in its text,
exactly as an active medication would (cds.record), so both stay in step when the pack changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cds.errors import ShapeError
from cds.rulepack import MedicationSet

CALCIUM_SET = "calcium-supplement"
WHERE = "context.draftOrders"

Entry = tuple[str, Mapping[str, Any], str]


def _concept_matches(concept: Any, vs: MedicationSet) -> bool:
    if not isinstance(concept, dict):
        return False
    exact = {(c.system, c.code) for c in vs.codes}
    codings = (
        [c for c in concept.get("coding", []) if isinstance(c, dict)]
        if isinstance(concept.get("coding"), list)
        else []
    )
    if any((c.get("system"), c.get("code")) in exact for c in codings):
        return True
    texts = [concept.get("text")] + [c.get("display") for c in codings]
    lowered = " ".join(t for t in texts if isinstance(t, str)).lower()
    return any(re.search(rf"\b{re.escape(name.lower())}\b", lowered) for name in vs.text)


def _medication_concept(request: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> Any:
    """medicationCodeableConcept, or the code of the Medication it references (contained or in the Bundle)."""
    if "medicationCodeableConcept" in request:
        return request["medicationCodeableConcept"]
    ref = request.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(target, str):
        return None
    if target.startswith("#"):
        for contained in request.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                return contained.get("code")
        return None
    medication = medications.get(target)
    return medication.get("code") if medication is not None else None


def calcium_drafts(draft_orders: Any, vs: MedicationSet, *, patient_id: str) -> list[Entry]:
    """(where, resource, fullUrl) of each calcium draft MedicationRequest, marked active, plus the
    Medications it references; empty when the drafts hold no calcium supplement."""
    if not isinstance(draft_orders, dict) or draft_orders.get("resourceType") != "Bundle":
        raise ShapeError("must be a FHIR Bundle of the orders being signed", field=WHERE)
    entries = draft_orders.get("entry", [])
    if not isinstance(entries, list):
        raise ShapeError("must be a list", field=f"{WHERE}.entry")
    resources: list[tuple[str, dict[str, Any], str]] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise ShapeError("must be an entry holding a FHIR resource", field=f"{WHERE}.entry[{index}]")
        full_url = entry.get("fullUrl")
        resources.append(
            (f"{WHERE}.entry[{index}].resource", resource, full_url if isinstance(full_url, str) else "")
        )
    medications: dict[str, Mapping[str, Any]] = {}
    for _, resource, full_url in resources:
        if resource.get("resourceType") == "Medication":
            if full_url:
                medications[full_url] = resource
            if isinstance(resource.get("id"), str):
                medications[f"Medication/{resource['id']}"] = resource
    found: list[Entry] = []
    for where, resource, full_url in resources:
        if resource.get("resourceType") != "MedicationRequest":
            continue
        if not _concept_matches(_medication_concept(resource, medications), vs):
            continue
        # The order is being signed: count it as the active medication it is about to become.
        # A shallow copy: only top-level members change, and a copy of every level (deepcopy) of a
        # client's draft nested a few hundred deep ran out of stack (a 500).
        active = dict(resource)
        active["status"] = "active"
        active["intent"] = "order"  # a draft may be a proposal; signed, it is the order
        active.setdefault("subject", {"reference": f"Patient/{patient_id}"})
        found.append((where, active, full_url))
    if found:
        found.extend(
            (where, resource, full_url)
            for where, resource, full_url in resources
            if resource.get("resourceType") == "Medication"
        )
    return found
