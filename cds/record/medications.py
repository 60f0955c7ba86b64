"""MedicationRequests and MedicationStatements (and the Medications they name) -> medication hits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cds.fhirvalues import reference_key
from cds.intake import Resource
from cds.record.codes import concept_codes, concept_text, raw_codings, raw_text, short
from cds.record.model import Hit, PatientRecord
from cds.rulepack import RulePack


def medication_wanted(pack: RulePack) -> Any:
    """Pre-validation filter: a coded or named medication of some value set, or one by reference."""
    exact = {(c.system, c.code) for vs in pack.valuesets.medications.values() for c in vs.codes}
    names = [name for vs in pack.valuesets.medications.values() for name in vs.text]

    def wanted(resource: Mapping[str, Any]) -> bool:
        if "medicationReference" in resource:
            return True
        concept = resource.get("medicationCodeableConcept")
        if any(pair in exact for pair in raw_codings(concept)):
            return True
        text = raw_text(concept).lower()
        return any(name in text for name in names)

    return wanted


def read_medication(
    record: PatientRecord,
    resource: Resource,
    pack: RulePack,
    by_url: Mapping[str, Resource],
    by_key: Mapping[str, Resource],
) -> None:
    med = resource.model
    why_not = _not_taken(resource)
    if why_not is not None:
        record.notes.append(f"{resource.key} {why_not}; not counted as an active medication")
        return
    concept = med.medicationCodeableConcept
    if concept is None and med.medicationReference is not None:
        target = str(med.medicationReference.reference or "")
        linked: Resource | None = None
        if target.startswith("#"):
            for contained in med.contained or []:
                if getattr(contained, "id", None) == target[1:]:
                    concept = getattr(contained, "code", None)
        else:
            linked = by_url.get(target) or by_key.get(reference_key(target) or "")
            concept = linked.model.code if linked is not None else None
        if concept is None:
            record.notes.append(
                f"{resource.key}: medication {target or '(no reference)'} not in the submission; "
                "matched on its display text only"
            )
            named = str(med.medicationReference.display or "")
            _match_medication(
                record, resource, pack, [], named, named or f"medication {target or '(no reference)'}"
            )
            return
    _match_medication(
        record,
        resource,
        pack,
        concept_codes(concept),
        concept_text(concept),
        short(concept, "medication without name or code"),
    )


# FHIR R4 MedicationRequest.intent values that are an order to give the drug; `proposal`, `plan`,
# `directive` and `option` are not (yet) orders. http://hl7.org/fhir/R4/valueset-medicationrequest-intent.html
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order"})


def _not_taken(resource: Resource) -> str | None:
    """Why an order or statement does not say the patient takes the drug now (FHIR modifier elements:
    status, intent, doNotPerform), or None when it does."""
    med = resource.model
    if med.status != "active":
        return f"has status {med.status}"
    if resource.type == "MedicationRequest":
        if getattr(med, "doNotPerform", None):
            return "says doNotPerform (an order NOT to give the drug)"
        if med.intent not in ORDER_INTENTS:
            return f"has intent {med.intent} (not an order)"
    return None


def _match_medication(
    record: PatientRecord,
    resource: Resource,
    pack: RulePack,
    codes: list[tuple[str | None, str | None, str | None]],
    text: str,
    display: str,
) -> None:
    exact, names = pack.medication_index
    lowered = text.lower()
    groups: dict[str, None] = {}
    for system, code, _ in codes:
        if system is not None and code is not None:
            groups.update(dict.fromkeys(exact.get((system, code), ())))
    for name, group in names:
        if group not in groups and name in lowered and re.search(rf"\b{re.escape(name)}\b", lowered):
            groups[group] = None
    for group in groups:
        record.medications.append(Hit(group=group, ref=resource.key, display=display))
