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


@router.get("/readyz", summary="Readiness", responses={503: {"description": "The store is unreachable."}})
async def readyz(runtime: RuntimeDep) -> JsonResponse:
    """200 when the rule pack is loaded and the store answers; 503 otherwise."""
    pack = runtime.evaluator.pack
    store_ok = await run_in_threadpool(runtime.store.ping)
    body = {
        "status": "ready" if store_ok else "not ready",
        "rulePack": f"{pack.manifest.id} {pack.version}",
        "store": "ok" if store_ok else "unreachable",
    }
    return JsonResponse(body, status_code=200 if store_ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
