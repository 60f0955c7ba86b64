"""ASGI middleware: the body guard (size, media type), the catch-all for unexpected errors, and the request log + metrics.

Pure ASGI rather than BaseHTTPMiddleware, so the body streams through untouched and the limit is
enforced while bytes arrive, before a handler holds the whole body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds.api.problems import problem_for
from cds.errors import BodyTooLargeError, RequestTimeoutError, UnsupportedMediaTypeError
from cds.logs import log_event
from cds.metrics import Metrics

logger = logging.getLogger("cds.api")


def is_json_media_type(content_type: bytes | None) -> bool:
    """application/json or any application/*+json (FHIR's application/fhir+json), with any parameters.

    No Content-Type at all is read as JSON: the body is parsed strictly either way.

        >>> [is_json_media_type(v) for v in (b"application/json; charset=utf-8", b"text/plain", None)]
        [True, False, True]
    """
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    return kind == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


class BodyLimit:
    """413 when Content-Length says the body is too large, or when the streamed bytes pass the limit;
    415 when a handler reads a body whose Content-Type is not JSON (text/plain, multipart, forms).

    408 when the body has not all arrived `body_timeout` seconds after the request began (its headers
    were in): a client that sends its body a byte at a time cannot hold a worker's request open.

    All three are raised from `receive`, so only routes that read a body refuse one: a wrong method or
    path still gets its 405/404, and a caller without a valid JWT still gets 401 before the body is read.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    def _too_large(self) -> BodyTooLargeError:
        return BodyTooLargeError(
            f"the request body is larger than {self.max_bytes} bytes (CDS_MAX_BODY_BYTES)", field="body"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problem_for(self._too_large()).response()(scope, receive, send)
            return
        seen = 0
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        json_body = is_json_media_type(content_type)

        async def counting_receive() -> Message:
            nonlocal seen, body_done
            if not json_body:
                raise UnsupportedMediaTypeError(
                    "the body must be JSON: send Content-Type: application/json", field="header.content-type"
                )
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout:g} s (CDS_BODY_TIMEOUT_SECONDS)",
                    field="body",
                ) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
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
