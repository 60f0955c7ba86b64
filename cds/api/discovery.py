"""GET /cds-services: the discovery document (https://cds-hooks.hl7.org/2.0/#discovery)."""

from __future__ import annotations

from fastapi import APIRouter

from cds.api.deps import ClientDep, RuntimeDep
from cds.api.models import DiscoveryResponse
from cds.api.problems import documented
from cds.api.responses import JsonResponse

router = APIRouter(tags=["CDS Hooks"])


@router.get(
    "/cds-services",
    response_model=DiscoveryResponse,
    responses=documented(401, 503),
    summary="List the CDS services",
)
async def discover(runtime: RuntimeDep, client: ClientDep) -> JsonResponse:
    """Both services with their hook, prefetch templates and usage requirements.

    The JWT is checked here too, as on every CDS Hooks endpoint: the spec has the client send it on every
    request (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).
    """
    return JsonResponse({"services": [s.describe() for s in runtime.services.values()]})
