"""Facts: a patient record -> flat, type-checked facts for the engine, each tied to its FHIR evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

from cds.facttypes import Fact
from cds.record import PatientRecord
from cds.rulepack import RulePack


@dataclass
class FactSet:
    """The facts of one evaluation and, per fact id, the resources that are its evidence."""

    facts: list[Fact] = field(default_factory=list)
    evidence: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add(self, fact: Fact, refs: tuple[str, ...] = ()) -> None:
        fact_id = f"f{len(self.facts) + 1}"
        fact["id"] = fact_id
        self.facts.append(fact)
        self.evidence[fact_id] = refs

    @property
    def by_id(self) -> dict[str, Fact]:
        return {str(f["id"]): f for f in self.facts}


def build_facts(record: PatientRecord, pack: RulePack) -> FactSet:
    """One patient fact, one lab fact per analyte (band "none" when there is no recent result), one fact
    per matched condition, medication and answer."""
    out = FactSet()
    age = record.age
    label = f"age {age}" if age is not None else "age unknown"
    if age is not None and record.age_max is not None and record.age_max != age:
        # A partial birthDate: the youngest possible age is certain, unless some rule's age boundary
        # lies between the youngest and oldest possible age; then no age is certain enough to use.
        if any(_decides_differently(term, age, record.age_max) for term in _age_terms(pack)):
            label = f"age unknown ({age} or {record.age_max}: partial birth date)"
            age = None
        else:
            label = f"age {age} (at least; partial birth date)"
    patient: Fact = {"type": "patient", "label": label, "age_known": age is not None}
    if age is not None:
        patient["age"] = age
    out.add(patient, (record.patient_key,) if record.patient_key else ())

    for name, analyte in pack.analytes.items():
        result = record.labs.get(name)
        if result is None:
            out.add(
                {
                    "type": "lab",
                    "analyte": name,
                    "band": "none",
                    "label": f"no {analyte.display} result in {analyte.recent_months} months",
                }
            )
            continue
        label = result.display
        refs: tuple[str, ...] = (result.ref,)
        if result.newer_unreadable is not None:
            label = f"{label}; newer {result.newer_unreadable.unread_note}"
            refs = (result.newer_unreadable.ref, result.ref)
        fact: Fact = {
            "type": "lab",
            "analyte": name,
            "band": result.band,
            "label": label,
            "critical": result.critical,
            "unreadable": not result.usable or result.newer_unreadable is not None,
            "earlier": result.earlier,
        }
        if result.grade is not None:
            fact["grade"] = result.grade
        if result.value is not None:
            fact["value"] = float(result.value)
        if result.unit is not None:
            fact["unit"] = result.unit
        out.add(fact, refs)

    for hit in record.conditions:
        condition: Fact = {"type": "condition", "group": hit.group, "label": hit.display}
        if hit.onset_months is not None:
            condition["onset_months"] = hit.onset_months
        out.add(condition, (hit.ref,))

    for hit in record.medications:
        out.add({"type": "medication", "group": hit.group, "label": f"{hit.display} (active)"}, (hit.ref,))

    for answer in record.answers.values():
        question = answer.link_id.replace("-", " ")
        if isinstance(answer.value, bool):
            out.add(
                {
                    "type": "answer",
                    "item": answer.link_id,
                    "says": answer.value,
                    "label": f"{question}: {'yes' if answer.value else 'no'}",
                },
                (answer.ref,),
            )
        else:
            out.add(
                {
                    "type": "answer",
                    "item": answer.link_id,
                    "number": answer.value,
                    "label": f"{question}: {answer.value} {pack.question_units.get(answer.link_id, '')}".rstrip(),
                },
                (answer.ref,),
            )
    return out


COMPARE = {
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$neq": lambda a, b: a != b,
}


def _age_terms(pack: RulePack) -> list[tuple[str, float]]:
    """Every comparison a rule makes on the patient's age: (operator, operand)."""
    found: list[tuple[str, float]] = []
    for rule in pack.compiled:
        for pattern in rule.patterns:
            terms = pattern.get("$and", [])
            if {"type": "patient"} not in terms:
                continue
            for term in terms:
                for op, operand in term.items():
                    if isinstance(operand, dict) and "age" in operand:
                        found.append((op, operand["age"]))
                    elif op == "age":
                        found.append(("$eq", operand))
    return found


def _decides_differently(term: tuple[str, float], youngest: int, oldest: int) -> bool:
    op, bound = term
    if op == "$eq":
        return youngest <= bound <= oldest
    compare = COMPARE.get(op)
    return compare is not None and any(
        compare(a, bound) != compare(youngest, bound) for a in range(youngest, oldest + 1)
    )
