"""Observations: laboratory results and measurements -> one LabResult per analyte (units converted, bands set)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cds.fhirvalues import is_after, parse_fhir_datetime, start_of_day, subtract_months, unit_key
from cds.intake import Resource
from cds.record.codes import raw_codings
from cds.record.model import LabResult, PatientRecord
from cds.rulepack import Analyte, RulePack

OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected"})
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


def observation_wanted(pack: RulePack) -> Any:
    """A cheap pre-validation filter: does this raw Observation carry a code the pack reads?"""
    codes = pack.analyte_by_code

    def wanted(resource: Mapping[str, Any]) -> bool:
        return any(pair in codes for pair in raw_codings(resource.get("code")))

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
    # Results tied on time are all kept: read_labs picks among them by content, not by entry order.
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
        analyte = next((codes[p] for p in raw_codings(resource.get("code")) if p in codes), None)
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


# --- Observations ---------------------------------------------------------------------------------


def read_labs(record: PatientRecord, observations: Sequence[Resource], pack: RulePack, now: datetime) -> None:
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
