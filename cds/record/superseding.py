"""Newer evidence overrides older evidence of the same kind (issue 8 class 7).

Within their windows the readers keep the newest result per analyte and the newest answer per item.
Across kinds that say the same thing, this module lets the newest statement win:
- pregnancy: a newer "not pregnant" (pregnancy status Observation, or the answer `pregnant: no`)
  overrides an open pregnancy Condition whose onset (else recorded date) is older or unknown, and an
  older positive status or "yes" answer;
- cramps: a newer answer of 0 cramps a week overrides an active cramp Condition that is older or undated.
Every piece of evidence dropped is named in a note.
"""

from __future__ import annotations

from datetime import datetime

from cds.record.model import PatientRecord

# The pack's names for the evidence compared here (rules/analytes.yaml, valuesets.yaml, questionnaire.json).
PREGNANCY_STATUS = "pregnancy-status"
PREGNANCY_GROUP = "pregnancy"
PREGNANT_ITEM = "pregnant"
CRAMP_GROUP = "cramp"
CRAMP_ITEM = "cramp-frequency"


def supersede(record: PatientRecord) -> None:
    _pregnancy(record)
    _cramps(record)


def _pregnancy(record: PatientRecord) -> None:
    negatives: list[tuple[datetime, str]] = []
    status = record.labs.get(PREGNANCY_STATUS)
    if status is not None and status.band == "negative":
        negatives.append((status.when, status.ref))
    answer = record.answers.get(PREGNANT_ITEM)
    if answer is not None and answer.value is False and answer.when is not None:
        negatives.append((answer.when, answer.ref))
    if not negatives:
        return
    when, ref = max(negatives)
    said = f"the newer 'not pregnant' of {when.date().isoformat()} ({ref})"
    kept = []
    for hit in record.conditions:
        if hit.group == PREGNANCY_GROUP and (hit.when is None or hit.when < when):
            dated = hit.when.date().isoformat() if hit.when else "no date"
            record.notes.append(f"{hit.ref} (pregnancy, {dated}) is superseded by {said}; not counted")
        else:
            kept.append(hit)
    record.conditions[:] = kept
    if status is not None and status.band == "positive" and status.when < when:
        record.notes.append(
            f"{status.ref} (pregnant, {status.when.date().isoformat()}) is superseded by {said}"
        )
        del record.labs[PREGNANCY_STATUS]
    if answer is not None and answer.value is True and answer.when is not None and answer.when < when:
        record.notes.append(
            f"{answer.ref}: 'pregnant: yes' of {answer.when.date().isoformat()} is superseded by {said}"
        )
        del record.answers[PREGNANT_ITEM]


def _cramps(record: PatientRecord) -> None:
    answer = record.answers.get(CRAMP_ITEM)
    if answer is None or answer.value != 0 or answer.when is None:
        return
    kept = []
    for hit in record.conditions:
        if hit.group == CRAMP_GROUP and (hit.when is None or hit.when < answer.when):
            dated = hit.when.date().isoformat() if hit.when else "no date"
            record.notes.append(
                f"{hit.ref} (cramps, {dated}) is superseded by the newer answer of 0 cramps a week "
                f"({answer.ref}, {answer.when.date().isoformat()}); not counted"
            )
        else:
            kept.append(hit)
    record.conditions[:] = kept
