"""POST /evaluate: cards for a FHIR Bundle, for test systems and batch users that do not speak CDS Hooks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from cds.api.deps import BodyDep, ClientDep, RuntimeDep, public_base
from cds.api.models import CardsResponse, FhirBundle, request_body
from cds.api.problems import documented
from cds.api.responses import JsonResponse
from cds.errors import InputError
from cds.fhirvalues import end_of_day
from cds.hooks import evaluate_document
from cds.intake import load_json
from cds.limits import check_bundle

router = APIRouter(tags=["Evaluation"])


def parse_moment(value: str) -> datetime:
    """`2026-06-01` means the end of that UTC day; an ISO date-time without zone is taken as UTC."""
    try:
        if len(value) == 10:
            return end_of_day(date.fromisoformat(value))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError("must be YYYY-MM-DD or an ISO 8601 date-time", field="query.now") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.post(
    "/evaluate",
    response_model=CardsResponse,
    responses=documented(400, 401, 412, 413),
    openapi_extra=request_body(FhirBundle),
    summary="Evaluate a FHIR Bundle",
)
async def evaluate(
    request: Request,
    runtime: RuntimeDep,
    client: ClientDep,
    body: BodyDep,
    now: Annotated[
        str | None,
        Query(
            description="Evaluate as of this day (YYYY-MM-DD, end of day UTC) or ISO date-time; default: now."
        ),
    ] = None,
) -> JsonResponse:
    """All topics of the rule pack for the one patient in the Bundle. Nothing is recorded: there is no feedback
    for cards issued here. A CDS Hooks request with every prefetch key filled is accepted as well, and
    answered as the service for its hook would answer it (order-sign: calcium-order-check)."""
    moment = parse_moment(now) if now is not None else runtime.clock()
    limits = runtime.settings.limits
    document = load_json(body, max_depth=limits.json_depth)
    resources = check_bundle(document, limits)
    base_url = public_base(request, runtime.settings)
    answer = await runtime.evaluations.run(
        resources,
        len(body),
        lambda evaluator: evaluate_document(document, evaluator=evaluator, now=moment, base_url=base_url),
    )
    request.state.card_count = len(answer.cards)
    return JsonResponse(answer.response())
