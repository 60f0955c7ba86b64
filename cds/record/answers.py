"""QuestionnaireResponses to the pack's Questionnaire -> one answer per known item."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from cds.fhirvalues import is_after, parse_fhir_datetime, start_of_day, subtract_months
from cds.intake import Resource
from cds.record.model import Answer, PatientRecord
from cds.rulepack import RulePack

QR_STATUSES = frozenset({"completed", "amended"})
YES_NO_CODES = {
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "Y"): True,
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "N"): False,
    ("http://snomed.info/sct", "373066001"): True,
    ("http://snomed.info/sct", "373067005"): False,
}


def read_answers(record: PatientRecord, responses: Sequence[Resource], pack: RulePack, now: datetime) -> None:
    """Per item, the newest answer within the item's window, from responses to this service's
    Questionnaire (its canonical URL, with or without `|version`).

    A response naming another questionnaire is never read, even when it shares a linkId (`pregnant`).
    A response naming no questionnaire is read only when no response in the submission names ours and
    every item it answers is an item of ours; otherwise it is ignored. Each choice is noted.
    """
    known = pack.question_types
    ours_ids = pack.link_ids
    base_url = pack.questionnaire_url
    named: list[Resource] = []
    unnamed: list[Resource] = []
    for resource in responses:
        qr = resource.model
        if qr.status not in QR_STATUSES:
            record.notes.append(f"{resource.key} has status {qr.status}; only completed answers count")
            continue
        canonical = str(qr.questionnaire or "")
        if not canonical:
            unnamed.append(resource)
        elif canonical.split("|")[0] == base_url:
            named.append(resource)
        else:
            record.notes.append(f"{resource.key} answers another questionnaire ({canonical}); ignored")
    accepted = list(named)
    for resource in unnamed:
        answered = {item.linkId for item in _walk(resource.model.item or []) if item.answer}
        if named:
            record.notes.append(
                f"{resource.key} names no questionnaire and responses to {base_url} exist; ignored"
            )
        elif answered and answered <= ours_ids:
            record.notes.append(f"{resource.key} names no questionnaire; read because its items are ours")
            accepted.append(resource)
        else:
            record.notes.append(f"{resource.key} names no questionnaire and answers items not ours; ignored")

    dated: list[tuple[datetime, Resource]] = []
    for resource in accepted:
        qr = resource.model
        raw = qr.authored if qr.authored is not None else (qr.meta.lastUpdated if qr.meta else None)
        when = parse_fhir_datetime(raw)
        if when is None:
            record.notes.append(f"{resource.key} has no authored date; its answers are not counted as recent")
        elif is_after(raw, now):
            record.notes.append(f"{resource.key} is dated after the evaluation time; ignored")
        else:
            dated.append((when, resource))
    # Newest first; responses at the same time in an order that does not depend on the entries' order.
    dated.sort(key=lambda pair: (pair[0], pair[1].key), reverse=True)
    stale: dict[str, tuple[datetime, str]] = {}
    for when, resource in dated:
        for item in _walk(resource.model.item or []):
            kind = known.get(item.linkId)
            if kind is None or not item.answer or item.linkId in record.answers:
                continue
            value = _answer_value(item.answer[0], kind)
            if value is None:
                record.notes.append(f"{resource.key}: answer to {item.linkId} is not a {kind}; ignored")
                continue
            months = pack.answer_window(item.linkId)
            if when < start_of_day(subtract_months(now, months)):
                stale.setdefault(item.linkId, (when, resource.key))
                continue
            record.answers[item.linkId] = Answer(
                link_id=item.linkId, value=value, ref=resource.key, when=when
            )
    for link_id, (when, key) in stale.items():
        if link_id not in record.answers:
            record.notes.append(
                f"{key}: the answer to {link_id} of {when.date().isoformat()} is older than "
                f"{pack.answer_window(link_id)} months; not counted"
            )


def _link_ids(items: Sequence[Any]) -> Iterable[str]:
    for item in _walk(items):
        yield item.linkId


def _walk(items: Sequence[Any]) -> Iterable[Any]:
    for item in items:
        yield item
        yield from _walk(item.item or [])
        for answer in item.answer or []:
            yield from _walk(answer.item or [])


def _answer_value(answer: Any, kind: str) -> bool | int | None:
    if kind == "integer":
        if answer.valueInteger is not None and answer.valueInteger >= 0:
            return int(answer.valueInteger)
        if answer.valueDecimal is not None and answer.valueDecimal == int(answer.valueDecimal) >= 0:
            return int(answer.valueDecimal)
        return None
    if answer.valueBoolean is not None:
        return bool(answer.valueBoolean)
    coding = answer.valueCoding
    if coding is not None:
        return YES_NO_CODES.get((coding.system, coding.code))
    return None
