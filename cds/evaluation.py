"""The pipeline in one place: intake -> normalise -> facts -> engine -> cards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds.cards import render_cards
from cds.engine import Outcome, RuleEngine
from cds.facts import FactSet, build_facts
from cds.intake import (
    PREFETCH_KEYS,
    document_entries,
    is_hook_request,
    prefetch_entries,
    read_hook_request,
    validate_entries,
)
from cds.prefetch import require_sent
from cds.record import (
    PatientRecord,
    build_record,
    condition_wanted,
    latest_observations,
    medication_wanted,
    observation_wanted,
)
from cds.rulepack import RulePack


def random_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Evaluation:
    cards: list[dict[str, Any]]
    notes: list[str]
    record: PatientRecord
    facts: FactSet
    outcome: Outcome
    fired: tuple[str, ...] = field(default=())

    def response(self) -> dict[str, Any]:
        return {"cards": self.cards}


class Evaluator:
    """Holds the compiled pack and engine; one instance serves every evaluation of a process."""

    def __init__(self, pack: RulePack, *, new_id: Callable[[], str] = random_id) -> None:
        self.pack = pack
        self.engine = RuleEngine(pack.compiled)
        self.new_id = new_id
        medications = medication_wanted(pack)
        self._wanted = {
            "Observation": observation_wanted(pack),
            "Condition": condition_wanted(pack),
            "MedicationRequest": medications,
            "MedicationStatement": medications,
        }

    def evaluate_document(
        self, document: Any, *, now: datetime, topics: Collection[str] | None = None
    ) -> Evaluation:
        """A Bundle, or a CDS Hooks request whose prefetch holds every key (absent keys are an error)."""
        if is_hook_request(document):
            request = read_hook_request(document)
            require_sent(request, PREFETCH_KEYS, can_fetch=False)
            return self.evaluate_prefetch(
                request.prefetch, patient_id=str(request.context["patientId"]), now=now, topics=topics
            )
        return self.evaluate_entries(document_entries(document), now=now, topics=topics)

    def evaluate_prefetch(
        self,
        prefetch: Mapping[str, Any],
        *,
        patient_id: str,
        now: datetime,
        topics: Collection[str] | None = None,
        extra: list[tuple[str, Mapping[str, Any], str]] | None = None,
    ) -> Evaluation:
        entries = prefetch_entries(prefetch) + (extra or [])
        return self.evaluate_entries(entries, now=now, patient_id=patient_id, topics=topics)

    def evaluate_entries(
        self,
        entries: list[tuple[str, Mapping[str, Any], str]],
        *,
        now: datetime,
        patient_id: str | None = None,
        topics: Collection[str] | None = None,
    ) -> Evaluation:
        submission = validate_entries(latest_observations(entries, self.pack, now), wanted=self._wanted)
        record = build_record(
            submission.resources, pack=self.pack, now=now, patient_id=patient_id, notes=submission.notes
        )
        facts = build_facts(record, self.pack)
        outcome = self.engine.evaluate(facts.facts)
        cards = render_cards(outcome, facts, record, self.pack, new_id=self.new_id, topics=topics)
        fired = tuple(dict.fromkeys(f.rule for f in outcome.firings))
        return Evaluation(
            cards=cards, notes=record.notes, record=record, facts=facts, outcome=outcome, fired=fired
        )
