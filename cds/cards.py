"""Cards: the engine's causes -> CDS Hooks 2.0 cards with evidence, explanation and ServiceRequest suggestions.

One card per topic that fired, in the pack's topic order. Wording comes from the rule pack; this
module only fills in the evidence. https://cds-hooks.hl7.org/2.0/#card-attributes
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cds.engine import Outcome
from cds.facts import FactSet
from cds.record import PatientRecord
from cds.rulepack import INDICATOR_RANK, RulePack, Topic, TopicSpec

SUMMARY_LIMIT = 139
EXPLANATION_KEY = "cramp-cds-explanation"


@dataclass(frozen=True)
class Trace:
    """What one rule firing rests on: the labels of its base facts and their FHIR resources."""

    labels: tuple[str, ...]
    refs: tuple[str, ...]
    priorities: tuple[int, ...] = ()

    def by_priority(self) -> tuple[str, ...]:
        """The labels, most important first (stable within a priority), for a summary that may be trimmed."""
        ranked = sorted(zip(self.priorities, range(len(self.labels)), self.labels, strict=True))
        return tuple(label for _, _, label in ranked)


def evidence_priority(fact: Mapping[str, Any]) -> int:
    """What a trimmed summary must keep: 0 critical values and pregnancy, 1 unreadable results, 2 the rest."""
    if fact.get("critical") is True:
        return 0
    pregnant = (
        (fact.get("analyte") == "pregnancy-status" and fact.get("band") == "positive")
        or (fact.get("type") == "condition" and fact.get("group") == "pregnancy")
        or (fact.get("item") == "pregnant" and fact.get("says") is True)
    )
    if pregnant:
        return 0
    return 1 if fact.get("unreadable") is True else 2


class Explainer:
    """Walks firings back from a derived fact to the patient facts and resources beneath it."""

    def __init__(self, outcome: Outcome, facts: FactSet) -> None:
        self._facts = facts.by_id
        self._evidence = facts.evidence
        self._producers: dict[str, list[tuple[str, ...]]] = {}
        for firing in outcome.firings:
            self._producers.setdefault(firing.output, []).append(firing.inputs)

    def trace(self, fact_ids: Iterable[str]) -> Trace:
        labels: list[str] = []
        priorities: list[int] = []
        refs: dict[str, None] = {}  # ordered and de-duplicated in O(1) per reference
        seen: set[str] = set()
        stack = list(fact_ids)[::-1]
        while stack:
            fact_id = stack.pop()
            if fact_id in seen:
                continue
            seen.add(fact_id)
            if fact_id in self._facts:
                labels.append(str(self._facts[fact_id]["label"]))
                priorities.append(evidence_priority(self._facts[fact_id]))
                refs.update(dict.fromkeys(self._evidence.get(fact_id, ())))
            else:
                for inputs in self._producers.get(fact_id, []):
                    stack.extend(reversed(inputs))
        return Trace(labels=tuple(labels), refs=tuple(refs), priorities=tuple(priorities))


def render_cards(
    outcome: Outcome,
    facts: FactSet,
    record: PatientRecord,
    pack: RulePack,
    *,
    new_id: Callable[[], str],
    topics: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Build the cards; `topics` limits which topics may produce one (order-sign shows causes only)."""
    explainer = Explainer(outcome, facts)
    fired: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for firing in outcome.firings:
        name = pack.topic_of_rule.get(firing.rule)
        if name is not None and (topics is None or name in topics):
            fired.setdefault(name, []).append((firing.rule, firing.inputs))

    findings = frozenset(str(f["name"]) for f in outcome.derived if f.get("type") == "finding")
    # A test counts as done when its newest result in the window was usable: an unreadable newest
    # result (even with an earlier usable one) leaves the repeat test suggestable.
    recent = {name for name, lab in record.labs.items() if lab.usable and not lab.earlier}
    ordered = sorted((pack.topics[name] for name in fired), key=lambda t: (t.spec.only_unsuggested, t.order))
    suggested_elsewhere: set[str] = set()
    cards: list[tuple[int, dict[str, Any]]] = []
    for topic in ordered:
        card = _render_card(
            topic, fired[topic.name], explainer, record, pack, recent, suggested_elsewhere, new_id, findings
        )
        if card is not None:
            cards.append((topic.order, card))
    return [card for _, card in sorted(cards, key=lambda pair: pair[0])]


def _render_card(
    topic: Topic,
    firings: list[tuple[str, tuple[str, ...]]],
    explainer: Explainer,
    record: PatientRecord,
    pack: RulePack,
    recent: set[str],
    suggested_elsewhere: set[str],
    new_id: Callable[[], str],
    findings: frozenset[str] = frozenset(),
) -> dict[str, Any] | None:
    spec = topic.spec
    skip = len(spec.requires)
    rule_order = {rule.id: index for index, rule in enumerate(spec.rules)}
    by_rule: dict[str, list[tuple[str, ...]]] = {}
    for rule_id, inputs in firings:
        by_rule.setdefault(rule_id, []).append(inputs)
    rule_ids = sorted(by_rule, key=rule_order.__getitem__)
    rules = [pack.rules_by_id[r] for r in rule_ids]

    orders: list[str] = []
    for order in (*spec.suggest, *(o for rule in rules for o in rule.suggest)):
        covers = pack.orders[order].covers
        if order in orders or (covers is not None and covers in recent):
            continue  # never ask again for a test that has a recent result
        if spec.only_unsuggested and order in suggested_elsewhere:
            continue
        orders.append(order)
    if spec.only_unsuggested and not orders:
        return None
    suggested_elsewhere.update(orders)

    indicator = max((r.indicator or "info" for r in rules), key=INDICATOR_RANK.__getitem__)
    lead = next(r for r in rules if r.indicator == indicator)
    own_inputs = [inputs[skip:] for inputs in by_rule[lead.id]]
    lead_trace = explainer.trace(i for inputs in own_inputs for i in inputs)
    summary = _summary(
        lead.summary or spec.display, lead_trace.by_priority(), [pack.orders[o].label for o in orders]
    )

    explanation = []
    reasons = []
    all_refs: dict[str, None] = {}
    for rule in rules:
        trace = explainer.trace(i for inputs in by_rule[rule.id] for i in inputs[skip:])
        context = explainer.trace(i for inputs in by_rule[rule.id] for i in inputs[:skip])
        refs = tuple(dict.fromkeys((*trace.refs, *context.refs)))
        all_refs.update(dict.fromkeys(refs))
        explanation.append(
            {"rule": rule.id, "facts": list(trace.labels + context.labels), "evidence": list(refs)}
        )
        reasons.append(f"- `{rule.id}`: " + ("; ".join(trace.labels) if trace.labels else "cramps reported"))

    detail = (
        spec.detail.rstrip()
        + advice_text(spec, findings)
        + "\n\n**Why this card**\n\n"
        + "\n".join(reasons)
        + f"\n\n_Rule pack {pack.manifest.id} {pack.version}._"
    )
    card: dict[str, Any] = {
        "uuid": new_id(),
        "summary": summary,
        "detail": detail,
        "indicator": indicator,
        "source": {
            "label": f"{pack.manifest.title} ({pack.manifest.id} {pack.version})",
            "topic": {"system": pack.manifest.topic_system, "code": spec.topic, "display": spec.display},
        },
    }
    if orders and record.patient_key:
        card["suggestions"] = [_suggestion(pack, order, record.patient_key, new_id) for order in orders]
        card["selectionBehavior"] = "any"
    if spec.override_reasons:
        card["overrideReasons"] = [
            {"code": r.code, "system": pack.manifest.override_reason_system, "display": r.display}
            for r in spec.override_reasons
        ]
    card["extension"] = {
        EXPLANATION_KEY: {"packVersion": pack.version, "rules": explanation, "evidence": list(all_refs)}
    }
    return card


def advice_text(spec: TopicSpec, findings: Collection[str]) -> str:
    """The topic's advice for this patient: cautions whose findings hold, and advice that could harm
    replaced by the reason it is withheld."""
    lines: list[str] = []
    for advice in spec.advice:
        if advice.when and not findings_hold(advice.when, findings):
            continue
        if advice.withhold is not None and findings_hold(advice.withhold.when, findings):
            lines.append(f"- **Withheld:** {advice.withhold.say.strip()}")
        elif advice.when:
            lines.append(f"- **Caution:** {advice.text.strip()}")
        else:
            lines.append(f"- {advice.text.strip()}")
    return "\n\n**Advice**\n\n" + "\n".join(lines) if lines else ""


def findings_hold(names: Iterable[str], findings: Collection[str]) -> bool:
    return any(name in findings for name in names)


def _summary(template: str, labels: tuple[str, ...], orders: list[str]) -> str:
    """Fill `{evidence}` and `{orders}`, trimming the lists so the summary stays under 140 characters.

    Only the first SUMMARY_LIMIT items of a list can matter: more items, each with its "; " or ", "
    separator, are longer than the limit. So the work is bounded whatever the number of labels.
    """
    order_names = [o.removeprefix("Order ").removeprefix("Refer for ") for o in orders]
    longest = max(
        len(labels) if "{evidence}" in template else 0, len(order_names) if "{orders}" in template else 0
    )
    for keep in range(min(longest, SUMMARY_LIMIT), 0, -1):
        evidence = "; ".join(labels[:keep]) + ("; …" if len(labels) > keep else "")
        listed = ", ".join(order_names[:keep]) + (", …" if len(order_names) > keep else "")
        text = template.replace("{evidence}", evidence).replace("{orders}", listed)
        if len(text) <= SUMMARY_LIMIT:
            return text
    # Even the first (most important) label is too long: cut it at a word, never drop it for a bare "…".
    listed = order_names[0] + (", …" if len(order_names) > 1 else "") if order_names else ""
    if labels:
        room = SUMMARY_LIMIT - len(template.replace("{evidence}", "").replace("{orders}", listed))
        evidence = _cut(labels[0] + ("; …" if len(labels) > 1 else ""), room)
        text = template.replace("{evidence}", evidence).replace("{orders}", listed)
        if len(text) <= SUMMARY_LIMIT and evidence != "…":
            return text
    text = template.replace("{evidence}", "…").replace("{orders}", "…")
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _cut(text: str, room: int) -> str:
    """`text` in at most `room` characters, cut at a word boundary with a closing "…"."""
    if len(text) <= room:
        return text
    head = text[: max(room - 1, 0)]
    if " " in head:
        head = head[: head.rindex(" ")]
    return head.rstrip(" ;,(") + "…"


def _suggestion(pack: RulePack, order_id: str, patient_key: str, new_id: Callable[[], str]) -> dict[str, Any]:
    order = pack.orders[order_id]
    code = order.code
    service_request = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": patient_key},
        "code": {
            "coding": [{"system": code.system, "code": code.code, "display": code.display}],
            "text": order.label,
        },
    }
    return {
        "label": order.label,
        "uuid": new_id(),
        "actions": [{"type": "create", "description": order.label, "resource": service_request}],
    }
