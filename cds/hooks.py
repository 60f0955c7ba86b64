"""The two CDS services and what each does with a hook request, whoever calls it.

`POST /cds-services/{id}` (cds.api.services) and `cds evaluate --service ID` (cds.cli) both go through
`read_call` -> prefetch -> `evaluate_call`, so they answer alike, errors included: a draft order that is
not calcium gives no cards in both, a patient-view body sent to the order-sign service is the same 400
(CLI: exit 2 with the same text). Only where the prefetch comes from differs: HTTP fills missing keys
from `fhirServer` (cds.prefetch.resolve_prefetch), the CLI reads the file and fetches nothing
(`sent_prefetch`, the same 412 text as HTTP when a key is missing and there is no `fhirServer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from cds.cards import EXPLANATION_KEY
from cds.errors import ShapeError
from cds.evaluation import Evaluation, Evaluator
from cds.intake import PREFETCH_KEYS, HookRequest, document_entries, is_hook_request, read_hook_request
from cds.orders import CALCIUM_SET, Entry, calcium_drafts
from cds.prefetch import require_sent
from cds.rulepack import RulePack
from cds.store import text_problem

ASSESSMENT: Final = "cramp-assessment"
ORDER_CHECK: Final = "calcium-order-check"
SERVICES: Final = (ASSESSMENT, ORDER_CHECK)
HOOKS: Final[Mapping[str, str]] = {ASSESSMENT: "patient-view", ORDER_CHECK: "order-sign"}
SERVICE_FOR_HOOK: Final[Mapping[str, str]] = {hook: service for service, hook in HOOKS.items()}
CAUSE_TOPICS: Final = frozenset(
    {
        "urgent",
        "calcium-excess",
        "medication-safety",
        "arterial-disease",
        "calcium-absorption",
        "magnesium-deficiency",
        "vitamin-d-deficiency",
        "poor-circulation",
        "neuromuscular",
        "seek-care",
        "unreadable-results",
    }
)
# Which topics a service may answer with (None: every topic of the pack).
TOPICS: Final[Mapping[str, frozenset[str] | None]] = {ASSESSMENT: None, ORDER_CHECK: CAUSE_TOPICS}
MAX_ID_LENGTH: Final = 255  # the store's column; a hookInstance is a UUID
QUESTIONNAIRE_PATH: Final = "/questionnaire"
NOTICE_TOPIC: Final = "cramp-questionnaire"
NOTICE_RULE: Final = "service.questionnaire-missing"


@dataclass(frozen=True)
class HookCall:
    """A checked hook request for one service, and the draft orders that count as active medication."""

    service_id: str
    request: HookRequest
    extra: list[Entry]

    @property
    def patient_id(self) -> str:
        return str(self.request.context["patientId"])

    @property
    def silent(self) -> bool:
        """order-sign without a calcium supplement among the drafts: no cards, nothing fetched."""
        return HOOKS[self.service_id] == "order-sign" and not self.extra


def read_call(document: Any, *, service_id: str, pack: RulePack) -> HookCall:
    """Check a CDS Hooks request for `service_id` (raises ShapeError, a 400, naming the field)."""
    request = read_hook_request(document)
    # Kept with every card row: refused here (naming the field) when a database could not keep it.
    problem = text_problem(request.hook_instance, MAX_ID_LENGTH)
    if problem is not None:
        raise ShapeError(f"{problem} (a UUID)", field="hookInstance")
    hook = HOOKS[service_id]
    if request.hook != hook:
        raise ShapeError(f"service {service_id} answers the {hook} hook, not {request.hook}", field="hook")
    extra: list[Entry] = []
    if hook == "order-sign":
        if "draftOrders" not in request.context:
            raise ShapeError("order-sign needs the orders being signed", field="context.draftOrders")
        calcium = pack.valuesets.medications[CALCIUM_SET]
        extra = calcium_drafts(
            request.context["draftOrders"], calcium, patient_id=str(request.context["patientId"])
        )
    return HookCall(service_id=service_id, request=request, extra=extra)


def sent_prefetch(call: HookCall) -> dict[str, Any]:
    """The prefetch as sent, every key present (the CLI fetches nothing); else the 412 HTTP would give."""
    require_sent(call.request, PREFETCH_KEYS, can_fetch=False)
    return {key: call.request.prefetch[key] for key in PREFETCH_KEYS}


def evaluate_call(
    call: HookCall,
    prefetch: Mapping[str, Any],
    *,
    evaluator: Evaluator,
    now: datetime,
    base_url: str,
) -> Evaluation:
    """The service's cards for a checked call (`call.silent` must be handled by the caller first)."""
    evaluation = evaluator.evaluate_prefetch(
        prefetch, patient_id=call.patient_id, now=now, topics=TOPICS[call.service_id], extra=call.extra
    )
    if call.service_id == ASSESSMENT:
        notice = questionnaire_notice(
            evaluation, evaluator.pack, url=base_url.rstrip("/") + QUESTIONNAIRE_PATH, new_id=evaluator.new_id
        )
        if notice is not None:
            evaluation = dataclasses.replace(evaluation, cards=[*evaluation.cards, notice])
    return evaluation


@dataclass(frozen=True)
class Answer:
    """What `evaluate_document` gives: the cards, and data-quality notes for a human reader."""

    cards: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        return {"cards": self.cards}


def evaluate_document(document: Any, *, evaluator: Evaluator, now: datetime, base_url: str) -> Answer:
    """`POST /evaluate` and `cds evaluate FILE`: a hook request is answered exactly as the service for
    its hook answers it (every prefetch key must be in it); a Bundle as cramp-assessment would answer a
    patient-view call carrying the same data."""
    if is_hook_request(document):
        hook = document.get("hook")
        service_id = SERVICE_FOR_HOOK.get(hook) if isinstance(hook, str) else None
        if service_id is None:
            raise ShapeError(f"no service here answers the {hook} hook; see GET /cds-services", field="hook")
        call = read_call(document, service_id=service_id, pack=evaluator.pack)
        if call.silent:
            return Answer(cards=[])
        evaluation = evaluate_call(call, sent_prefetch(call), evaluator=evaluator, now=now, base_url=base_url)
        return Answer(cards=evaluation.cards, notes=evaluation.notes)
    evaluation = evaluator.evaluate_entries(document_entries(document), now=now)
    notice = questionnaire_notice(
        evaluation, evaluator.pack, url=base_url.rstrip("/") + QUESTIONNAIRE_PATH, new_id=evaluator.new_id
    )
    return Answer(cards=[*evaluation.cards, *([notice] if notice else [])], notes=evaluation.notes)


def questionnaire_notice(
    evaluation: Evaluation, pack: RulePack, *, url: str, new_id: Callable[[], str]
) -> dict[str, Any] | None:
    """An info card asking for the cramp questionnaire, or None.

    CAUTION: only for a patient who takes a calcium supplement and has neither questionnaire answers nor
    an active cramp Condition: then the service cannot tell whether cramps persist, and an empty answer
    would read as "nothing to worry about". Patients not on calcium get no card (the service's question
    does not apply to them); a card for every chart opened would be noise. patient-view only: at order
    signing the prescriber has other work in hand.
    """
    record = evaluation.record
    if record.answers or any(hit.group == "cramp" for hit in record.conditions):
        return None
    calcium = [hit for hit in record.medications if hit.group == CALCIUM_SET]
    if not calcium:
        return None
    evidence = list(dict.fromkeys(hit.ref for hit in calcium))
    facts = [
        *(f"takes {hit.display}" for hit in calcium),
        "no answers to the cramp questionnaire",
        "no active cramp condition",
    ]
    detail = (
        "This patient takes a calcium supplement, but the record holds no answers to the cramp "
        "questionnaire and no cramp Condition, so this service cannot tell whether muscle cramps persist "
        "or which causes to look for. No news here is **not** reassurance.\n\n"
        "Ask the patient the questionnaire (16 short questions) and save the answers as a "
        "`QuestionnaireResponse`; the cards then appear on the next chart opening. If the patient has no "
        "cramps, record a frequency of 0 and this card stops.\n\n"
        "**Why this card**\n\n"
        f"- `{NOTICE_RULE}`: " + "; ".join(facts) + f"\n\n_Rule pack {pack.manifest.id} {pack.version}._"
    )
    return {
        "uuid": new_id(),
        "summary": "Cramp details missing: ask the patient the cramp questionnaire",
        "detail": detail,
        "indicator": "info",
        "source": {
            "label": f"{pack.manifest.title} ({pack.manifest.id} {pack.version})",
            "topic": {
                "system": pack.manifest.topic_system,
                "code": NOTICE_TOPIC,
                "display": "Cramp questionnaire not answered",
            },
        },
        "links": [{"label": "The cramp questionnaire (FHIR Questionnaire)", "url": url, "type": "absolute"}],
        "extension": {
            EXPLANATION_KEY: {
                "packVersion": pack.version,
                "rules": [{"rule": NOTICE_RULE, "facts": facts, "evidence": evidence}],
                "evidence": evidence,
            }
        },
    }
