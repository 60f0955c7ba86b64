"""The hazard log (`rules/hazards.yaml`): load it, check it, and tie every hazard to the rules and cases
that mitigate it.

The log follows the shape of a clinical risk management file for health IT (NHS DCB0129): hazard,
cause, effect, initial risk, controls, residual risk, status. Risk is looked up in the file's own
matrix from severity and likelihood, so a hazard cannot claim a risk the matrix does not give.

A hazard that names no mitigating rule, a rule or case that is not in the pack, or no case at all is
an error naming the hazard and the field (`cds rules check` and the test suite run this check).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds.errors import RulePackError
from cds.rulepack import RulePack
from cds.yamltext import load_yaml

HAZARDS_FILE = "hazards.yaml"
Status = Literal["open", "mitigated", "accepted", "transferred"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scale(_Model):
    """One step of a severity or likelihood scale: its id and what it means."""

    id: str = Field(pattern=r"^[a-z][a-z-]*$")
    meaning: str


class RiskLevel(_Model):
    level: int = Field(ge=1, le=5)
    meaning: str


class Control(_Model):
    """One mitigation: the rules that carry it and the wording a clinician sees."""

    rules: tuple[str, ...] = Field(min_length=1)
    wording: str = Field(min_length=1)


class Residual(_Model):
    severity: str
    likelihood: str
    risk: int = Field(ge=1, le=5)


class Hazard(_Model):
    id: str = Field(pattern=r"^HAZ-[0-9]{3}$")
    title: str
    description: str
    cause: str
    effect: str
    severity: str
    likelihood: str
    initial_risk: int = Field(ge=1, le=5)
    controls: tuple[Control, ...] = Field(min_length=1)
    # "rule-id::case-id" of the rule cases that prove the controls work.
    cases: tuple[str, ...] = Field(min_length=1)
    residual: Residual
    status: Status
    owner: str
    issue_class: int | None = Field(default=None, ge=1, le=99)
    notes: str | None = None


class HazardLog(_Model):
    severity: tuple[Scale, ...] = Field(min_length=2)
    likelihood: tuple[Scale, ...] = Field(min_length=2)
    risk_levels: tuple[RiskLevel, ...] = Field(min_length=2)
    # matrix[likelihood][severity] -> risk level
    matrix: dict[str, dict[str, int]]
    hazards: tuple[Hazard, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _matrix_complete(self) -> HazardLog:
        severities = [s.id for s in self.severity]
        for likelihood in self.likelihood:
            row = self.matrix.get(likelihood.id)
            if row is None or sorted(row) != sorted(severities):
                raise ValueError(f"matrix row {likelihood.id!r} must give a risk for every severity")
        return self

    def risk(self, severity: str, likelihood: str) -> int:
        return self.matrix[likelihood][severity]


def load_hazards(pack: RulePack, path: Path | None = None) -> HazardLog:
    """Read and check the hazard log that sits next to the pack's manifest."""
    path = path or pack.root / HAZARDS_FILE
    shown = f"{pack.root.name}/{path.name}"
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulePackError(f"cannot read file ({exc.strerror})", resource=shown) from None
    except yaml.YAMLError as exc:
        raise RulePackError(f"not valid YAML: {exc}", resource=shown) from None
    try:
        log = HazardLog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise RulePackError(first["msg"], resource=shown, field=where) from None
    check_hazards(log, pack, shown)
    return log


def check_hazards(log: HazardLog, pack: RulePack, shown: str = HAZARDS_FILE) -> None:
    """Every hazard: known scales, the matrix's risk, rules and cases that exist in the pack."""
    severities = {s.id for s in log.severity}
    likelihoods = {s.id for s in log.likelihood}
    cases = {f"{rule.id}::{case.id}" for rule in pack.rules_by_id.values() for case in rule.cases}
    seen: set[str] = set()
    for index, hazard in enumerate(log.hazards):
        where = f"hazards.{index}"

        def fail(message: str, field: str, *, _where: str = where, _id: str = hazard.id) -> None:
            raise RulePackError(f"{_id}: {message}", resource=shown, field=f"{_where}.{field}")

        if hazard.id in seen:
            fail("duplicate hazard id", "id")
        seen.add(hazard.id)
        for name, value, known in (
            ("severity", hazard.severity, severities),
            ("likelihood", hazard.likelihood, likelihoods),
            ("residual.severity", hazard.residual.severity, severities),
            ("residual.likelihood", hazard.residual.likelihood, likelihoods),
        ):
            if value not in known:
                fail(f"unknown {name.split('.')[-1]} {value!r}", name)
        expected = log.risk(hazard.severity, hazard.likelihood)
        if hazard.initial_risk != expected:
            fail(f"the matrix gives risk {expected}, not {hazard.initial_risk}", "initial_risk")
        expected = log.risk(hazard.residual.severity, hazard.residual.likelihood)
        if hazard.residual.risk != expected:
            fail(f"the matrix gives risk {expected}, not {hazard.residual.risk}", "residual.risk")
        mitigating: set[str] = set()
        for c_index, control in enumerate(hazard.controls):
            for r_index, rule in enumerate(control.rules):
                if rule not in pack.rules_by_id:
                    fail(
                        f"names rule {rule!r}, which is not in the pack",
                        f"controls.{c_index}.rules.{r_index}",
                    )
                mitigating.add(rule)
        for c_index, case in enumerate(hazard.cases):
            if case not in cases:
                fail(f"names case {case!r}, which is not in the pack", f"cases.{c_index}")
            if case.split("::", 1)[0] not in mitigating:
                fail(f"case {case!r} belongs to no mitigating rule of this hazard", f"cases.{c_index}")
        if hazard.status == "mitigated" and hazard.residual.risk > hazard.initial_risk:
            fail("residual risk is above the initial risk", "residual.risk")


def hazards_by_rule(log: HazardLog) -> Mapping[str, tuple[Hazard, ...]]:
    """rule id -> the hazards it mitigates, in log order."""
    found: dict[str, list[Hazard]] = {}
    for hazard in log.hazards:
        for rule in dict.fromkeys(r for control in hazard.controls for r in control.rules):
            found.setdefault(rule, []).append(hazard)
    return {rule: tuple(hazards) for rule, hazards in found.items()}
