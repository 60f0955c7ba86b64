"""Conditions: active, not refuted, in a value set -> hits with their onset."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cds.fhirvalues import months_back, parse_fhir_datetime
from cds.intake import Resource
from cds.record.codes import concept_codes, first_code, icd_key, prefix_match, raw_codings, short
from cds.record.model import Hit, PatientRecord
from cds.rulepack import RulePack

ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
REFUTED = frozenset({"refuted", "entered-in-error"})


def condition_wanted(pack: RulePack) -> Any:
    """Pre-validation filter: does this raw Condition carry a code of some value set?"""
    exact = {
        (c.system, icd_key(c.system, c.code)) for vs in pack.valuesets.conditions.values() for c in vs.codes
    }
    prefixes = [(p.system, p.prefix) for vs in pack.valuesets.conditions.values() for p in vs.prefixes]

    def wanted(resource: Mapping[str, Any]) -> bool:
        for system, code in raw_codings(resource.get("code")):
            if isinstance(code, str) and (system, icd_key(system, code)) in exact:
                return True
            if isinstance(code, str) and any(system == s and prefix_match(code, p) for s, p in prefixes):
                return True
        return False

    return wanted


def read_condition(record: PatientRecord, resource: Resource, pack: RulePack, now: datetime) -> None:
    cond = resource.model
    clinical = first_code(cond.clinicalStatus)
    verification = first_code(cond.verificationStatus)
    if verification in REFUTED:
        record.notes.append(f"{resource.key} is {verification}; not counted")
        return
    if clinical not in ACTIVE_CONDITION:
        return  # resolved, inactive or in remission: history, not a current condition
    codes = concept_codes(cond.code)
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
        groups.update(dict.fromkeys(exact.get((system, icd_key(system, code)), ())))
        groups.update(dict.fromkeys(g for s, p, g in prefixes if s == system and prefix_match(code, p)))
    if not groups:
        return
    months = months_back(onset, now) if onset is not None else None
    display = short(cond.code, "condition")
    when = onset or parse_fhir_datetime(cond.recordedDate)
    for group in groups:
        record.conditions.append(
            Hit(group=group, ref=resource.key, display=display, onset_months=months, when=when)
        )
