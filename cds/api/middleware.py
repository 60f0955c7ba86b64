"""ASGI middleware: the body-size limit, the catch-all for unexpected errors, and the request log + metrics.

Pure ASGI rather than BaseHTTPMiddleware, so the body streams through untouched and the limit is
enforced while bytes arrive, before a handler holds the whole body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds.api.problems import problem_for
from cds.errors import PayloadTooLargeError
from cds.logs import log_event
from cds.metrics import Metrics

logger = logging.getLogger("cds.api")


class BodyLimit:
    """413 when Content-Length says the body is too large, or when the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the request body is larger than {self.max_bytes} bytes", field="body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem_for(self._too_large()).response()(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # surfaces in the handler's read, mapped by cds.api.problems
            return message

        await self.app(scope, counting_receive, send)


class CatchAll:
    """Any exception no handler mapped becomes the generic 500 body; the log line names its type only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            problem = problem_for(exc)
            if started:
                return  # headers are out; nothing sensible left to send (logged by problem_for)
            await problem.response()(scope, receive, send)


class RequestLog:
    """One JSON log line and the request metrics per HTTP request (never the path's query or the body)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            elapsed = time.perf_counter() - began
            route = getattr(scope.get("route"), "path", "unmatched")
            state: dict[str, Any] = scope.get("state") or {}
            service = state.get("service_id", "")
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route, service=service).observe(elapsed)
            if route not in QUIET_ROUTES or status >= 400:
                log_event(
                    logger,
                    "request",
                    method=scope["method"],
                    route=route,
                    service=service or None,
                    hookInstance=state.get("hook_instance"),
                    cards=state.get("card_count"),
                    status=status,
                    durationMs=round(elapsed * 1000, 2),
                    error=state.get("error_reason"),
                )


# Probes and scrapes would drown the log; they are still counted.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
