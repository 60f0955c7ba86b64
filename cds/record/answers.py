"""QuestionnaireResponses to the pack's Questionnaire -> one answer per known item."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cds.fhirvalues import parse_fhir_datetime
from cds.intake import Resource
from cds.record.model import Answer, PatientRecord
from cds.rulepack import RulePack

QR_STATUSES = frozenset({"completed", "amended"})
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
YES_NO_CODES = {
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "Y"): True,
    ("http://terminology.hl7.org/CodeSystem/v2-0136", "N"): False,
    ("http://snomed.info/sct", "373066001"): True,
    ("http://snomed.info/sct", "373067005"): False,
}


def read_answers(record: PatientRecord, responses: Sequence[Resource], pack: RulePack) -> None:
    known = pack.question_types
    base_url = pack.questionnaire_url
    candidates: list[tuple[datetime, Resource]] = []
    for resource in responses:
        qr = resource.model
        if qr.status not in QR_STATUSES:
            continue
        ours = str(qr.questionnaire or "").split("|")[0] == base_url
        if not ours and not any(link in known for link in _link_ids(qr.item or [])):
            record.notes.append(f"{resource.key} answers another questionnaire; ignored")
            continue
        when = (
            parse_fhir_datetime(qr.authored)
            or (parse_fhir_datetime(qr.meta.lastUpdated) if qr.meta is not None else None)
            or EARLIEST
        )
        candidates.append((when, resource))
    if not candidates:
        return
    _, latest = max(candidates, key=lambda pair: pair[0])
    for item in _walk(latest.model.item or []):
        kind = known.get(item.linkId)
        if kind is None or not item.answer:
            continue
        value = _answer_value(item.answer[0], kind)
        if value is None:
            record.notes.append(f"{latest.key}: answer to {item.linkId} is not a {kind}; ignored")
            continue
        record.answers[item.linkId] = Answer(link_id=item.linkId, value=value, ref=latest.key)


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
