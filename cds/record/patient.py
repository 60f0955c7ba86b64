"""The Patient: which resources are about the one patient of a submission, and the patient's age."""

from __future__ import annotations

from calendar import monthrange
from collections.abc import Sequence
from datetime import date, datetime

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


def age_range(patient: Resource | None, now: datetime) -> tuple[int, int] | None:
    """(youngest, oldest) possible age in whole years at `now`; None without a birthDate.

    A partial birthDate says less: `1981` may be any day of 1981, `1981-07` any day of July 1981. The
    youngest possible age is the certain one (born on the last possible day).

        >>> from datetime import UTC
        >>> now = datetime(2026, 6, 1, tzinfo=UTC)
        >>> _range_of("1981", now), _range_of("1981-07", now), _range_of("1981-05-31", now)
        ((44, 45), (44, 44), (45, 45))
    """
    if patient is None or patient.model.birthDate is None:
        return None
    return _range_of(patient.model.birthDate, now)


def _range_of(value: object, now: datetime) -> tuple[int, int] | None:
    if isinstance(value, date):
        age = age_in_years(value, now.date())
        return age, age
    text = str(value)
    earliest = parse_fhir_datetime(text)
    if earliest is None:
        return None
    if len(text) == 4:  # YYYY
        latest = date(earliest.year, 12, 31)
    elif len(text) == 7:  # YYYY-MM
        latest = date(earliest.year, earliest.month, monthrange(earliest.year, earliest.month)[1])
    else:
        latest = earliest.date()
    return age_in_years(latest, now.date()), age_in_years(earliest.date(), now.date())
