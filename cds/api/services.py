"""POST /cds-services/{id}: call a CDS service on its hook (https://cds-hooks.hl7.org/2.0/#calling-a-cds-service)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request

from cds.api.catalog import ServiceSpec
from cds.api.deps import BodyDep, ClientDep, Runtime, RuntimeDep, ServiceDep, public_base
from cds.api.models import CardsResponse, HookRequestBody, request_body
from cds.api.problems import documented
from cds.api.responses import JsonResponse
from cds.evaluation import Evaluation, Evaluator
from cds.fhirclient import FhirFetchError
from cds.hooks import HookCall, evaluate_call, read_call
from cds.intake import HookRequest, load_json
from cds.limits import check_prefetch
from cds.logs import log_event
from cds.prefetch import ResolvedPrefetch, resolve_prefetch
from cds.store import IssuedCard, PendingCards, patient_hash

logger = logging.getLogger("cds.api")
router = APIRouter(tags=["CDS Hooks"])


@router.post(
    "/cds-services/{service_id}",
    response_model=CardsResponse,
    responses=documented(400, 401, 404, 412, 413, 503),
    openapi_extra=request_body(HookRequestBody),
    summary="Call a CDS service",
)
async def call_service(
    request: Request, runtime: RuntimeDep, client: ClientDep, service: ServiceDep, body: BodyDep
) -> JsonResponse:
    """Cards for the hook's patient; the cards are recorded (patient id as a keyed hash) for feedback.

    `cramp-assessment` (patient-view) evaluates every topic. `calcium-order-check` (order-sign) answers
    `{"cards": []}` unless `context.draftOrders` holds a calcium supplement MedicationRequest; then it
    evaluates with that order counted as active and returns the cause cards only.
    """
    limits = runtime.settings.limits
    document = load_json(body, max_depth=limits.json_depth)
    call = read_call(document, service_id=service.id, pack=runtime.evaluator.pack)
    hook = call.request
    request.state.hook_instance = hook.hook_instance
    if call.silent:
        request.state.card_count = 0
        return JsonResponse({"cards": []})
    # Counted before anything is fetched, and again with what was fetched (cds.limits).
    sent = {k: v for k, v in hook.prefetch.items() if k in service.prefetch}
    resources = check_prefetch(sent, call.extra, limits)
    resolved = await _prefetch(runtime, service, hook)
    prefetch = resolved.data
    if resolved.fetched:
        resources = check_prefetch(prefetch, call.extra, limits)
    # Evaluation is CPU-bound and takes a few milliseconds: small requests run on the event loop, where
    # a thread hop only adds GIL contention (measured with hey, 50-resource prefetch, one worker,
    # concurrency 8: 152 req/s through the thread pool, 217 inline); large ones in a thread
    # (cds.api.workload). The card rows go to the writer thread (cds.cardwriter), which commits the
    # cards of concurrent calls together, off the loop.
    now = runtime.clock()
    base_url = public_base(request, runtime.settings)
    evaluation, issued = await runtime.evaluations.run(
        resources, len(body), lambda evaluator: _evaluate(evaluator, call, prefetch, now, base_url)
    )
    await _record(runtime, service, hook, issued, now)
    cards = evaluation.cards
    request.state.card_count = len(cards)
    return JsonResponse({"cards": cards})


async def _prefetch(runtime: Runtime, service: ServiceSpec, hook: HookRequest) -> ResolvedPrefetch:
    try:
        resolved = await resolve_prefetch(
            hook,
            service.prefetch,
            client=runtime.client,
            budget_seconds=runtime.settings.fhir_budget_seconds,
            limits=runtime.settings.limits,
        )
    except FhirFetchError as exc:
        runtime.metrics.prefetch_fetches.labels(key=exc.key, result=exc.reason).inc()
        raise
    for key in resolved.fetched:
        runtime.metrics.prefetch_fetches.labels(key=key, result="ok").inc()
    return resolved


def _evaluate(
    evaluator: Evaluator, call: HookCall, prefetch: Mapping[str, Any], now: datetime, base_url: str
) -> tuple[Evaluation, list[IssuedCard]]:
    evaluation = evaluate_call(call, prefetch, evaluator=evaluator, now=now, base_url=base_url)
    return evaluation, [_issued(card) for card in evaluation.cards]


async def _record(
    runtime: Runtime, service: ServiceSpec, hook: HookRequest, issued: list[IssuedCard], now: datetime
) -> None:
    """Record the cards before they leave, so that feedback can be joined to them.

    While the store is down they are queued instead (cds.store.CardBacklog); only a full queue is a 503.
    """
    patient_id = str(hook.context["patientId"])
    if issued:
        pending = PendingCards(
            service_id=service.id,
            hook_instance=hook.hook_instance,
            patient_hash=patient_hash(runtime.settings.patient_hash_key.encode(), patient_id),
            pack_version=runtime.evaluator.pack.version,
            cards=tuple(issued),
            issued_at=now,
        )
        # A store outage must not take the EHR's workflow down with it: the cards are answered and
        # their rows queued (bounded) until the store is back; feedback waits for that queue.
        if await runtime.card_writer.record(pending) and runtime.cards.queued_total == 1:
            log_event(logger, "store.backlog.started", level=logging.WARNING)
    runtime.metrics.count_cards(service.id, (card.topic for card in issued))


def _issued(card: Mapping[str, Any]) -> IssuedCard:
    explanation = card.get("extension", {}).get("cramp-cds-explanation", {})
    return IssuedCard(
        uuid=str(card["uuid"]),
        topic=str(card["source"]["topic"]["code"]),
        rule_ids=tuple(str(r["rule"]) for r in explanation.get("rules", [])),
    )
