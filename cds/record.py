"""Normalise: validated FHIR resources -> one patient's record (codes matched, units converted, bands set).

Everything here is deterministic given the resources, the rule pack and the evaluation time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cds.errors import PatientError
from cds.fhirvalues import (
    age_in_years,
    is_after,
    parse_fhir_datetime,
    reference_key,
    start_of_day,
    subtract_months,
    unit_key,
    whole_months_between,
)
from cds.intake import Resource
from cds.rulepack import Analyte, RulePack

OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected"})
ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
REFUTED = frozenset({"refuted", "entered-in-error"})
QR_STATUSES = frozenset({"completed", "amended"})
UCUM = "http://unitsofmeasure.org"
INTERPRETATION_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "http://terminology.hl7.org/CodeSystem/v2-0078",
        "http://hl7.org/fhir/v2/0078",
    }
)
INTERPRETATION_BANDS = {
    "L": "low",
    "LL": "low",
    "LU": "low",
    "H": "high",
    "HH": "high",
    "HU": "high",
    "N": "normal",
}
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
YES_NO_CODES = {
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "Y"): True,
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "N"): False,
    ("http://snomed.info/sct", "373066001"): True,
    ("http://snomed.info/sct", "373067005"): False,
}


@dataclass(frozen=True)
class LabResult:
    analyte: str
    band: str  # low | normal | high | indeterminate | positive | negative
    grade: str | None
    value: float | None
    unit: str | None
    display: str
    when: datetime
    ref: str
    basis: str  # interpretation | reference-range | default | coded


@dataclass(frozen=True)
class Hit:
    """A resource that falls in a value set."""

    group: str
    ref: str
    display: str
    onset_months: int | None = None


@dataclass(frozen=True)
class Answer:
    link_id: str
    value: bool | int
    ref: str


@dataclass
class PatientRecord:
    patient_key: str | None
    age: int | None
    labs: dict[str, LabResult] = field(default_factory=dict)
    conditions: list[Hit] = field(default_factory=list)
    medications: list[Hit] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def observation_wanted(pack: RulePack) -> Any:
    """A cheap pre-validation filter: does this raw Observation carry a code the pack reads?"""
    codes = pack.analyte_by_code

    def wanted(resource: Mapping[str, Any]) -> bool:
        return any(pair in codes for pair in _raw_codings(resource.get("code")))

    return wanted


def latest_observations(
    entries: Sequence[tuple[str, Mapping[str, Any], str]], pack: RulePack, now: datetime
) -> list[tuple[str, Mapping[str, Any], str]]:
    """Drop Observations that a later final result of the same analyte and subject supersedes.

    Only the latest result per analyte is read, so only it needs validating; on a Synthea-sized
    record this removes most of the validation work. Everything the raw data does not settle (an
    unreadable status or date) is kept, so validation still reports it.
    """
    codes = pack.analyte_by_code
    # Results tied on time are all kept: _read_labs picks among them by content, not by entry order.
    best: dict[tuple[Any, str], tuple[datetime, list[int]]] = {}
    drop: set[int] = set()
    for index, (_, resource, _) in enumerate(entries):
        status = resource.get("status")
        if (
            resource.get("resourceType") != "Observation"
            or not isinstance(status, str)  # raw JSON: may be any value (validation reports it)
            or status not in OBSERVATION_STATUSES
        ):
            continue
        analyte = next((codes[p] for p in _raw_codings(resource.get("code")) if p in codes), None)
        raw = _raw_time(resource)
        when = parse_fhir_datetime(raw) if isinstance(raw, str) else None
        if analyte is None or when is None or is_after(raw, now):
            continue
        subject = resource.get("subject")
        reference = subject.get("reference") if isinstance(subject, dict) else None
        key = (reference if isinstance(reference, str) else None, analyte)
        current = best.get(key)
        if current is None or when > current[0]:
            if current is not None:
                drop.update(current[1])
            best[key] = (when, [index])
        elif when == current[0]:
            current[1].append(index)
        else:
            drop.add(index)
    return [entry for index, entry in enumerate(entries) if index not in drop]


def _raw_time(resource: Mapping[str, Any]) -> Any:
    """The raw effective (else issued) value of an unvalidated Observation, as `_observation_time` reads it."""
    period = resource.get("effectivePeriod")
    for value in (
        resource.get("effectiveDateTime"),
        resource.get("effectiveInstant"),
        (period.get("end") or period.get("start")) if isinstance(period, dict) else None,
    ):
        if value is not None:
            return value
    return resource.get("issued")


def condition_wanted(pack: RulePack) -> Any:
    """Pre-validation filter: does this raw Condition carry a code of some value set?"""
    exact = {(c.system, c.code) for vs in pack.valuesets.conditions.values() for c in vs.codes}
    prefixes = [(p.system, p.prefix) for vs in pack.valuesets.conditions.values() for p in vs.prefixes]

    def wanted(resource: Mapping[str, Any]) -> bool:
        for system, code in _raw_codings(resource.get("code")):
            if (system, code) in exact:
                return True
            if isinstance(code, str) and any(system == s and _prefix_match(code, p) for s, p in prefixes):
                return True
        return False

    return wanted


def medication_wanted(pack: RulePack) -> Any:
    """Pre-validation filter: a coded or named medication of some value set, or one by reference."""
    exact = {(c.system, c.code) for vs in pack.valuesets.medications.values() for c in vs.codes}
    names = [name for vs in pack.valuesets.medications.values() for name in vs.text]

    def wanted(resource: Mapping[str, Any]) -> bool:
        if "medicationReference" in resource:
            return True
        concept = resource.get("medicationCodeableConcept")
        if any(pair in exact for pair in _raw_codings(concept)):
            return True
        text = _raw_text(concept).lower()
        return any(name in text for name in names)

    return wanted


def _raw_codings(concept: Any) -> list[tuple[Any, Any]]:
    """(system, code) pairs of unvalidated JSON; pairs that are not strings (so not hashable, and
    invalid FHIR anyway) are left out, since these filters look them up in sets."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    pairs = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
    return [(s, c) for s, c in pairs if isinstance(s, str | None) and isinstance(c, str | None)]


def _raw_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")]
    codings = concept.get("coding")
    if isinstance(codings, list):
        parts += [c.get("display") for c in codings if isinstance(c, dict)]
    return " ".join(p for p in parts if isinstance(p, str))


def build_record(
    resources: Sequence[Resource],
    *,
    pack: RulePack,
    now: datetime,
    patient_id: str | None = None,
    notes: Iterable[str] = (),
) -> PatientRecord:
    """Reduce one submission's resources to the record of its one patient."""
    patient, aliases = _find_patient(resources, patient_id)
    age = None
    if patient is not None and patient.model.birthDate is not None:
        born = parse_fhir_datetime(patient.model.birthDate)
        if born is not None:
            age = age_in_years(born.date(), now.date())
    record = PatientRecord(patient_key=_patient_key(patient, patient_id, aliases), age=age, notes=list(notes))
    by_url = {r.full_url: r for r in resources if r.full_url}
    by_key = {r.key: r for r in resources}

    mine: list[Resource] = []
    for resource in resources:
        if resource.type in {"Patient", "Medication"}:
            continue
        subject = _subject(resource)
        if subject is None:
            record.notes.append(f"{resource.key} has no subject; ignored")
        elif aliases and subject not in aliases and reference_key(subject) not in aliases:
            record.notes.append(f"{resource.key} is about another patient; ignored")
        else:
            mine.append(resource)

    _read_labs(record, [r for r in mine if r.type == "Observation"], pack, now)
    for resource in mine:
        if resource.type == "Condition":
            _read_condition(record, resource, pack, now)
        elif resource.type in {"MedicationRequest", "MedicationStatement"}:
            _read_medication(record, resource, pack, by_url, by_key)
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
    _read_answers(record, [r for r in mine if r.type == "QuestionnaireResponse"], pack)
    return record


def _find_patient(resources: Sequence[Resource], patient_id: str | None) -> tuple[Resource | None, set[str]]:
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
    subjects = {reference_key(s) or s for r in resources if (s := _subject(r)) is not None}
    if len(subjects) > 1:
        raise PatientError(
            f"the Bundle has no Patient and its resources are about {len(subjects)} different subjects",
            field="subject",
        )
    return None, subjects


def _patient_key(patient: Resource | None, patient_id: str | None, aliases: set[str]) -> str | None:
    if patient is not None:
        return patient.key
    if patient_id is not None:
        return f"Patient/{patient_id}"
    keys = sorted(a for a in aliases if a.startswith("Patient/"))
    return keys[0] if keys else None


def _subject(resource: Resource) -> str | None:
    ref = getattr(resource.model, "subject", None)
    value = getattr(ref, "reference", None) if ref is not None else None
    return str(value) if value else None


# --- Observations ---------------------------------------------------------------------------------


def _read_labs(
    record: PatientRecord, observations: Sequence[Resource], pack: RulePack, now: datetime
) -> None:
    latest: dict[str, tuple[datetime, Resource]] = {}
    stale: dict[str, tuple[datetime, Resource]] = {}  # per analyte, the newest result older than its window
    for resource in observations:
        obs = resource.model
        if obs.status not in OBSERVATION_STATUSES:
            record.notes.append(f"{resource.key} has status {obs.status}; only final results count")
            continue
        analyte_name = _analyte_of(obs, pack)
        if analyte_name is None:
            continue
        raw = _observation_time(obs)
        when = parse_fhir_datetime(raw)
        if when is None:
            record.notes.append(f"{resource.key} has no effective or issued time; not counted as recent")
            continue
        if is_after(raw, now):
            record.notes.append(f"{resource.key} is dated after the evaluation time; ignored")
            continue
        analyte = pack.analytes[analyte_name]
        window_start = start_of_day(subtract_months(now, analyte.recent_months))
        if when < window_start:
            older = stale.get(analyte_name)
            if older is None or (when, _tie_key(resource)) > (older[0], _tie_key(older[1])):
                stale[analyte_name] = (when, resource)
            continue
        current = latest.get(analyte_name)
        if current is not None and when == current[0]:
            # CAUTION: two results of one analyte at the same time. Which counts must not depend on
            # the order of the entries; the choice is announced.
            chosen = max(current[1], resource, key=_tie_key)
            record.notes.append(
                f"{current[1].key} and {resource.key} report {pack.analytes[analyte_name].display} at the "
                f"same time; {chosen.key} counted"
            )
            latest[analyte_name] = (when, chosen)
        elif current is None or when > current[0]:
            latest[analyte_name] = (when, resource)
    for name, (_, resource) in stale.items():
        if name not in latest:  # only the newest result is read: say why there is none for this analyte
            analyte = pack.analytes[name]
            record.notes.append(
                f"{resource.key}: {analyte.display} is older than {analyte.recent_months} months; not counted"
            )
    for name, (when, resource) in latest.items():
        record.labs[name] = _lab_result(name, pack.analytes[name], resource, when, record.notes)


def _tie_key(resource: Resource) -> tuple[str, str]:
    """An order-independent preference between results with the same time: by id, then by content."""
    return (str(resource.model.id or ""), str(resource.model.model_dump_json()))


def _analyte_of(obs: Any, pack: RulePack) -> str | None:
    for coding in (obs.code.coding or []) if obs.code else []:
        name = pack.analyte_by_code.get((coding.system, coding.code))
        if name is not None:
            return name
    return None


def _observation_time(obs: Any) -> Any:
    """The effective time (else issued) as FHIR gave it: a datetime, a date or a partial date string."""
    if obs.effectiveDateTime is not None:
        return obs.effectiveDateTime
    if obs.effectiveInstant is not None:
        return obs.effectiveInstant
    if obs.effectivePeriod is not None:
        return obs.effectivePeriod.end or obs.effectivePeriod.start
    return obs.issued


def _lab_result(
    name: str, analyte: Analyte, resource: Resource, when: datetime, notes: list[str]
) -> LabResult:
    obs = resource.model
    if analyte.coded_values:
        return _coded_result(name, analyte, resource, when, notes)
    quantity = obs.valueQuantity
    if quantity is None or quantity.value is None:
        notes.append(f"{resource.key} has no valueQuantity for {analyte.display}; not usable")
        return _indeterminate(name, analyte, resource, when, "no value")
    spelling = quantity.code if quantity.code and (quantity.system in (None, UCUM)) else quantity.unit
    factor = analyte.unit_factors.get(unit_key(spelling) or "")
    if factor is None:
        notes.append(f"{resource.key}: unit {spelling!r} of {analyte.display} is not understood; not usable")
        return _indeterminate(name, analyte, resource, when, f"unit {spelling!r} not understood")
    raw = float(quantity.value)
    value = raw * factor
    comparator = quantity.comparator or ""
    band, basis = _band(obs, analyte, raw, value, comparator, spelling)
    grade = _grade(analyte, band, value, comparator)
    shown = f"{comparator}{_fmt(value)} {analyte.unit}"
    if factor != 1.0:
        shown += f" (from {comparator}{_fmt(raw)} {spelling})"
    word = grade or band
    return LabResult(
        analyte=name,
        band=band,
        grade=grade,
        value=value,
        unit=analyte.unit,
        display=f"{analyte.display} {shown} ({word})",
        when=when,
        ref=resource.key,
        basis=basis,
    )


def _coded_result(
    name: str, analyte: Analyte, resource: Resource, when: datetime, notes: list[str]
) -> LabResult:
    concept = resource.model.valueCodeableConcept
    for coding in (concept.coding or []) if concept else []:
        for coded in analyte.coded_values:
            if coding.system == coded.system and coding.code == coded.code:
                return LabResult(
                    analyte=name,
                    band=coded.band,
                    grade=None,
                    value=None,
                    unit=None,
                    display=f"{analyte.display}: {coded.display}",
                    when=when,
                    ref=resource.key,
                    basis="coded",
                )
    notes.append(f"{resource.key}: value of {analyte.display} is not a code the rules know; not usable")
    return _indeterminate(name, analyte, resource, when, "value not understood")


def _indeterminate(name: str, analyte: Analyte, resource: Resource, when: datetime, why: str) -> LabResult:
    return LabResult(
        analyte=name,
        band="indeterminate",
        grade=None,
        value=None,
        unit=None,
        display=f"{analyte.display} ({why})",
        when=when,
        ref=resource.key,
        basis="none",
    )


def _band(
    obs: Any, analyte: Analyte, raw: float, value: float, comparator: str, spelling: str | None
) -> tuple[str, str]:
    """Interpretation flag first, then the result's own reference range, then the pack's defaults."""
    for concept in obs.interpretation or []:
        for coding in concept.coding or []:
            if coding.system in INTERPRETATION_SYSTEMS and coding.code in INTERPRETATION_BANDS:
                return INTERPRETATION_BANDS[coding.code], "interpretation"
    ranged = _range_band(obs, raw, comparator, spelling)
    if ranged is not None:
        return ranged, "reference-range"
    # A limit value (`<25`) may leave a strict cut-off open yet clear a looser one: `<25` ng/mL is not
    # certainly deficient (< 20) but is certainly low (< 30). Only when no cut-off is settled either
    # way is the result indeterminate.
    uncertain = False
    for threshold in analyte.thresholds:
        if threshold.below is not None:
            side = _side(value, comparator, threshold.below, inclusive_upper=False)
            if side == "under":
                return threshold.band, "default"
        else:
            bound = threshold.above if threshold.above is not None else threshold.at_or_above
            assert bound is not None
            side = _side(value, comparator, bound, inclusive_upper=threshold.above is not None)
            if side == "over":
                return threshold.band, "default"
        uncertain = uncertain or side == "unknown"
    return ("indeterminate" if uncertain else "normal"), "default"


def _side(value: float, comparator: str, bound: float, *, inclusive_upper: bool) -> str:
    """Where the true value lies against `bound`: 'under', 'over', or 'unknown'.

    With `inclusive_upper` False the split is x < bound | x >= bound (for `below` and `at_or_above`);
    with it True the split is x <= bound | x > bound (for `above`).
    CAUTION: a comparator makes the value a limit: `<10` is certainly under 20, `<50` is not.

        >>> _side(10, "<", 20, inclusive_upper=False), _side(50, "<", 20, inclusive_upper=False)
        ('under', 'unknown')
        >>> _side(60, ">", 60, inclusive_upper=False)
        'over'
    """
    if comparator == "":
        under = value <= bound if inclusive_upper else value < bound
        return "under" if under else "over"
    if comparator == "<":
        return "under" if value <= bound else "unknown"
    if comparator == "<=":
        return "under" if (value <= bound if inclusive_upper else value < bound) else "unknown"
    if comparator == ">":
        return "over" if value >= bound else "unknown"
    if comparator == ">=":
        return "over" if (value > bound if inclusive_upper else value >= bound) else "unknown"
    return "unknown"  # "ad" (sufficient to achieve) says nothing about the value


def _range_band(obs: Any, raw: float, comparator: str, spelling: str | None) -> str | None:
    for rng in obs.referenceRange or []:
        kind = rng.type.coding[0].code if rng.type and rng.type.coding else None
        if kind not in (None, "normal"):
            continue
        low = _range_value(rng.low, spelling)
        high = _range_value(rng.high, spelling)
        if low is None and high is None:
            continue
        if low == 0 and high == 0:
            continue  # CAUTION: some systems send 0-0 placeholder ranges; they say nothing
        if low is not None and high is not None and low >= high:
            continue
        if low is not None and _side(raw, comparator, low, inclusive_upper=False) == "under":
            return "low"
        if high is not None and _side(raw, comparator, high, inclusive_upper=True) == "over":
            return "high"
        if comparator:
            return None
        return "normal"
    return None


def _range_value(quantity: Any, spelling: str | None) -> float | None:
    if quantity is None or quantity.value is None:
        return None
    unit = quantity.code or quantity.unit
    if unit is not None and unit_key(unit) != unit_key(spelling):
        return None  # only a range in the value's own unit is trusted
    return float(quantity.value)


def _grade(analyte: Analyte, band: str, value: float, comparator: str) -> str | None:
    graded = [t for t in analyte.thresholds if t.band == band and t.grade]
    for threshold in graded:
        if threshold.below is not None:
            if _side(value, comparator, threshold.below, inclusive_upper=False) == "under":
                return threshold.grade
        else:
            bound = threshold.above if threshold.above is not None else threshold.at_or_above
            assert bound is not None
            if _side(value, comparator, bound, inclusive_upper=threshold.above is not None) == "over":
                return threshold.grade
    # The lab flags the band but the value is beyond every default cut-off: the mildest low grade.
    if band == "low" and graded:
        return graded[-1].grade
    return None


def _fmt(number: float) -> str:
    return f"{round(number, 2):g}"


# --- Conditions and medications -------------------------------------------------------------------


def _concept_codes(concept: Any) -> list[tuple[str | None, str | None, str | None]]:
    if concept is None:
        return []
    return [(c.system, c.code, c.display) for c in concept.coding or []]


def _concept_text(concept: Any) -> str:
    if concept is None:
        return ""
    parts = [concept.text or ""] + [c.display or "" for c in concept.coding or []]
    return " ".join(p for p in parts if p)


def _read_condition(record: PatientRecord, resource: Resource, pack: RulePack, now: datetime) -> None:
    cond = resource.model
    clinical = _first_code(cond.clinicalStatus)
    verification = _first_code(cond.verificationStatus)
    if clinical not in ACTIVE_CONDITION or verification in REFUTED:
        return
    codes = _concept_codes(cond.code)
    onset = (
        parse_fhir_datetime(cond.onsetDateTime)
        if cond.onsetDateTime is not None
        else (parse_fhir_datetime(cond.onsetPeriod.start) if cond.onsetPeriod is not None else None)
    )
    exact, prefixes = pack.condition_index
    groups: dict[str, None] = {}
    for system, code, _ in codes:
        if system is None or code is None:
            continue
        groups.update(dict.fromkeys(exact.get((system, code), ())))
        groups.update(dict.fromkeys(g for s, p, g in prefixes if s == system and _prefix_match(code, p)))
    if not groups:
        return
    months = whole_months_between(onset, now) if onset is not None else None
    display = _short(cond.code, "condition")
    for group in groups:
        record.conditions.append(Hit(group=group, ref=resource.key, display=display, onset_months=months))


def _prefix_match(code: str, prefix: str) -> bool:
    """ICD-10-CM families: `E03` matches E03, E03.9 and E039; `K90.0` matches itself and K90.0x."""
    return code == prefix or code.startswith(prefix + ".") or (code.startswith(prefix) and "." not in prefix)


def _first_code(concept: Any) -> str | None:
    if concept is None or not concept.coding:
        return None
    return str(concept.coding[0].code)


def _short(concept: Any, fallback: str) -> str:
    if concept is not None:
        if concept.text:
            return str(concept.text)
        for coding in concept.coding or []:
            if coding.display:
                return str(coding.display)
    return fallback


def _read_medication(
    record: PatientRecord,
    resource: Resource,
    pack: RulePack,
    by_url: Mapping[str, Resource],
    by_key: Mapping[str, Resource],
) -> None:
    med = resource.model
    if med.status != "active":
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
            concept_text = str(med.medicationReference.display or "")
            _match_medication(record, resource, pack, [], concept_text, concept_text or "medication")
            return
    _match_medication(
        record, resource, pack, _concept_codes(concept), _concept_text(concept), _short(concept, "medication")
    )


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


# --- Questionnaire answers ------------------------------------------------------------------------


def _read_answers(record: PatientRecord, responses: Sequence[Resource], pack: RulePack) -> None:
    known = pack.question_types
    base_url = pack.questionnaire_url
    candidates: list[tuple[datetime, Resource]] = []
    for resource in responses:
        qr = resource.model
        if qr.status not in QR_STATUSES:
            continue
        ours = str(qr.questionnaire or "").split("|")[0] == base_url
        if not ours and not any(link in known for link in _link_ids(qr.item or [])):
            record.notes.append(f"{resource.key} answers another questionnaire; ignored")
            continue
        when = (
            parse_fhir_datetime(qr.authored)
            or (parse_fhir_datetime(qr.meta.lastUpdated) if qr.meta is not None else None)
            or EARLIEST
        )
        candidates.append((when, resource))
    if not candidates:
        return
    _, latest = max(candidates, key=lambda pair: pair[0])
    for item in _walk(latest.model.item or []):
        kind = known.get(item.linkId)
        if kind is None or not item.answer:
            continue
        value = _answer_value(item.answer[0], kind)
        if value is None:
            record.notes.append(f"{latest.key}: answer to {item.linkId} is not a {kind}; ignored")
            continue
        record.answers[item.linkId] = Answer(link_id=item.linkId, value=value, ref=latest.key)


def _link_ids(items: Sequence[Any]) -> Iterable[str]:
    for item in _walk(items):
        yield item.linkId


def _walk(items: Sequence[Any]) -> Iterable[Any]:
    for item in items:
        yield item
        yield from _walk(item.item or [])
        for answer in item.answer or []:
            yield from _walk(answer.item or [])


def _answer_value(answer: Any, kind: str) -> bool | int | None:
    if kind == "integer":
        if answer.valueInteger is not None and answer.valueInteger >= 0:
            return int(answer.valueInteger)
        if answer.valueDecimal is not None and answer.valueDecimal == int(answer.valueDecimal) >= 0:
            return int(answer.valueDecimal)
        return None
    if answer.valueBoolean is not None:
        return bool(answer.valueBoolean)
    coding = answer.valueCoding
    if coding is not None:
        return YES_NO_CODES.get((coding.system, coding.code))
    return None
