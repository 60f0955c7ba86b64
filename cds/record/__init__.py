"""Normalise: validated FHIR resources -> one patient's record (codes matched, units converted, bands set).

Everything here is deterministic given the resources, the rule pack and the evaluation time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from cds.fhirvalues import reference_key
from cds.intake import Resource
from cds.record.answers import read_answers
from cds.record.conditions import condition_wanted, read_condition
from cds.record.labs import latest_observations, observation_wanted, read_labs
from cds.record.medications import medication_wanted, read_medication
from cds.record.model import Answer, Hit, LabResult, PatientRecord
from cds.record.modifiers import refuse_modifier_extensions
from cds.record.patient import age_range, find_patient, patient_key, subject_of
from cds.record.superseding import supersede
from cds.rulepack import RulePack

__all__ = [
    "Answer",
    "Hit",
    "LabResult",
    "PatientRecord",
    "build_record",
    "condition_wanted",
    "latest_observations",
    "medication_wanted",
    "observation_wanted",
]


def build_record(
    resources: Sequence[Resource],
    *,
    pack: RulePack,
    now: datetime,
    patient_id: str | None = None,
    notes: Iterable[str] = (),
) -> PatientRecord:
    """Reduce one submission's resources to the record of its one patient."""
    patient, aliases = find_patient(resources, patient_id)
    ages = age_range(patient, now)
    record = PatientRecord(
        patient_key=patient_key(patient, patient_id, aliases),
        age=ages[0] if ages else None,
        age_max=ages[1] if ages else None,
        notes=list(notes),
    )
    by_url = {r.full_url: r for r in resources if r.full_url}
    by_key = {r.key: r for r in resources}

    mine: list[Resource] = []
    for resource in resources:
        if resource.type in {"Patient", "Medication"}:
            continue
        subject = subject_of(resource)
        if subject is None:
            record.notes.append(f"{resource.key} has no subject; ignored")
        elif aliases and subject not in aliases and reference_key(subject) not in aliases:
            record.notes.append(f"{resource.key} is about another patient; ignored")
        else:
            mine.append(resource)
    for resource in (*mine, *(p for p in resources if p.type in {"Patient", "Medication"})):
        refuse_modifier_extensions(resource)

    read_labs(record, [r for r in mine if r.type == "Observation"], pack, now)
    for resource in mine:
        if resource.type == "Condition":
            read_condition(record, resource, pack, now)
        elif resource.type in {"MedicationRequest", "MedicationStatement"}:
            read_medication(record, resource, pack, by_url, by_key)
    # A Medication is read only through an order or statement of this patient; announce the rest.
    targets = {
        str(r.model.medicationReference.reference or "")
        for r in mine
        if r.type in {"MedicationRequest", "MedicationStatement"} and r.model.medicationReference is not None
    }
    used = {m.key for t in targets if (m := by_url.get(t) or by_key.get(reference_key(t) or "")) is not None}
    unused = [r.key for r in resources if r.type == "Medication" and r.key not in used]
    if unused:
        record.notes.append(
            f"{', '.join(unused)}: no medication order or statement of this patient refers to it; ignored"
        )
    read_answers(record, [r for r in mine if r.type == "QuestionnaireResponse"], pack, now)
    supersede(record)
    return record
