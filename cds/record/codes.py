"""Codings and texts of CodeableConcepts, raw (before validation) and validated, shared by the readers."""

from __future__ import annotations

from typing import Any

from cds.rulepack import ICD10CM


def raw_codings(concept: Any) -> list[tuple[Any, Any]]:
    """(system, code) pairs of unvalidated JSON; pairs that are not strings (so not hashable, and
    invalid FHIR anyway) are left out, since these filters look them up in sets."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list):
        return []
    pairs = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)]
    return [(s, c) for s, c in pairs if isinstance(s, str | None) and isinstance(c, str | None)]


def raw_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    parts = [concept.get("text")]
    codings = concept.get("coding")
    if isinstance(codings, list):
        parts += [c.get("display") for c in codings if isinstance(c, dict)]
    return " ".join(p for p in parts if isinstance(p, str))


def concept_codes(concept: Any) -> list[tuple[str | None, str | None, str | None]]:
    if concept is None:
        return []
    return [(c.system, c.code, c.display) for c in concept.coding or []]


def concept_text(concept: Any) -> str:
    if concept is None:
        return ""
    parts = [concept.text or ""] + [c.display or "" for c in concept.coding or []]
    return " ".join(p for p in parts if p)


def prefix_match(code: str, prefix: str) -> bool:
    """ICD-10-CM families, dots ignored: `E03` matches E03, E03.9 and E039; `K90.0` matches K90.0, K900
    and K90.0x."""
    return code.replace(".", "").upper().startswith(prefix.replace(".", "").upper())


def first_code(concept: Any) -> str | None:
    if concept is None or not concept.coding:
        return None
    return str(concept.coding[0].code)


SYSTEM_NAMES = {
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.whocc.no/atc": "ATC",
    "http://loinc.org": "LOINC",
}


def short(concept: Any, fallback: str) -> str:
    """How a person reads a concept: its text, else a display, else its code system and code
    (`RxNorm 198051`), else `fallback`."""
    if concept is not None:
        if concept.text:
            return str(concept.text)
        for coding in concept.coding or []:
            if coding.display:
                return str(coding.display)
        for coding in concept.coding or []:
            if coding.code:
                system = str(coding.system or "")
                return f"{SYSTEM_NAMES.get(system, system or 'code')} {coding.code}"
    return fallback


def icd_key(system: str | None, code: str) -> str:
    """ICD-10-CM codes compared without the dot and in upper case (`I872` is `I87.2`); others as they are."""
    return code.replace(".", "").strip().upper() if system == ICD10CM else code
