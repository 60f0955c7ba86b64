"""Codings and texts of CodeableConcepts, raw (before validation) and validated, shared by the readers."""

from __future__ import annotations

from typing import Any


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
    """ICD-10-CM families: `E03` matches E03, E03.9 and E039; `K90.0` matches itself and K90.0x."""
    return code == prefix or code.startswith(prefix + ".") or (code.startswith(prefix) and "." not in prefix)


def first_code(concept: Any) -> str | None:
    if concept is None or not concept.coding:
        return None
    return str(concept.coding[0].code)


def short(concept: Any, fallback: str) -> str:
    if concept is not None:
        if concept.text:
            return str(concept.text)
        for coding in concept.coding or []:
            if coding.display:
                return str(coding.display)
    return fallback
