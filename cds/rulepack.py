"""Load, validate and compile the rule pack in `rules/`: value sets, analytes, orders, rules and their cases.

A wrong file stops start-up with a RulePackError that names the file and the field, for example
`rules/topics/lifestyle.yaml: rules.0.indicator: Input should be 'info', 'warning' or 'critical'`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cds.errors import RulePackError
from cds.facttypes import COMMON_FIELDS, FACT_FIELDS, Scalar, value_has_type
from cds.fhirvalues import unit_key
from cds.yamltext import load_yaml

M = TypeVar("M", bound=BaseModel)
Source = Literal["V", "C", "U"]
Indicator = Literal["info", "warning", "critical"]
INDICATOR_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
QUESTIONNAIRE_UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
OPERATORS = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte", "ne": "$neq"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeEntry(_Model):
    system: str
    code: str
    display: str
    source: Source
    checked: str


class PrefixEntry(_Model):
    system: str
    prefix: str
    display: str
    source: Source
    checked: str


class ConditionSet(_Model):
    display: str
    codes: tuple[CodeEntry, ...] = ()
    prefixes: tuple[PrefixEntry, ...] = ()


class MedicationSet(_Model):
    display: str
    codes: tuple[CodeEntry, ...] = ()
    text: tuple[str, ...] = ()


class ValueSets(_Model):
    conditions: dict[str, ConditionSet]
    medications: dict[str, MedicationSet]


class UnitRule(_Model):
    spellings: tuple[str, ...] = Field(min_length=1)
    multiply: float | None = None
    divide: float | None = None

    @model_validator(mode="after")
    def _one_factor(self) -> UnitRule:
        if (self.multiply is None) == (self.divide is None):
            raise ValueError("give exactly one of multiply or divide")
        if (self.divide is not None and self.divide <= 0) or (
            self.multiply is not None and self.multiply <= 0
        ):
            raise ValueError("factors must be positive")
        return self

    @property
    def factor(self) -> float:
        return self.multiply if self.multiply is not None else 1.0 / (self.divide or 1.0)


class Threshold(_Model):
    """A cut-off in the analyte's canonical unit. `below`/`at_or_below` make a low band,
    `above`/`at_or_above` a high one. Critical cut-offs name where they come from."""

    band: Literal["low", "high"]
    grade: str | None = None
    below: float | None = None
    at_or_below: float | None = None
    above: float | None = None
    at_or_above: float | None = None
    source: str | None = None
    year: int | None = Field(default=None, ge=1950, le=2100)
    certainty: Literal["established", "consensus", "uncertain"] | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        given = [b for b in (self.below, self.at_or_below, self.above, self.at_or_above) if b is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of below, at_or_below, above or at_or_above")
        if self.band == "low" and self.below is None and self.at_or_below is None:
            raise ValueError("a low band needs `below` or `at_or_below`")
        if self.band == "high" and (self.below is not None or self.at_or_below is not None):
            raise ValueError("a high band needs `above` or `at_or_above`")
        return self

    @property
    def bound(self) -> float:
        """The cut-off value, whichever of the four fields holds it."""
        for value in (self.below, self.at_or_below, self.above, self.at_or_above):
            if value is not None:
                return value
        raise AssertionError("validated: one bound is set")

    @property
    def inclusive_upper(self) -> bool:
        """True when the split is x <= bound | x > bound (`at_or_below`, `above`)."""
        return self.at_or_below is not None or self.above is not None

    @property
    def crossed_side(self) -> str:
        """The side of the bound (see cds.record.labs.side) on which this threshold holds."""
        return "under" if self.band == "low" else "over"


class CodedValue(_Model):
    system: str
    code: str
    band: Literal["positive", "negative"]
    display: str


class Analyte(_Model):
    display: str
    unit: str | None = None
    recent_months: int = Field(ge=1, le=120)
    codes: tuple[CodeEntry, ...] = Field(min_length=1)
    units: tuple[UnitRule, ...] = ()
    # Reporting precision in the canonical unit: a converted value is rounded to it before any cut-off.
    decimals: int = Field(default=2, ge=0, le=4)
    thresholds: tuple[Threshold, ...] = ()
    # Critical (panic) cut-offs: a result beyond one needs action today. Each names source, year, certainty.
    critical: tuple[Threshold, ...] = ()
    coded_values: tuple[CodedValue, ...] = ()

    @field_validator("critical")
    @classmethod
    def _sourced(cls, critical: tuple[Threshold, ...]) -> tuple[Threshold, ...]:
        for index, threshold in enumerate(critical):
            if threshold.source is None or threshold.year is None or threshold.certainty is None:
                raise ValueError(f"critical cut-off {index} needs source, year and certainty")
        return critical

    @property
    def shown_unit(self) -> str | None:
        """The canonical unit as a person reads it: no UCUM braces (`mL/min/{1.73_m2}` -> `mL/min/1.73 m²`)."""
        return readable_unit(self.unit) if self.unit is not None else None

    @cached_property
    def unit_factors(self) -> dict[str, float]:
        table: dict[str, float] = {}
        for rule in self.units:
            for spelling in rule.spellings:
                key = unit_key(spelling)
                if key is not None:
                    table[key] = rule.factor
        return table


def readable_unit(unit: str) -> str:
    """A UCUM unit for display: annotations lose their braces, `_` becomes a space, m2 becomes m².

    >>> readable_unit("mL/min/{1.73_m2}"), readable_unit("kg/m2"), readable_unit("m[IU]/L")
    ('mL/min/1.73 m²', 'kg/m²', 'mIU/L')
    """
    text = unit.replace("{", "").replace("}", "").replace("[", "").replace("]", "").replace("_", " ")
    return re.sub(r"(?<=[a-zA-Z])2\b", "²", text)


class Order(_Model):
    label: str
    code: CodeEntry
    covers: str | None = None


class CaseSpec(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    given: dict[str, Any] = Field(default_factory=dict)
    expect: Literal["fires", "silent"]
    indicator: Indicator | None = None
    now: str | None = None
    # Wording checks on the rule's card (summary and detail), case-insensitive: what it must and must not say.
    card_says: tuple[str, ...] = ()
    card_lacks: tuple[str, ...] = ()


class RuleSpec(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    when: tuple[dict[str, Any], ...]
    then: dict[str, str] | None = None
    indicator: Indicator | None = None
    summary: str | None = None
    suggest: tuple[str, ...] = ()
    cases: tuple[CaseSpec, ...] = Field(min_length=2)

    @field_validator("cases")
    @classmethod
    def _both_ways(cls, cases: tuple[CaseSpec, ...]) -> tuple[CaseSpec, ...]:
        outcomes = {case.expect for case in cases}
        if outcomes != {"fires", "silent"}:
            raise ValueError("each rule needs at least one case where it fires and one where it stays silent")
        return cases


class OverrideReason(_Model):
    code: str
    display: str


class Withhold(_Model):
    """Advice that can harm a subgroup: when any of these findings holds, `say` replaces the advice."""

    when: tuple[str, ...] = Field(min_length=1)
    say: str = Field(min_length=1)


class Advice(_Model):
    """One piece of advice on a card. `when`: shown only if one of these findings holds (a caution);
    `withhold`: replaced by the reason it is withheld if one of its findings holds. `source` names the
    guideline or label (with year) and `certainty` how sure the pack is of it."""

    text: str = Field(min_length=1)
    when: tuple[str, ...] = ()
    withhold: Withhold | None = None
    source: str | None = None
    certainty: Literal["established", "probable", "uncertain"] | None = None


class TopicSpec(_Model):
    topic: str
    display: str
    requires: tuple[str, ...] = ()
    detail: str
    advice: tuple[Advice, ...] = ()
    suggest: tuple[str, ...] = ()
    only_unsuggested: bool = False
    override_reasons: tuple[OverrideReason, ...] = ()
    rules: tuple[RuleSpec, ...] = Field(min_length=1)


class FindingsSpec(_Model):
    rules: tuple[RuleSpec, ...]


class PackManifest(_Model):
    id: str
    version: str
    title: str
    topic_system: str
    override_reason_system: str
    questionnaire: str
    analytes: str
    valuesets: str
    orders: str
    findings: str
    topics: tuple[str, ...] = Field(min_length=1)
    case_now: str
    # How many months a questionnaire answer counts (by QuestionnaireResponse.authored): `default`, and
    # per linkId where an item needs another window. Reasons are given in pack.yaml.
    answer_windows: dict[str, int] = Field(default_factory=lambda: {"default": 12})

    @field_validator("answer_windows")
    @classmethod
    def _has_default(cls, windows: dict[str, int]) -> dict[str, int]:
        if "default" not in windows:
            raise ValueError("answer_windows needs a `default`")
        if any(not 1 <= months <= 120 for months in windows.values()):
            raise ValueError("answer windows are 1 to 120 months")
        return windows


@dataclass(frozen=True)
class CompiledRule:
    """A rule in the engine's terms: durable_rules patterns plus the fact the rule produces."""

    id: str
    patterns: tuple[dict[str, Any], ...]
    produces: dict[str, Scalar]
    topic: str | None = None


@dataclass(frozen=True)
class Topic:
    spec: TopicSpec
    order: int

    @property
    def name(self) -> str:
        return self.spec.topic


@dataclass(frozen=True)
class RulePack:
    """The loaded pack: everything the pipeline needs, validated and cross-checked."""

    root: Path
    manifest: PackManifest
    analytes: Mapping[str, Analyte]
    valuesets: ValueSets
    orders: Mapping[str, Order]
    findings: tuple[RuleSpec, ...]
    topics: Mapping[str, Topic]
    questionnaire: Mapping[str, Any]
    compiled: tuple[CompiledRule, ...] = field(default=())

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def questionnaire_url(self) -> str:
        return str(self.questionnaire["url"])

    @cached_property
    def rules_by_id(self) -> dict[str, RuleSpec]:
        rules = {rule.id: rule for rule in self.findings}
        for topic in self.topics.values():
            rules.update({rule.id: rule for rule in topic.spec.rules})
        return rules

    @cached_property
    def topic_of_rule(self) -> dict[str, str]:
        return {rule.id: t.name for t in self.topics.values() for rule in t.spec.rules}

    @cached_property
    def question_types(self) -> dict[str, str]:
        """linkId -> 'integer' or 'boolean', for every answerable item of the Questionnaire."""
        found: dict[str, str] = {}

        def walk(items: Sequence[Mapping[str, Any]]) -> None:
            for item in items:
                if item.get("type") in {"integer", "boolean"}:
                    found[str(item["linkId"])] = str(item["type"])
                walk(item.get("item", ()))

        walk(self.questionnaire.get("item", ()))
        return found

    def answer_window(self, link_id: str) -> int:
        """Months an answer to `link_id` counts."""
        windows = self.manifest.answer_windows
        return windows.get(link_id, windows["default"])

    @cached_property
    def link_ids(self) -> frozenset[str]:
        """Every linkId of the Questionnaire, groups included."""
        found: set[str] = set()

        def walk(items: Sequence[Mapping[str, Any]]) -> None:
            for item in items:
                found.add(str(item["linkId"]))
                walk(item.get("item", ()))

        walk(self.questionnaire.get("item", ()))
        return frozenset(found)

    @cached_property
    def question_units(self) -> dict[str, str]:
        """linkId -> how a number answer is read ("a week"), from the questionnaire-unit extension."""
        found: dict[str, str] = {}

        def walk(items: Sequence[Mapping[str, Any]]) -> None:
            for item in items:
                for extension in item.get("extension", ()):
                    if extension.get("url") == QUESTIONNAIRE_UNIT:
                        coding = extension.get("valueCoding", {})
                        found[str(item["linkId"])] = str(coding.get("display") or coding.get("code"))
                walk(item.get("item", ()))

        walk(self.questionnaire.get("item", ()))
        return found

    @cached_property
    def analyte_by_code(self) -> dict[tuple[str, str], str]:
        return {(c.system, c.code): name for name, a in self.analytes.items() for c in a.codes}

    @cached_property
    def condition_index(
        self,
    ) -> tuple[dict[tuple[str, str], tuple[str, ...]], tuple[tuple[str, str, str], ...]]:
        """(system, code) -> condition groups, and (system, prefix, group) for ICD-10-CM families.
        ICD-10-CM codes are keyed without their dot, in upper case (see cds.record.codes.icd_key)."""
        exact: dict[tuple[str, str], tuple[str, ...]] = {}
        prefixes: list[tuple[str, str, str]] = []
        for group, vs in self.valuesets.conditions.items():
            for c in vs.codes:
                key = (c.system, c.code.replace(".", "").upper() if c.system == ICD10CM else c.code)
                exact[key] = (*exact.get(key, ()), group)
            prefixes.extend((p.system, p.prefix, group) for p in vs.prefixes)
        return exact, tuple(prefixes)

    @cached_property
    def medication_index(self) -> tuple[dict[tuple[str, str], tuple[str, ...]], tuple[tuple[str, str], ...]]:
        """(system, code) -> medication groups, and (name, group) for matching on text."""
        exact: dict[tuple[str, str], tuple[str, ...]] = {}
        names: list[tuple[str, str]] = []
        for group, vs in self.valuesets.medications.items():
            for c in vs.codes:
                exact[(c.system, c.code)] = (*exact.get((c.system, c.code), ()), group)
            names.extend((name, group) for name in vs.text)
        return exact, tuple(names)

    def order_codes(self) -> dict[str, tuple[str, ...]]:
        """LOINC codes per analyte, for prefetch templates."""
        return {name: tuple(c.code for c in a.codes) for name, a in self.analytes.items()}


def _read(path: Path, root: Path) -> Any:
    name = _display_path(path, root)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulePackError(f"cannot read file ({exc.strerror})", resource=name) from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return load_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RulePackError(f"not valid {path.suffix.lstrip('.').upper()}: {exc}", resource=name) from None


def _display_path(path: Path, root: Path) -> str:
    try:
        return str(Path(root.name) / path.relative_to(root))
    except ValueError:
        return str(path)


def _parse(model: type[M], data: Any, path: Path, root: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise RulePackError(first["msg"], resource=_display_path(path, root), field=where) from None


def load_rule_pack(root: Path) -> RulePack:
    """Read every file of the pack under `root`, validate each, cross-check them and compile the rules."""
    root = root.resolve()
    manifest_path = root / "pack.yaml"
    manifest = _parse(PackManifest, _read(manifest_path, root), manifest_path, root)

    raw_analytes = _read(root / manifest.analytes, root)
    if not isinstance(raw_analytes, dict):
        raise RulePackError(
            "expected a mapping of analyte ids", resource=_display_path(root / manifest.analytes, root)
        )
    analytes = {
        name: _parse(Analyte, body, root / manifest.analytes, root) for name, body in raw_analytes.items()
    }
    valuesets = _parse(ValueSets, _read(root / manifest.valuesets, root), root / manifest.valuesets, root)
    raw_orders = _read(root / manifest.orders, root)
    if not isinstance(raw_orders, dict):
        raise RulePackError(
            "expected a mapping of order ids", resource=_display_path(root / manifest.orders, root)
        )
    orders = {name: _parse(Order, body, root / manifest.orders, root) for name, body in raw_orders.items()}
    findings = _parse(FindingsSpec, _read(root / manifest.findings, root), root / manifest.findings, root)
    questionnaire = _read(root / manifest.questionnaire, root)
    _check_questionnaire(questionnaire, root / manifest.questionnaire, root)

    topics: dict[str, Topic] = {}
    for order, rel in enumerate(manifest.topics):
        spec = _parse(TopicSpec, _read(root / rel, root), root / rel, root)
        if Path(rel).stem != spec.topic:
            raise RulePackError(
                f"topic {spec.topic!r} must live in {spec.topic}.yaml",
                resource=_display_path(root / rel, root),
                field="topic",
            )
        topics[spec.topic] = Topic(spec=spec, order=order)

    pack = RulePack(
        root=root,
        manifest=manifest,
        analytes=analytes,
        valuesets=valuesets,
        orders=orders,
        findings=findings.rules,
        topics=topics,
        questionnaire=questionnaire,
    )
    for link_id in manifest.answer_windows:
        if link_id != "default" and link_id not in pack.question_types:
            raise RulePackError(
                f"unknown linkId {link_id!r}",
                resource=_display_path(manifest_path, root),
                field=f"answer_windows.{link_id}",
            )
    compiled = _compile(pack)
    return dataclasses.replace(pack, compiled=compiled)


def _check_questionnaire(data: Any, path: Path, root: Path) -> None:
    # Imported here: fhir.resources is heavy and only this check needs it at load time.
    from fhir.resources.R4B.questionnaire import Questionnaire

    name = _display_path(path, root)
    try:
        Questionnaire.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RulePackError(first["msg"], resource=name, field=".".join(map(str, first["loc"]))) from None
    if not isinstance(data, dict) or not data.get("url"):
        raise RulePackError("the Questionnaire needs a canonical url", resource=name, field="url")


def _compile(pack: RulePack) -> tuple[CompiledRule, ...]:
    """Check every rule against the vocabulary and turn it into engine patterns."""
    compiled: list[CompiledRule] = []
    seen: set[str] = set()
    findings_made = {rule.then.get("finding") for rule in pack.findings if rule.then}
    sources: list[tuple[str, RuleSpec, TopicSpec | None]] = [
        (_display_path(pack.root / pack.manifest.findings, pack.root), rule, None) for rule in pack.findings
    ]
    for rel, entry in zip(pack.manifest.topics, pack.topics.values(), strict=True):
        shown = _display_path(pack.root / rel, pack.root)
        sources.extend((shown, rule, entry.spec) for rule in entry.spec.rules)

    for rel, rule, topic in sources:
        where = f"rules.{_rule_index(rule, topic, pack)}"
        if rule.id in seen:
            raise RulePackError(f"duplicate rule id {rule.id!r}", resource=rel, field=f"{where}.id")
        seen.add(rule.id)
        patterns = list(rule.when)
        if topic is None:
            if not rule.then or set(rule.then) != {"finding"}:
                raise RulePackError(
                    "a findings rule needs `then: {finding: <name>}`", resource=rel, field=f"{where}.then"
                )
            produces: dict[str, Scalar] = {"type": "finding", "name": rule.then["finding"]}
        else:
            if not rule.id.startswith(topic.topic + "."):
                raise RulePackError(
                    f"rule ids must start with {topic.topic}.", resource=rel, field=f"{where}.id"
                )
            if rule.then is not None:
                raise RulePackError(
                    "topic rules produce their cause; drop `then`", resource=rel, field=f"{where}.then"
                )
            if rule.indicator is None or rule.summary is None:
                raise RulePackError("topic rules need `indicator` and `summary`", resource=rel, field=where)
            patterns = [{"fact": "finding", "name": need} for need in topic.requires] + patterns
            produces = {"type": "cause", "topic": topic.topic, "rule": rule.id}
            for order in (*topic.suggest, *rule.suggest):
                if order not in pack.orders:
                    raise RulePackError(f"unknown order {order!r}", resource=rel, field=f"{where}.suggest")
        if not patterns:
            raise RulePackError("a rule needs at least one pattern", resource=rel, field=f"{where}.when")
        if topic is not None and rule is topic.rules[0]:
            _check_advice(topic, findings_made, rel)
        engine_patterns = tuple(
            _compile_pattern(p, pack, findings_made, rel, f"{where}.when.{i}") for i, p in enumerate(patterns)
        )
        compiled.append(
            CompiledRule(
                id=rule.id, patterns=engine_patterns, produces=produces, topic=topic.topic if topic else None
            )
        )
    return tuple(compiled)


def _check_advice(topic: TopicSpec, findings_made: set[str | None], rel: str) -> None:
    for index, advice in enumerate(topic.advice):
        named = [("when", advice.when)]
        if advice.withhold is not None:
            named.append(("withhold.when", advice.withhold.when))
        for field_name, names in named:
            for name in names:
                if name not in findings_made:
                    raise RulePackError(
                        f"unknown finding {name!r}", resource=rel, field=f"advice.{index}.{field_name}"
                    )


def _rule_index(rule: RuleSpec, topic: TopicSpec | None, pack: RulePack) -> int:
    rules = topic.rules if topic else pack.findings
    return rules.index(rule)


def _compile_pattern(
    pattern: Mapping[str, Any], pack: RulePack, findings_made: set[str | None], rel: str, where: str
) -> dict[str, Any]:
    """`{fact: lab, analyte: tsh, band: high}` -> `{'$and': [{'type': 'lab'}, {'analyte': 'tsh'}, ...]}`.

    Negation is not offered: durable_rules fires `none(...)` even when the fact arrives later in the
    same batch, so absence is stated by explicit facts (a lab fact with band "none").
    """
    kind = pattern.get("fact")
    if kind not in FACT_FIELDS or kind in {"sentinel", "cause"}:
        raise RulePackError(f"unknown fact type {kind!r}", resource=rel, field=f"{where}.fact")
    fields = FACT_FIELDS[str(kind)]
    terms: list[dict[str, Any]] = [{"type": kind}]
    for name, condition in pattern.items():
        if name == "fact":
            continue
        if name not in fields or name in COMMON_FIELDS:
            raise RulePackError(f"{kind} facts have no field {name!r}", resource=rel, field=f"{where}.{name}")
        expected = fields[name]
        if isinstance(condition, Mapping):
            if len(condition) != 1:
                raise RulePackError("give one operator per field", resource=rel, field=f"{where}.{name}")
            ((op, operand),) = condition.items()
            if op == "in":
                if not isinstance(operand, list) or not operand:
                    raise RulePackError("`in` needs a non-empty list", resource=rel, field=f"{where}.{name}")
                for item in operand:
                    _check_value(kind, name, item, expected, pack, findings_made, rel, where)
                terms.append({"$or": [{name: item} for item in operand]})
            elif op in OPERATORS:
                if expected not in (int, float):
                    raise RulePackError(
                        f"`{op}` needs a numeric field", resource=rel, field=f"{where}.{name}"
                    )
                _check_value(kind, name, operand, expected, pack, findings_made, rel, where)
                terms.append({OPERATORS[op]: {name: operand}})
            else:
                raise RulePackError(f"unknown operator {op!r}", resource=rel, field=f"{where}.{name}")
        else:
            _check_value(kind, name, condition, expected, pack, findings_made, rel, where)
            terms.append({name: condition})
    return {"$and": terms}


def _check_value(
    kind: Any,
    name: str,
    value: Any,
    expected: type,
    pack: RulePack,
    findings_made: set[str | None],
    rel: str,
    where: str,
) -> None:
    field_path = f"{where}.{name}"
    if not value_has_type(value, expected):
        raise RulePackError(f"must be {expected.__name__}", resource=rel, field=field_path)
    vocabularies: dict[tuple[str, str], Collection[Any]] = {
        ("lab", "analyte"): pack.analytes,
        ("condition", "group"): pack.valuesets.conditions,
        ("medication", "group"): pack.valuesets.medications,
        ("answer", "item"): pack.question_types,
        ("finding", "name"): findings_made,
    }
    known = vocabularies.get((kind, name))
    if known is not None and value not in known:
        raise RulePackError(f"unknown {name} {value!r}", resource=rel, field=field_path)
