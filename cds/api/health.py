"""Liveness, readiness and Prometheus metrics; unauthenticated, and they carry no patient data."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from cds.api.deps import RuntimeDep
from cds.api.responses import JsonResponse
from cds.metrics import CONTENT_TYPE

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> JsonResponse:
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "The store is unreachable, or refuses writes."}},
)
async def readyz(runtime: RuntimeDep) -> JsonResponse:
    """200 when the rule pack is loaded and the store takes writes; 503 otherwise.

    A SELECT 1 is not enough: a read-only or locked database answers it. So a write is tried (and
    rolled back), and the card rows queued during an outage must be draining: `backlog` counts the
    hook calls whose rows wait, `setAside` those the store refused for what they hold (kept in the
    dead_letter table, see cds.store.CardBacklog).
    """
    pack = runtime.evaluator.pack

    def probe() -> str:
        if not runtime.store.ping():
            return "unreachable"
        if not runtime.store.probe_write():
            return "not writable"
        return "stalled" if runtime.cards.stalled and len(runtime.cards) else "ok"

    store = await run_in_threadpool(probe)
    body = {
        "status": "ready" if store == "ok" else "not ready",
        "rulePack": f"{pack.manifest.id} {pack.version}",
        "store": store,
        "backlog": len(runtime.cards),
        "setAside": runtime.cards.set_aside_total,
    }
    return JsonResponse(body, status_code=200 if store == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
