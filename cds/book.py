"""The rule book: one static HTML page a clinician can review without reading YAML or Python.

Per topic it shows the card's wording and advice (with sources, certainty and what is withheld when),
every rule in plain words with its indicator, summary and suggested examinations, the hazards the rule
mitigates, and the rule's cases. Then the level-one findings, the thresholds and codes of every analyte,
and the whole hazard log. No scripts, no external assets: the page is the same offline and on paper.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from cds.hazards import Hazard, HazardLog, hazards_by_rule
from cds.rulepack import Advice, CaseSpec, RulePack, RuleSpec

OPERATOR_WORDS = {"lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "ne": "≠"}
CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:1rem 2rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{border-bottom:2px solid #ccc;margin-top:2.5rem}h3{margin-bottom:.3rem}
nav ul{columns:3}code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .4rem;vertical-align:top;text-align:left}
th{background:#f0f0f0}.ind{font-weight:600;padding:0 .35rem;border-radius:3px;color:#fff}
.info{background:#2f6f9f}.warning{background:#b7791f}.critical{background:#b42318}
.withheld{color:#7a1f1f}.muted{color:#666;font-size:.9em}.rule{border-left:4px solid #ddd;padding-left:.8rem;margin:1rem 0}
.fires{color:#1d6b2f}.silent{color:#555}
"""


def render_book(pack: RulePack, log: HazardLog) -> str:
    by_rule = hazards_by_rule(log)
    questions = _question_texts(pack.questionnaire)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Rule book: {escape(pack.manifest.title)} ({escape(pack.manifest.id)} {escape(pack.version)})</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Rule book: {escape(pack.manifest.title)}</h1>",
        f'<p class="muted">Rule pack <code>{escape(pack.manifest.id)}</code> version {escape(pack.version)}; '
        f"{len(pack.rules_by_id)} rules in {len(pack.topics)} topics; {len(log.hazards)} hazards. "
        "Generated from <code>rules/</code> by <code>cds rules book</code>.</p>",
        "<nav><h2>Contents</h2><ul>",
    ]
    for topic in pack.topics.values():
        parts.append(f'<li><a href="#topic-{escape(topic.name)}">{escape(topic.spec.display)}</a></li>')
    parts += [
        '<li><a href="#findings">Findings (level one)</a></li>',
        '<li><a href="#thresholds">Thresholds and codes</a></li>',
        '<li><a href="#hazards">Hazard log</a></li>',
        "</ul></nav>",
    ]
    for topic in sorted(pack.topics.values(), key=lambda t: t.order):
        spec = topic.spec
        parts.append(f'<section id="topic-{escape(topic.name)}"><h2>{escape(spec.display)}</h2>')
        needs = (
            ", ".join(_finding_link(name) for name in spec.requires) or "nothing: shown whatever the visit"
        )
        parts.append(f'<p class="muted">Topic <code>{escape(topic.name)}</code>. Needs: {needs}.</p>')
        parts.append(f"<h3>Card wording</h3><p>{_paragraphs(spec.detail)}</p>")
        if spec.advice:
            parts.append("<h3>Advice</h3><ul>" + "".join(_advice(a) for a in spec.advice) + "</ul>")
        parts.append("<h3>Rules</h3>")
        parts.extend(
            _rule(rule, pack, by_rule.get(rule.id, ()), questions, spec.suggest) for rule in spec.rules
        )
        parts.append("</section>")

    parts.append('<section id="findings"><h2>Findings (level one)</h2>')
    parts.append("<p>Findings are facts the topic rules build on; each has its own cases.</p>")
    anchored: set[str] = set()
    for rule in pack.findings:
        name = (rule.then or {}).get("finding", "")
        if name not in anchored:
            anchored.add(name)
            parts.append(f'<h3 id="finding-{escape(name)}">Finding <code>{escape(name)}</code></h3>')
        parts.append(_rule(rule, pack, by_rule.get(rule.id, ()), questions, ()))
    parts.append("</section>")

    parts.append('<section id="thresholds"><h2>Thresholds and codes</h2>')
    parts.append(
        "<p>Default cut-offs, used when a result carries neither an interpretation flag nor a usable "
        "reference range (the laboratory's flag comes first, then its range). Source tags: V checked "
        "against an HL7 guide or the FHIR specification, C agreed across community sources, U unverified.</p>"
    )
    parts.append(
        "<table><tr><th>Analyte</th><th>Unit</th><th>Recent</th><th>Cut-offs</th><th>Critical limits</th>"
        "<th>Codes (source, where checked)</th></tr>"
    )
    for name, analyte in pack.analytes.items():
        cuts = "<br>".join(_threshold(t.model_dump(exclude_none=True)) for t in analyte.thresholds)
        critical = "<br>".join(_threshold(t.model_dump(exclude_none=True)) for t in analyte.critical)
        codes = "<br>".join(
            f"<code>{escape(c.code)}</code> {escape(c.display)} [{c.source}] <span class='muted'>{escape(c.checked)}</span>"
            for c in analyte.codes
        )
        parts.append(
            f'<tr id="analyte-{escape(name)}"><td>{escape(analyte.display)}</td><td>{escape(analyte.unit or "")}</td>'
            f"<td>{analyte.recent_months} months</td><td>{cuts or 'coded values'}</td>"
            f"<td>{critical or 'none'}</td><td>{codes}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<p>Thresholds written into rules (critical limits, TSH by age) are shown with each rule.</p>"
    )
    parts.append("</section>")

    parts.append('<section id="hazards"><h2>Hazard log</h2>')
    parts.append(
        "<table><tr><th>Risk</th>" + "".join(f"<th>{escape(s.id)}</th>" for s in log.severity) + "</tr>"
    )
    for likelihood in reversed(log.likelihood):
        row = log.matrix[likelihood.id]
        parts.append(
            f"<tr><th>{escape(likelihood.id)}</th>"
            + "".join(f"<td>{row[s.id]}</td>" for s in log.severity)
            + "</tr>"
        )
    parts.append("</table>")
    parts.extend(_hazard(h) for h in log.hazards)
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"


def _rule(
    rule: RuleSpec,
    pack: RulePack,
    hazards: Sequence[Hazard],
    questions: Mapping[str, str],
    topic_suggest: Iterable[str],
) -> str:
    out = [f'<div class="rule" id="rule-{escape(rule.id)}"><h4><code>{escape(rule.id)}</code>']
    if rule.indicator:
        out.append(f' <span class="ind {rule.indicator}">{rule.indicator}</span>')
    out.append("</h4>")
    conditions = [_pattern(p, pack, questions) for p in rule.when]
    out.append("<p>When " + (" <b>and</b> ".join(conditions) or "always") + ".</p>")
    if rule.then:
        out.append(f"<p>Then: finding {_finding_link(rule.then.get('finding', ''))}.</p>")
    if rule.summary:
        out.append(f"<p>Card summary: <q>{escape(rule.summary)}</q></p>")
    orders = [*topic_suggest, *rule.suggest]
    if orders:
        labels = [
            f"{escape(pack.orders[o].label)} (<code>{escape(pack.orders[o].code.code)}</code> "
            f"[{pack.orders[o].code.source}])"
            for o in dict.fromkeys(orders)
        ]
        out.append("<p>Suggests: " + "; ".join(labels) + ".</p>")
    if hazards:
        out.append(
            "<p>Mitigates: "
            + "; ".join(f'<a href="#{escape(h.id)}">{escape(h.id)}</a> {escape(h.title)}' for h in hazards)
            + ".</p>"
        )
    out.append("<table><tr><th>Case</th><th>Given</th><th>Expect</th></tr>")
    out.extend(_case(case) for case in rule.cases)
    out.append("</table></div>")
    return "".join(out)


def _case(case: CaseSpec) -> str:
    expect = case.expect + (f" ({case.indicator})" if case.indicator else "")
    checks = [f"says “{escape(w)}”" for w in case.card_says] + [
        f"never “{escape(w)}”" for w in case.card_lacks
    ]
    extra = f"<br><span class='muted'>{'; '.join(checks)}</span>" if checks else ""
    return (
        f"<tr><td><code>{escape(case.id)}</code></td><td>{escape(_given(case.given))}</td>"
        f'<td class="{case.expect}">{escape(expect)}{extra}</td></tr>'
    )


def _given(given: Mapping[str, Any]) -> str:
    if not given:
        return "nothing (default patient aged 40)"
    words = []
    for key, value in given.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k} {_short(v)}" for k, v in value.items())
            words.append(f"{key}: {inner}")
        elif isinstance(value, list):
            words.append(f"{key}: " + ", ".join(_short(v) for v in value))
        else:
            words.append(f"{key} {_short(value)}")
    return "; ".join(words)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return "(" + ", ".join(f"{k} {_short(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return "unknown" if value is None else str(value)


def _pattern(pattern: Mapping[str, Any], pack: RulePack, questions: Mapping[str, str]) -> str:
    kind = pattern["fact"]
    fields = {k: v for k, v in pattern.items() if k != "fact"}
    if kind == "lab":
        names = _values(fields.pop("analyte"))
        shown = " or ".join(
            f'<a href="#analyte-{escape(n)}">{escape(pack.analytes[n].display)}</a>' for n in names
        )
        unit = pack.analytes[names[0]].unit or ""
        if fields.get("band") == "none":
            return f"no recent usable {shown} result"
        bits = [_condition(k, v, unit) for k, v in fields.items()]
        return f"{shown} " + " and ".join(bits)
    if kind == "condition":
        groups = _values(fields.pop("group"))
        shown = " or ".join(escape(pack.valuesets.conditions[g].display) for g in groups)
        rest = "".join(f" with onset {_condition('onset_months', v, 'months ago')}" for v in fields.values())
        return f"an active, not refuted condition: {shown}{rest}"
    if kind == "medication":
        groups = _values(fields.pop("group"))
        return "an active medication: " + " or ".join(
            escape(pack.valuesets.medications[g].display) for g in groups
        )
    if kind == "answer":
        item = str(fields.pop("item"))
        question = escape(questions.get(item, item))
        if "says" in fields:
            return f"the answer to <q>{question}</q> (<code>{escape(item)}</code>) is {'yes' if fields['says'] else 'no'}"
        return f"the answer to <q>{question}</q> (<code>{escape(item)}</code>) is {_condition('number', fields['number'], '')}"
    if kind == "finding":
        return "finding " + " or ".join(_finding_link(n) for n in _values(fields["name"]))
    if kind == "patient":
        if "age_known" in fields:
            return "the age is " + ("known" if fields["age_known"] else "unknown (no birth date)")
        return "age " + _condition("age", fields["age"], "years")
    return escape(str(dict(pattern)))


def _condition(name: str, value: Any, unit: str) -> str:
    if isinstance(value, Mapping):
        ((op, operand),) = value.items()
        if op == "in":
            return f"{escape(name)} is one of " + ", ".join(escape(str(v)) for v in operand)
        return f"{escape(OPERATOR_WORDS[op])} {escape(str(operand))} {escape(unit)}".rstrip()
    if name == "band":
        return f"is {escape(str(value))}"
    if name == "grade":
        return f"is graded {escape(str(value))}"
    if name == "critical":
        return (
            "is critical (flagged LL/HH by the laboratory, or beyond the critical limit)"
            if value
            else "is not critical"
        )
    if name in {"unreadable", "earlier"}:
        return f"{'is' if value else 'is not'} {name}"
    return f"{escape(name)} = {escape(str(value))}"


def _values(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(v) for v in value["in"]]
    return [str(value)]


def _threshold(t: Mapping[str, Any]) -> str:
    """One cut-off as escaped HTML, with its source, year and certainty when the pack gives them."""
    for key, word in (("below", "<"), ("at_or_below", "≤"), ("above", ">"), ("at_or_above", "≥")):
        if key in t:
            grade = f" ({t['grade']})" if "grade" in t else ""
            text = escape(f"{t['band']}{grade} {word} {t[key]}")
            meta = [str(t[k]) for k in ("source", "year", "certainty") if k in t]
            if meta:
                text += f" <span class='muted'>{escape('; '.join(meta))}</span>"
            return text
    return escape(str(dict(t)))


def _advice(advice: Advice) -> str:
    out = ["<li>"]
    if advice.when:
        out.append(f"<b>Only when</b> {', '.join(_finding_link(n) for n in advice.when)}: ")
    out.append(escape(advice.text))
    meta = [f"Source: {escape(advice.source)}" if advice.source else "Source: not given"]
    meta.append(f"certainty: {escape(advice.certainty or 'not stated')}")
    out.append(f"<br><span class='muted'>{'; '.join(meta)}</span>")
    if advice.withhold is not None:
        out.append(
            f"<br><span class='withheld'><b>Withheld when</b> "
            f"{', '.join(_finding_link(n) for n in advice.withhold.when)}; the card says instead: "
            f"<q>{escape(advice.withhold.say)}</q></span>"
        )
    out.append("</li>")
    return "".join(out)


def _hazard(h: Hazard) -> str:
    controls = "".join(
        "<li>"
        + ", ".join(f'<a href="#rule-{escape(r)}"><code>{escape(r)}</code></a>' for r in c.rules)
        + f": {escape(c.wording)}</li>"
        for c in h.controls
    )
    cases = ", ".join(f"<code>{escape(c)}</code>" for c in h.cases)
    notes = f"<p><b>For the clinical reviewer:</b> {escape(h.notes)}</p>" if h.notes else ""
    return (
        f'<div class="rule" id="{escape(h.id)}"><h3>{escape(h.id)}: {escape(h.title)}</h3>'
        f"<p>{escape(h.description)}</p>"
        f"<p><b>Cause:</b> {escape(h.cause)} <b>Effect:</b> {escape(h.effect)}</p>"
        f"<p><b>Initial risk</b> {h.initial_risk} ({escape(h.severity)}, {escape(h.likelihood)}); "
        f"<b>residual risk</b> {h.residual.risk} ({escape(h.residual.severity)}, {escape(h.residual.likelihood)}); "
        f"<b>status</b> {escape(h.status)}; owner {escape(h.owner)}</p>"
        f"<p><b>Controls</b></p><ul>{controls}</ul><p><b>Proved by</b> {cases}</p>{notes}</div>"
    )


def _finding_link(name: str) -> str:
    return f'<a href="#finding-{escape(name)}"><code>{escape(name)}</code></a>'


def _paragraphs(text: str) -> str:
    return "</p><p>".join(
        escape(block.strip()).replace("\n", " ") for block in text.split("\n\n") if block.strip()
    )


def _question_texts(questionnaire: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            if item.get("text"):
                found[str(item["linkId"])] = str(item["text"])
            walk(item.get("item", ()))

    walk(questionnaire.get("item", ()))
    return found
