"""The one place that turns exceptions into HTTP answers: a FHIR OperationOutcome body and a status per type.

The exception's class hierarchy is walked (MRO) until a type in `RULES` matches; nothing reads message
text to choose a status.

    exception                         status  issue.code   issue.expression
    CdsError (by its .status)         4xx     invalid / not-found / incomplete / too-long / not-supported   .field
    cds.fhirclient.FhirFetchError     412     incomplete   prefetch.<key>  (413 too-long over a limit)
    cds.security.AuthError            401     login        (none: no detail that helps an attacker)
    cds.store.UnknownCardError        400     not-found    feedback.card
    cds.store.StoreUnavailableError   503     transient    (Retry-After header)
    cds.store.UnstorableValueError    400     invalid      the store's field (NUL, unpaired surrogate, too long)
    RequestValidationError            400     invalid      the parameter, e.g. query.now
    HTTPException (routing: 404/405)  as is   not-found / not-supported
    ClientDisconnect (mid-body)       499     incomplete   (nobody reads it; logged at INFO, counted as 499)
    anything else                     500     exception    (generic text; logged by type, never by message)

Example body (400)::

    {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
     "diagnostics": "Observation/obs-1: valueQuantity.value: Input should be a valid number",
     "expression": ["valueQuantity.value"]}]}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from cds.api.models import OperationOutcome, field_path
from cds.errors import CdsError, JsonError
from cds.fhirclient import LIMIT_REASONS, FhirFetchError
from cds.logs import error_fields, log_event
from cds.security import AuthError
from cds.store import StoreUnavailableError, UnknownCardError, UnstorableValueError

logger = logging.getLogger("cds.api")

RETRY_AFTER_SECONDS: Final = 5
CLIENT_CLOSED_REQUEST: Final = 499
ISSUE_CODES: Final[Mapping[int, str]] = {
    400: "invalid",
    401: "login",
    408: "timeout",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "incomplete",
    413: "too-long",
    415: "not-supported",
    503: "transient",
}


@dataclass(frozen=True)
class Problem:
    status: int
    diagnostics: str
    expression: str | None = None
    code: str | None = None  # FHIR issue-type; by default taken from the status
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": "error",
            "code": self.code or ISSUE_CODES.get(self.status, "exception"),
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers=dict(self.headers),
        )


INTERNAL: Final = Problem(500, "internal error; the service logged it", code="exception")


def _cds_error(exc: CdsError) -> Problem:
    if exc.status >= 500:  # a broken rule pack or engine: our fault, never the client's
        return _unexpected(exc)
    code = "structure" if isinstance(exc, JsonError) else None
    # A body not read to its end: the connection is closed after the answer (cds.connections lingers).
    headers = {"Connection": "close"} if getattr(exc, "close_connection", False) else {}
    return Problem(exc.status, str(exc), expression=exc.field, code=code, headers=headers)


def _fetch_error(exc: FhirFetchError) -> Problem:
    if exc.reason in LIMIT_REASONS:
        return Problem(
            413,
            f"prefetch key {exc.key!r} fetched from fhirServer is larger than this service accepts "
            f"({exc.reason}: {exc.detail})",
            expression=f"prefetch.{exc.key}",
        )
    return Problem(
        412,
        f"prefetch.{exc.key} {exc.why_missing} and could not be fetched from fhirServer ({exc.reason}"
        + (f": {exc.detail})" if exc.detail else ")"),
        expression=f"prefetch.{exc.key}",
        code="timeout" if exc.reason == "timeout" else "incomplete",
    )


def _client_disconnect(exc: ClientDisconnect) -> Problem:
    # The client went away mid-body: nobody reads this answer, but the log and the metrics count it as
    # what it is (499, "client closed request" in nginx's terms), never as a server error.
    log_event(logger, "request.client_disconnected", level=logging.INFO, status=CLIENT_CLOSED_REQUEST)
    return Problem(
        CLIENT_CLOSED_REQUEST,
        "the client closed the connection before the request arrived",
        code="incomplete",
    )


def _auth_error(exc: AuthError) -> Problem:
    # The reason goes to the log only (see cds.api.deps); the client learns nothing that helps a forger.
    return Problem(401, "authentication failed", headers={"WWW-Authenticate": "Bearer"})


def _unknown_card(exc: UnknownCardError) -> Problem:
    return Problem(
        400,
        f"this service never issued card {', '.join(exc.card_uuids)}",
        expression="feedback.card",
        code="not-found",
    )


def _store_unavailable(exc: StoreUnavailableError) -> Problem:
    return Problem(
        503,
        "the feedback and audit store is unavailable; retry later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _unstorable(exc: UnstorableValueError) -> Problem:
    # The API checks what it stores up front with the request's own field names; this is the backstop.
    return Problem(400, f"a value cannot be stored: {exc.reason}", expression=exc.field)


def _request_validation(exc: RequestValidationError) -> Problem:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    return Problem(400, str(first.get("msg", "invalid request")), expression=field_path(loc) or None)


def _http_exception(exc: HTTPException) -> Problem:
    return Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


def _unexpected(exc: BaseException) -> Problem:
    log_event(logger, "request.failed", level=logging.ERROR, **error_fields(exc))
    return INTERNAL


RULES: Final[Mapping[type[Exception], Callable[[Any], Problem]]] = {
    CdsError: _cds_error,
    FhirFetchError: _fetch_error,
    ClientDisconnect: _client_disconnect,
    AuthError: _auth_error,
    UnknownCardError: _unknown_card,
    StoreUnavailableError: _store_unavailable,
    UnstorableValueError: _unstorable,
    RequestValidationError: _request_validation,
    HTTPException: _http_exception,
}


def problem_for(exc: BaseException) -> Problem:
    """The Problem of the most specific type in `RULES` that `exc` is an instance of."""
    for cls in type(exc).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule(exc)
    return _unexpected(exc)


async def _handle(request: Request, exc: Exception) -> Response:
    return problem_for(exc).response()


def install(app: FastAPI) -> None:
    """Register the mapping for every type it knows; other exceptions reach cds.api.middleware.CatchAll."""
    for exc_type in RULES:
        app.add_exception_handler(exc_type, _handle)


DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "Not JSON, or a request that fails validation; issue.expression names the field.",
    401: "Missing or invalid JWT (no further detail is given).",
    404: "Unknown CDS service id.",
    412: (
        "A prefetch key was not sent, or sent as an OperationOutcome, and could not be fetched from "
        "fhirServer; diagnostics names each such key and why, issue.expression the first one."
    ),
    413: "The body is larger than the configured limit.",
    415: "The body is not sent as JSON (Content-Type application/json or application/fhir+json).",
    503: "The feedback and audit store is unavailable; see Retry-After.",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the OperationOutcome schema.

    An endpoint that documents 413 reads a body, so it can answer 415 too (cds.api.middleware.BodyLimit).
    """
    if 413 in statuses and 415 not in statuses:
        statuses = (*statuses, 415)
    return {status: {"model": OperationOutcome, "description": DESCRIPTIONS[status]} for status in statuses}
