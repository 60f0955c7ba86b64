"""The vocabulary of facts: each fact type, its fields and their types, shared by rules and the engine.

The engine compares loosely (`'abc' >= 0.3` matches in durable_rules), so every fact is checked
against this table before it is asserted, and every rule pattern is checked against it at load time.
"""

from __future__ import annotations

import math
from typing import Final

Scalar = str | int | float | bool
Fact = dict[str, Scalar]

# Fields every fact carries, set by the facts builder and the engine adapter.
COMMON_FIELDS: Final[dict[str, type]] = {"id": str, "type": str, "label": str}

FACT_FIELDS: Final[dict[str, dict[str, type]]] = {
    # One per evaluation.
    # `age_known` lets a rule say "age unknown" (the rule language has no negation).
    "patient": {"age": int, "age_known": bool},
    # One per analyte in the pack; band "none" says there is no recent result, "unreadable" that the
    # recent ones cannot be used. `critical`: flagged LL/HH/AA/</> or beyond a critical cut-off of
    # analytes.yaml (the band stays low/high). `unreadable`: the newest result in the window could not be
    # read (then `earlier` says the band comes from the newest usable result before it).
    "lab": {
        "analyte": str,
        "band": str,
        "grade": str,
        "value": float,
        "unit": str,
        "critical": bool,
        "unreadable": bool,
        "earlier": bool,
    },
    # One per active condition that falls in a value set.
    "condition": {"group": str, "onset_months": int},
    # One per active medication that falls in a value set.
    "medication": {"group": str},
    # One per answered questionnaire item the pack knows: `says` for yes/no items, `number` for counts.
    "answer": {"item": str, "says": bool, "number": int},
    # Derived by rules.
    "finding": {"name": str},
    "cause": {"topic": str, "rule": str},
    # Asserted in every session so that at least one action runs (see cds/engine.py).
    "sentinel": {},
}

LAB_BANDS: Final = frozenset(
    {"none", "low", "normal", "high", "indeterminate", "positive", "negative", "unreadable"}
)


def check_fact(fact: Fact) -> None:
    """Raise TypeError unless every field of `fact` is known for its type and has that field's type."""
    kind = fact.get("type")
    if not isinstance(kind, str) or kind not in FACT_FIELDS:
        raise TypeError(f"unknown fact type {kind!r}")
    fields = FACT_FIELDS[kind]
    for name, value in fact.items():
        expected = COMMON_FIELDS.get(name) or fields.get(name)
        if expected is None:
            raise TypeError(f"{kind} fact has unknown field {name!r}")
        if not value_has_type(value, expected):
            raise TypeError(f"{kind}.{name} must be {expected.__name__}, got {type(value).__name__}")


def value_has_type(value: object, expected: type) -> bool:
    """Strict check: bool is not an int, an int is acceptable where a float is expected."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, expected)
