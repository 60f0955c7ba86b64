"""The Patient: which resources are about the one patient of a submission, and the patient's age."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cds.errors import PatientError
from cds.fhirvalues import age_in_years, parse_fhir_datetime, reference_key
from cds.intake import Resource


def find_patient(resources: Sequence[Resource], patient_id: str | None) -> tuple[Resource | None, set[str]]:
    patients = [r for r in resources if r.type == "Patient"]
    if patient_id is not None:
        wanted = f"Patient/{patient_id}"
        match = [p for p in patients if p.key == wanted]
        others = [p.key for p in patients if p.key != wanted]
        if others:
            raise PatientError(
                f"the prefetch holds {', '.join(others)}, not the context's patient",
                resource=others[0],
                field="prefetch.patient",
            )
        aliases = {wanted} | {p.full_url for p in match if p.full_url}
        return (match[0] if match else None), aliases
    if len(patients) > 1:
        raise PatientError(
            f"the Bundle holds {len(patients)} Patient resources ({', '.join(p.key for p in patients)}); "
            "send one patient per Bundle",
            resource=patients[1].key,
        )
    if patients:
        patient = patients[0]
        return patient, {patient.key} | ({patient.full_url} if patient.full_url else set())
    subjects = {reference_key(s) or s for r in resources if (s := subject_of(r)) is not None}
    if len(subjects) > 1:
        raise PatientError(
            f"the Bundle has no Patient and its resources are about {len(subjects)} different subjects",
            field="subject",
        )
    return None, subjects


def patient_key(patient: Resource | None, patient_id: str | None, aliases: set[str]) -> str | None:
    if patient is not None:
        return patient.key
    if patient_id is not None:
        return f"Patient/{patient_id}"
    keys = sorted(a for a in aliases if a.startswith("Patient/"))
    return keys[0] if keys else None


def subject_of(resource: Resource) -> str | None:
    ref = getattr(resource.model, "subject", None)
    value = getattr(ref, "reference", None) if ref is not None else None
    return str(value) if value else None


def age_of(patient: Resource | None, now: datetime) -> int | None:
    """Whole years at `now` from Patient.birthDate; None without one."""
    if patient is None or patient.model.birthDate is None:
        return None
    born = parse_fhir_datetime(patient.model.birthDate)
    return age_in_years(born.date(), now.date()) if born is not None else None
