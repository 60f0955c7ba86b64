"""Observations: laboratory results and measurements -> one LabResult per analyte (units converted, bands set)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from cds.fhirvalues import is_after, parse_fhir_datetime, start_of_day, subtract_months, unit_key
from cds.intake import Resource
from cds.record.codes import raw_codings
from cds.record.model import LabResult, PatientRecord
from cds.rulepack import Analyte, RulePack, Threshold

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
    """Drop Observations that a later, usable final result of the same analyte and subject supersedes.

    Only the newest usable result per analyte is read (and the unusable ones after it, to be shown),
    so only those need validating; on a Synthea-sized record this removes most of the validation work.
    Everything the raw data does not settle (an unreadable status or date) is kept, so validation
    still reports it.
    """
    codes = pack.analyte_by_code
    found: dict[tuple[Any, str], list[tuple[datetime, int, bool]]] = {}
    for index, (_, resource, _) in enumerate(entries):
        status = resource.get("status")
        if (
            resource.get("resourceType") != "Observation"
            or not isinstance(status, str)  # raw JSON: may be any value (validation reports it)
            or status not in OBSERVATION_STATUSES
        ):
            continue
        analyte = next((codes[p] for p in raw_codings(resource.get("code")) if p in codes), None)
        if analyte is None:
            continue
        raw = _raw_time(resource)
        when = parse_fhir_datetime(raw) if isinstance(raw, str) else None
        if when is None or is_after(raw, now):
            continue
        subject = resource.get("subject")
        reference = subject.get("reference") if isinstance(subject, dict) else None
        key = (reference if isinstance(reference, str) else None, analyte)
        found.setdefault(key, []).append((when, index, _raw_usable(resource, pack.analytes[analyte])))
    drop: set[int] = set()
    for items in found.values():
        # Results tied on time are all kept: read_labs picks among them by content, not by entry order.
        newest_usable = max((when for when, _, usable in items if usable), default=None)
        if newest_usable is not None:
            drop.update(index for when, index, _ in items if when < newest_usable)
    return [entry for index, entry in enumerate(entries) if index not in drop]


def _raw_usable(resource: Mapping[str, Any], analyte: Analyte) -> bool:
    """Would read_labs be able to use this raw result (a value in a known unit, or a known code)?"""
    if analyte.coded_values:
        known = {(c.system, c.code) for c in analyte.coded_values}
        return any(pair in known for pair in raw_codings(resource.get("valueCodeableConcept")))
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict):
        return False
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    code, unit = quantity.get("code"), quantity.get("unit")
    spelling = code if code and quantity.get("system") in (None, UCUM) else unit
    return isinstance(spelling, str) and unit_key(spelling) in analyte.unit_factors


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
    """Per analyte, the newest result in its window. When that one cannot be used (unit the pack does
    not know, no value, a code it does not know), it is kept as an `unreadable` result and the newest
    usable result before it in the window, if any, is used instead and marked `earlier`."""
    in_window: dict[str, dict[datetime, list[Resource]]] = {}
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
            # The tie key serialises the model (about 2.5 ms of CPU per call on a 50-resource patient
            # when it was computed for every result): only results at the same time need it.
            if (
                older is None
                or when > older[0]
                or (when == older[0] and _tie_key(resource) > _tie_key(older[1]))
            ):
                stale[analyte_name] = (when, resource)
            continue
        in_window.setdefault(analyte_name, {}).setdefault(when, []).append(resource)
    for name, (_, resource) in stale.items():
        if name not in in_window:  # only the newest result is read: say why there is none for this analyte
            analyte = pack.analytes[name]
            record.notes.append(
                f"{resource.key}: {analyte.display} is older than {analyte.recent_months} months; not counted"
            )
    for name, by_time in in_window.items():
        analyte = pack.analytes[name]
        newest_unreadable: LabResult | None = None
        for when in sorted(by_time, reverse=True):
            tied = by_time[when]
            # CAUTION: results of one analyte at the same time. Which counts must not depend on the
            # order of the entries; the choice is announced.
            chosen = tied[0] if len(tied) == 1 else max(tied, key=_tie_key)
            if len(tied) > 1:
                record.notes.append(
                    f"{' and '.join(r.key for r in sorted(tied, key=lambda r: r.key))} report "
                    f"{analyte.display} at the same time; {chosen.key} counted"
                )
            result = _lab_result(name, analyte, chosen, when, record.notes)
            if not result.usable:
                newest_unreadable = newest_unreadable or result
                continue
            if newest_unreadable is not None:
                record.notes.append(
                    f"{newest_unreadable.ref} could not be read; the earlier {chosen.key} "
                    f"({when.date().isoformat()}) is used for {analyte.display}"
                )
                result = replace(
                    result,
                    earlier=True,
                    newer_unreadable=newest_unreadable,
                    display=f"{result.display} of {when.date().isoformat()}, earlier result",
                )
            record.labs[name] = result
            break
        else:
            assert newest_unreadable is not None
            record.labs[name] = newest_unreadable


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


@dataclass(frozen=True)
class Reading:
    """A quantity as compared with the pack's cut-offs (stated in the canonical unit).

    CAUTION: a converted value carries the conversion factor's digits, not the laboratory's precision:
    magnesium 1.7 mg/dL is 0.6994 mmol/L, under 0.70 only by rounding noise. So a converted value is
    rounded (half up) to the analyte's reporting precision (`decimals` in analytes.yaml) before it is
    compared, and shown at that precision: the card never says "0.7 mmol/L (low)". A value reported in
    the canonical unit is compared exactly as reported.

        >>> Reading.of(1.7, 0.4114, 2, "").side(0.70, inclusive_upper=False)
        'over'
        >>> Reading.of(1.68, 0.4114, 2, "").value
        0.69
    """

    value: float
    comparator: str

    @staticmethod
    def of(raw: float, factor: float, decimals: int, comparator: str) -> Reading:
        if factor == 1.0:
            return Reading(value=raw, comparator=comparator)
        exact = Decimal(repr(raw)) * Decimal(repr(factor))
        rounded = exact.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
        return Reading(value=float(rounded), comparator=comparator)

    def side(self, bound: float, *, inclusive_upper: bool) -> str:
        return side(self.value, self.comparator, bound, inclusive_upper=inclusive_upper)

    def crosses(self, threshold: Threshold) -> str:
        """'yes', 'no' or 'unknown' (a limit value such as `<25` that leaves the cut-off open)."""
        found = self.side(threshold.bound, inclusive_upper=threshold.inclusive_upper)
        if found == "unknown":
            return "unknown"
        return "yes" if found == threshold.crossed_side else "no"


def _lab_result(
    name: str, analyte: Analyte, resource: Resource, when: datetime, notes: list[str]
) -> LabResult:
    obs = resource.model
    if analyte.coded_values:
        return _coded_result(name, analyte, resource, when, notes)
    quantity = obs.valueQuantity
    if quantity is None or quantity.value is None:
        notes.append(f"{resource.key} has no valueQuantity for {analyte.display}; not usable")
        return _unreadable(name, analyte, resource, when, "no value")
    spelling = quantity.code if quantity.code and (quantity.system in (None, UCUM)) else quantity.unit
    factor = analyte.unit_factors.get(unit_key(spelling) or "")
    if factor is None:
        notes.append(f"{resource.key}: unit {spelling!r} of {analyte.display} is not understood; not usable")
        shown = f"{_fmt(float(quantity.value))} {spelling}" if spelling else _fmt(float(quantity.value))
        why = f"unit {spelling!r} not known" if spelling else "no unit"
        return _unreadable(name, analyte, resource, when, why, shown=shown)
    raw = float(quantity.value)
    reading = Reading.of(raw, factor, analyte.decimals, quantity.comparator or "")
    band, basis, flagged_critical = _band(obs, analyte, reading, raw, spelling)
    critical = flagged_critical
    for threshold in analyte.critical:
        if reading.crosses(threshold) == "yes":
            critical = True
            if band not in ("low", "high"):
                band = threshold.band  # CAUTION: beyond a critical cut-off is never "normal"
    grade = _grade(analyte, band, reading)
    value = reading.value
    unit = analyte.shown_unit or ""
    comparator = reading.comparator
    shown = f"{comparator}{value:g} {unit}"
    if factor != 1.0:
        shown += f" (from {comparator}{raw:g} {spelling})"
    word = (grade or band) + (", critical" if critical else "")
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
        critical=critical,
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
    shown = (
        (concept.text or next((c.display for c in concept.coding or [] if c.display), None))
        if concept
        else None
    )
    return _unreadable(name, analyte, resource, when, "code not known", shown=shown)


def _unreadable(
    name: str, analyte: Analyte, resource: Resource, when: datetime, why: str, *, shown: str | None = None
) -> LabResult:
    what = f"{analyte.display} {shown}" if shown else analyte.display
    return LabResult(
        reported=shown,
        analyte=name,
        band="unreadable",
        grade=None,
        value=None,
        unit=None,
        display=f"{what} of {when.date().isoformat()} could not be read ({why})",
        when=when,
        ref=resource.key,
        basis="none",
        why=why,
    )


# Interpretation codes (v3 ObservationInterpretation, v2 table 0078) -> (band or None, critical).
# `<` and `>` are "off scale low/high": beyond what the analyser can measure. AA says "critically
# abnormal" without a direction: the band then comes from the range or the pack's cut-offs.
CRITICAL_FLAGS = {"LL": "low", "HH": "high", "<": "low", ">": "high", "AA": None}


def _band(
    obs: Any, analyte: Analyte, reading: Reading, raw: float, spelling: str | None
) -> tuple[str, str, bool]:
    """Interpretation flag first, then the result's own reference range, then the pack's defaults.
    Returns (band, basis, critical by flag)."""
    critical = False
    for concept in obs.interpretation or []:
        for coding in concept.coding or []:
            if coding.system not in INTERPRETATION_SYSTEMS:
                continue
            if coding.code in CRITICAL_FLAGS:
                critical = True
                direction = CRITICAL_FLAGS[coding.code]
                if direction is not None:
                    return direction, "interpretation", True
            elif coding.code in INTERPRETATION_BANDS:
                return INTERPRETATION_BANDS[coding.code], "interpretation", critical
    ranged = _range_band(obs, raw, reading.comparator, spelling)
    if ranged is not None:
        return ranged, "reference-range", critical
    # A limit value (`<25`) may leave a strict cut-off open yet clear a looser one: `<25` ng/mL is not
    # certainly deficient (< 20) but is certainly low (< 30). Only when no cut-off is settled either
    # way is the result indeterminate.
    uncertain = False
    for threshold in analyte.thresholds:
        crossed = reading.crosses(threshold)
        if crossed == "yes":
            return threshold.band, "default", critical
        uncertain = uncertain or crossed == "unknown"
    return ("indeterminate" if uncertain else "normal"), "default", critical


def side(value: float, comparator: str, bound: float, *, inclusive_upper: bool) -> str:
    """Where the true value lies against `bound`: 'under', 'over', or 'unknown'.

    With `inclusive_upper` False the split is x < bound | x >= bound (for `below` and `at_or_above`);
    with it True the split is x <= bound | x > bound (for `above` and `at_or_below`).
    CAUTION: a comparator makes the value a limit: `<10` is certainly under 20, `<50` is not.

        >>> side(10, "<", 20, inclusive_upper=False), side(50, "<", 20, inclusive_upper=False)
        ('under', 'unknown')
        >>> side(60, ">", 60, inclusive_upper=False)
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
        if low is not None and side(raw, comparator, low, inclusive_upper=False) == "under":
            return "low"
        if high is not None and side(raw, comparator, high, inclusive_upper=True) == "over":
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


def _grade(analyte: Analyte, band: str, reading: Reading) -> str | None:
    graded = [t for t in analyte.thresholds if t.band == band and t.grade]
    for threshold in graded:
        if reading.crosses(threshold) == "yes":
            return threshold.grade
    # The lab flags the band but the value is beyond every default cut-off: the mildest low grade.
    if band == "low" and graded:
        return graded[-1].grade
    return None


def _fmt(number: float) -> str:
    return f"{round(number, 4):g}"
