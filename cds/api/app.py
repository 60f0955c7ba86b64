"""Build the FastAPI app: routers, the error mapping, middleware, and what lives for the app's lifetime.

uvicorn --factory cds.api.app:factory     # settings from the CDS_* environment
create_app(Settings(...), store=..., clock=...)   # tests pass their own
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds.api import discovery, evaluate, feedback, health, pages, problems, questionnaire, services
from cds.api.catalog import build_catalog
from cds.api.deps import Runtime, WriteGate
from cds.api.middleware import BodyLimit, CatchAll, RequestLog
from cds.api.models import request_schemas
from cds.evaluation import Evaluator
from cds.jtiwriter import JtiWriter
from cds.logs import error_fields, log_event
from cds.metrics import Metrics
from cds.rulepack import load_rule_pack
from cds.security import AuthError, JtiCache, TokenVerifier, load_trusted_issuers, now_utc
from cds.settings import Settings
from cds.store import JTI_LIMITS, Store, StoreUnavailableError, text_problem

logger = logging.getLogger("cds.api")

DEV_WARNING = (
    "DEVELOPMENT MODE: JWT AUTHENTICATION IS OFF. Anyone who can reach this port can read cards. "
    "Bound to 127.0.0.1 only; never use --dev with real patient data."
)


# How often queued cards and outage JWT ids are offered back to the store.
FLUSH_INTERVAL_SECONDS = 0.5

# Sent on every response. The API serves JSON only, so the CSP forbids everything; the HTML pages
# (/preview, /docs and their files under /static) get cds.api.pages.PAGE_CSP: their own files only.
SECURITY_HEADERS: dict[bytes, bytes] = {
    b"x-content-type-options": b"nosniff",
    b"cache-control": b"no-store",  # cards and errors can carry PHI: never cached by a proxy or browser
    b"content-security-policy": b"default-src 'none'; frame-ancestors 'none'",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-resource-policy": b"same-origin",
}


class SecurityHeaders:
    """Add SECURITY_HEADERS to every HTTP response, errors and 413s included (outermost middleware)."""

    def __init__(self, app: ASGIApp, extra: dict[bytes, bytes] | None = None) -> None:
        self.app = app
        # --dev with a demo clock adds `CDS-Demo-Now` here, so every answer says which day it is for.
        self.headers = SECURITY_HEADERS | (extra or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = dict(self.headers)
        if pages.is_page(scope.get("path", "")):
            extra[b"content-security-policy"] = pages.PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra.items() if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_verifier(
    settings: Settings,
    clock: Callable[[], datetime],
    jti_writer: JtiWriter,
    jti_cache: JtiCache | None = None,
) -> TokenVerifier:
    """The JWT verifier for the trusted-issuers file; jti replay is checked in the store (through
    `jti_writer`, which the caller closes), so across workers.

    While the store is down, replay is checked in `jti_cache` (this worker only) and the ids are
    written to the store when it returns (cds.api.deps.Runtime.flush_pending).
    """
    if settings.trusted_issuers is None:
        raise ValueError("CDS_TRUSTED_ISSUERS must name the trusted-issuers file outside --dev")
    cache = jti_cache if jti_cache is not None else JtiCache()

    def replay_guard(iss: str, jti: str, expires_at: datetime) -> bool:
        # An id the store could not keep would fail every flush of the outage cache: refuse the token.
        if text_problem(jti, JTI_LIMITS["jti"]) or text_problem(iss, JTI_LIMITS["iss"]):
            raise AuthError("malformed", "jti or iss cannot be stored")
        now = clock()
        if cache.seen(iss, jti, now):
            return False
        try:
            fresh = jti_writer.remember(iss, jti, expires_at, now)  # one commit for the concurrent calls
        except StoreUnavailableError:
            try:
                return cache.remember(iss, jti, expires_at, now)
            except OverflowError:
                raise StoreUnavailableError("store unavailable and the JWT id cache is full") from None
        if fresh:
            cache.note(iss, jti, expires_at, now)
        return fresh

    return TokenVerifier(
        load_trusted_issuers(settings.trusted_issuers),
        replay_guard=replay_guard,
        leeway_seconds=settings.jwt_leeway_seconds,
        clock=clock,
    )


def create_app(
    settings: Settings,
    *,
    evaluator: Evaluator | None = None,
    store: Store | None = None,
    verifier: TokenVerifier | None = None,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], datetime] = now_utc,
) -> FastAPI:
    """The service. A broken rule pack or trusted-issuers file raises here, naming the file and field.

    What the caller passes in it keeps owning (and closes); what is built here is closed at shutdown.
    `clock` gives the evaluation time, the time cards are issued and the JWT verifier's now.
    """
    evaluator = evaluator or Evaluator(load_rule_pack(settings.rules_dir))
    demo_now = settings.demo_now if settings.dev else None
    if demo_now is not None:
        # The dev demo's clock: the fixtures keep giving their documented cards whatever the date.
        clock = lambda: demo_now  # noqa: E731
    owns_store = store is None
    store = store or Store(settings.database_url)
    gate = WriteGate.for_store(store)
    jti_cache = JtiCache()
    jti_writer: JtiWriter | None = None
    if settings.dev:
        verifier = None
    elif verifier is None:
        jti_writer = JtiWriter(store, gate)
        verifier = build_verifier(settings, clock, jti_writer, jti_cache)
    runtime = Runtime(
        settings=settings,
        evaluator=evaluator,
        store=store,
        verifier=verifier,
        metrics=Metrics(),
        services=build_catalog(evaluator.pack),
        clock=clock,
        store_write=gate,
        jti_cache=jti_cache,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(runtime.store.migrate)
        client = http_client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        runtime.http = client
        if settings.dev:
            log_event(logger, DEV_WARNING, level=logging.WARNING)
        pack = evaluator.pack
        log_event(
            logger,
            "service.start",
            rulePack=f"{pack.manifest.id} {pack.version}",
            services=sorted(runtime.services),
            auth="off (--dev)" if runtime.verifier is None else "jwt",
            store=runtime.store.engine.dialect.name,
            demoNow=demo_now.isoformat() if demo_now is not None else None,
        )
        flusher = asyncio.create_task(_flush_periodically(runtime), name="cds-store-flusher")
        # What start-up built (FHIR models, the rule pack, the app) lives as long as the process: moved
        # out of the collector's generations, full collections stop scanning it. bench/gcpause.py,
        # 5,000 evaluations of 200 distinct 50-resource patients: full collections took 138 ms median
        # (193 max) before, 0.9 ms (17 max) after; p99.9 per call 210 -> 112 ms on a loaded machine.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # back to the collector (matters where one process starts many apps: the tests)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await run_in_threadpool(runtime.card_writer.close)  # the calls still waiting are written
            if jti_writer is not None:
                await run_in_threadpool(jti_writer.close)
            await _flush_once(runtime)
            if len(runtime.cards):
                log_event(logger, "store.backlog.lost", level=logging.ERROR, batches=len(runtime.cards))
            runtime.http = None
            if http_client is None:
                await client.aclose()
            if owns_store:
                runtime.store.close()

    app = FastAPI(
        title="cramp-cds",
        version=evaluator.pack.version,
        summary="CDS Hooks 2.0 decision support: why muscle cramps persist after calcium supplements.",
        lifespan=lifespan,
        docs_url=None,  # served by cds.api.pages from local files, not a CDN
        redoc_url=None,
    )
    app.state.runtime = runtime
    problems.install(app)
    routers = (discovery, services, feedback, evaluate, questionnaire, health, pages)
    for router in (module.router for module in routers):
        app.include_router(router)
    pages.mount_static(app)
    # add_middleware wraps what is already there: the last one added sees the request first.
    app.add_middleware(CatchAll)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout_seconds
    )
    app.add_middleware(RequestLog, metrics=runtime.metrics)
    if settings.cors_origins:
        # https://cds-hooks.hl7.org/2.0/#cross-origin-resource-sharing (e.g. the browser-based sandbox)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    extra_headers = {b"cds-demo-now": demo_now.isoformat().encode()} if demo_now is not None else {}
    app.add_middleware(SecurityHeaders, extra=extra_headers)  # outermost: preflights and 413/500 get them too

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            # Client errors are answered 400 with an OperationOutcome (cds.api.problems), never 422.
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for name, definition in request_schemas().items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _flush_once(runtime: Runtime) -> None:
    """Offer what was held during a store outage back to the store; quiet while it is still down."""
    if not len(runtime.cards) and not len(runtime.jti_cache):
        return
    waiting = len(runtime.cards)
    try:
        written = await run_in_threadpool(runtime.flush_pending)
    except StoreUnavailableError:
        return
    except Exception as exc:  # never let the flusher die; the next round tries again
        log_event(logger, "store.flush.failed", level=logging.ERROR, **error_fields(exc))
        return
    if written:
        log_event(logger, "store.backlog.flushed", batches=written, waiting=waiting - written)


async def _flush_periodically(runtime: Runtime) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
        await _flush_once(runtime)


def factory() -> FastAPI:
    """Entry point for `uvicorn --factory` (and so for every worker): settings from the environment."""
    return create_app(Settings())
