"""What a request handler needs, as `Annotated` dependencies: the runtime, the caller's token, the service, the body."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import httpx
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from cds.api.catalog import ServiceSpec
from cds.api.workload import Workload
from cds.cardwriter import CardWriter
from cds.errors import UnknownServiceError
from cds.evaluation import Evaluator
from cds.logs import log_event
from cds.metrics import Metrics
from cds.security import AuthError, Claims, JtiCache, TokenVerifier
from cds.settings import Settings
from cds.store import CardBacklog, PendingCards, Store, StoreUnavailableError

logger = logging.getLogger("cds.api")


class WriteGate:
    """Hold `with gate():` around store writes.

    SQLite allows one writer; threads that collide wait in its busy handler, which sleeps in growing
    steps: with 8 concurrent hook calls that gave a p99 above 1 s. Queuing on a lock in the process
    keeps each wait to the writes ahead of it. PostgreSQL takes concurrent writers, so no lock there.
    """

    def __init__(self, *, serial: bool) -> None:
        self._lock = threading.Lock() if serial else None

    @classmethod
    def for_store(cls, store: Store) -> WriteGate:
        return cls(serial=store.engine.dialect.name == "sqlite")

    def __call__(self) -> contextlib.AbstractContextManager[object]:
        return self._lock if self._lock is not None else contextlib.nullcontext()


@dataclass
class Runtime:
    """Everything one app instance shares between requests; built by cds.api.app.create_app."""

    settings: Settings
    evaluator: Evaluator
    store: Store
    verifier: TokenVerifier | None  # None only with --dev
    metrics: Metrics
    services: dict[str, ServiceSpec]
    clock: Callable[[], datetime]
    store_write: WriteGate = field(default_factory=lambda: WriteGate(serial=False))
    # Issued cards and JWT ids held while the store is down, written back when it returns.
    backlog: CardBacklog | None = None
    jti_cache: JtiCache = field(default_factory=JtiCache)
    http: httpx.AsyncClient | None = None  # set by the lifespan (bound to the server's event loop)
    workload: Workload | None = None  # where evaluations run (cds.api.workload); built from the settings

    # The one thread that writes issued cards, many hook calls per commit (off the event loop).
    writer: CardWriter | None = None

    def __post_init__(self) -> None:
        if self.backlog is None:
            self.backlog = CardBacklog(
                self.store,
                gate=self.store_write,
                clock=self.clock,
                on_commit=self._committed,
                on_set_aside=self._set_aside,
            )
        if self.writer is None:
            self.writer = CardWriter(self.backlog)
        if self.workload is None:
            self.workload = Workload(self.evaluator, inline_max_resources=self.settings.inline_max_resources)

    @property
    def cards(self) -> CardBacklog:
        """Where issued cards are recorded: straight to the store, or queued while it is down."""
        assert self.backlog is not None  # set in __post_init__
        return self.backlog

    @property
    def card_writer(self) -> CardWriter:
        assert self.writer is not None  # set in __post_init__
        return self.writer

    def _committed(self, calls: int, rows: int) -> None:
        self.metrics.card_commits.observe(calls)

    def _set_aside(self, pending: PendingCards, reason: str) -> None:
        # The reason names an error class and a field, never a value; no patient data here.
        log_event(
            logger,
            "store.card.set_aside",
            level=logging.ERROR,
            service=pending.service_id,
            cards=len(pending.cards),
            reason=reason,
        )
        self.metrics.set_aside.labels(kind="issued_card").inc()

    def flush_pending(self) -> int:
        """Write queued cards (in order) and the JWT ids seen during an outage to the store.

        Raises StoreUnavailableError while the store is still down. Returns the card batches written.
        """
        written = self.cards.flush()
        for iss, jti, expires_at in self.jti_cache.drain():
            try:
                with self.store_write():
                    self.store.remember_jti(iss=iss, jti=jti, expires_at=expires_at, now=self.clock())
            except StoreUnavailableError:
                raise
            except Exception as exc:  # never let one id block the others: it stays refused here
                log_event(logger, "store.jti.unwritable", level=logging.ERROR, error=type(exc).__name__)
            self.jti_cache.forget(iss, jti)
        return written

    @property
    def evaluations(self) -> Workload:
        assert self.workload is not None  # set in __post_init__
        return self.workload

    @property
    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            raise RuntimeError("the app's HTTP client exists only while the app is running")
        return self.http


# The dependencies below do no I/O, so they are `async def`: FastAPI runs a plain `def` dependency in
# the thread pool, and on the hook path those two hops cost about 0.5 ms of CPU per call (issue 11).
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def endpoint_url(request: Request, settings: Settings) -> str:
    """The URL the client called, as the JWT `aud` must name it: CDS_PUBLIC_BASE_URL + the path.

    Never built from the Host or X-Forwarded-* headers, which the caller chooses. Only --dev (no
    authentication) may run without a public base URL; there it is the URL as the request states it.
    """
    if settings.public_base_url:
        return settings.public_base_url + request.url.path
    if not settings.dev:
        raise RuntimeError("CDS_PUBLIC_BASE_URL is required outside --dev")  # Settings refuses earlier
    return str(request.url.replace(query="", fragment=""))


def public_base(request: Request, settings: Settings) -> str:
    """The base URL for links in cards: CDS_PUBLIC_BASE_URL (required outside --dev), in --dev the request's."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def authenticate(request: Request, runtime: RuntimeDep) -> Claims | None:
    """Verify `Authorization: Bearer <JWT>` (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

    Runs in the thread pool: the replay check writes to the store and a JWKS URL may be fetched.
    """
    if runtime.verifier is None:
        return None
    header = request.headers.get("authorization")
    audience = endpoint_url(request, runtime.settings)
    try:
        claims = await run_in_threadpool(runtime.verifier.verify, header, audience=audience)
    except AuthError as exc:
        # Only the short reason code: never the token, its claims, or the detail text.
        request.state.error_reason = f"auth:{exc.reason}"
        raise
    log_event(logger, "auth.ok", level=logging.DEBUG, iss=claims.iss)
    return claims


ClientDep = Annotated[Claims | None, Depends(authenticate)]


async def get_service(service_id: str, runtime: RuntimeDep, request: Request) -> ServiceSpec:
    service = runtime.services.get(service_id)
    if service is None:
        raise UnknownServiceError(
            f"no CDS service {service_id!r}; GET /cds-services lists them", field="path.service_id"
        )
    request.state.service_id = service.id
    return service


ServiceDep = Annotated[ServiceSpec, Depends(get_service)]


async def read_body(request: Request) -> bytes:
    """The whole body; cds.api.middleware.BodyLimit stops it at the configured size with a 413."""
    return await request.body()


BodyDep = Annotated[bytes, Depends(read_body)]
