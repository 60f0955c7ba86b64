"""Run the service under uvicorn: `cds serve` ends here.

Every worker builds its app with the `cds.api.app:factory` import string (uvicorn needs one for
--workers > 1), so the command-line choices reach the workers as CDS_* environment variables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import uvicorn

from cds.connections import GuardedHttpProtocol
from cds.logs import uvicorn_log_config
from cds.settings import Settings

LOOPBACK = "127.0.0.1"
WORKER_HEALTHCHECK_SECONDS = 60


def settings_from(overrides: Mapping[str, str]) -> Settings:
    """Export the overrides for the workers, then validate the whole configuration once, up front."""
    # Writing (not reading) the environment: it is how uvicorn's worker processes receive settings.
    os.environ.update({f"CDS_{name.upper()}": value for name, value in overrides.items()})
    return Settings()


def base_url(settings: Settings) -> str:
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    return f"http://{host}:{settings.port}"


def bind_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port (for example "Address already in use"), or None.

    Checked before anything is printed, with the same SO_REUSEADDR uvicorn sets, so a port in
    TIME_WAIT is not reported busy.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return str(exc.strerror)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return str(exc.strerror)
    return None


def run(settings: Settings) -> None:
    """Serve until interrupted. --dev binds loopback only (the caller refuses any other host)."""
    if settings.dev and settings.host != LOOPBACK:
        raise ValueError("--dev serves without authentication and binds 127.0.0.1 only")
    uvicorn.run(
        "cds.api.app:factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,
        server_header=False,
        # X-Forwarded-For/-Proto only from the configured proxies (uvicorn would trust 127.0.0.1).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        ws="none",
        # A header timeout and a lingering close, which uvicorn alone does not have (cds.connections).
        http=GuardedHttpProtocol,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # uvicorn kills a worker that does not answer its supervisor's ping within this many seconds;
        # its default (5 s) is shorter than a worker's start-up (importing the FHIR models and the
        # rule pack) on a busy 2-core machine, where 2 workers were killed and respawned forever.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )
