"""POST /cds-services/{id}/feedback: what clinicians did with the cards (https://cds-hooks.hl7.org/2.0/#feedback)."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from cds.api.deps import BodyDep, ClientDep, RuntimeDep, ServiceDep
from cds.api.models import FeedbackEntry, FeedbackRequest, parse_body, request_body
from cds.api.problems import documented
from cds.store import FeedbackItem

router = APIRouter(tags=["CDS Hooks"])


def _item(entry: FeedbackEntry) -> FeedbackItem:
    reason = entry.overrideReason.reason if entry.overrideReason else None
    return FeedbackItem(
        card_uuid=str(entry.card),
        outcome=entry.outcome,
        outcome_timestamp=entry.outcomeTimestamp,
        accepted_suggestions=tuple(s.id for s in entry.acceptedSuggestions or ()),
        override_reason_code=reason.code if reason else None,
        override_reason_system=reason.system if reason else None,
        override_comment=entry.overrideReason.userComment if entry.overrideReason else None,
    )


@router.post(
    "/cds-services/{service_id}/feedback",
    response_class=Response,
    responses={
        200: {"description": "Stored (or already stored: repeats are idempotent); empty body."},
        **documented(400, 401, 404, 413, 503),
    },
    openapi_extra=request_body(FeedbackRequest),
    summary="Report what happened to issued cards",
)
async def feedback(runtime: RuntimeDep, client: ClientDep, service: ServiceDep, body: BodyDep) -> Response:
    """Validate the batch and store it durably before answering 200; nothing is stored when any entry fails.

    A card uuid this service never issued is a 400 (the URL exists; the body names something unknown).
    The same entry sent twice is stored once. A store that cannot be reached gives 503 with Retry-After,
    and so does one that still holds cards queued during an outage (cds.store.CardBacklog).
    """
    batch = parse_body(FeedbackRequest, body, max_depth=runtime.settings.max_json_depth)
    items = [_item(entry) for entry in batch.feedback]

    def store() -> int:
        # Cards issued while the store was down are written first, in order, so that this feedback
        # finds them; while that cannot happen the answer is 503 and nothing is acknowledged.
        runtime.flush_pending()
        with runtime.store_write():
            return runtime.store.record_feedback(
                service_id=service.id, items=items, received_at=runtime.clock()
            )

    await run_in_threadpool(store)
    for outcome, count in Counter(item.outcome for item in items).items():
        runtime.metrics.feedback.labels(service=service.id, outcome=outcome).inc(count)
    return Response(status_code=200)
