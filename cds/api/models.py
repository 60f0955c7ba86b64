"""Pydantic models of the JSON the service reads and writes, for validation and the OpenAPI document.

Requests are parsed from raw bytes (`parse_body`) so that size limits, strict JSON and error bodies stay
under the service's control; a validation failure becomes a ShapeError naming the field, e.g.
`feedback[0].outcomeTimestamp`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from cds.errors import ShapeError
from cds.intake import load_json
from cds.limits import MAX_JSON_DEPTH
from cds.store import text_problem

M = TypeVar("M", bound=BaseModel)


def _storable(value: str | None) -> str | None:
    """The store keeps this text: refuse what a supported database could not (cds.store.text_problem).

    Used as a field validator after the field's own max_length, which matches the store's column.
    """
    problem = None if value is None else text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class _Lenient(BaseModel):
    """Unknown members are ignored: CDS clients may send extensions the service does not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Coding(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#coding"""

    system: str | None = Field(default=None, max_length=1024)
    code: str = Field(min_length=1, max_length=255)
    display: str | None = None

    _stored = field_validator("system", "code")(_storable)


# --------------------------------------------------------------------------- discovery


class ServiceDescription(BaseModel):
    """One entry of the discovery response (https://cds-hooks.hl7.org/2.0/#response)."""

    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str


class DiscoveryResponse(BaseModel):
    services: list[ServiceDescription]


# --------------------------------------------------------------------------- hook requests


class FhirBundle(_Lenient):
    """A FHIR R4 Bundle (collection, searchset, transaction or batch) holding one patient's resources."""

    resourceType: Literal["Bundle"]
    type: Literal["collection", "searchset", "transaction", "batch"]
    entry: list[dict[str, Any]] = Field(default_factory=list)


class FhirAuthorization(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#passing-the-access-token-to-the-cds-service

    Only `access_token` is read (sent as a Bearer token to fhirServer); token_type, expires_in, scope,
    subject and patient are accepted as the client sends them and not read.
    """

    access_token: str


class FhirResource(BaseModel):
    """Any FHIR resource (a Bundle included); intake validates the types the rules read."""

    model_config = ConfigDict(extra="allow", frozen=True)

    resourceType: str


class HookContext(BaseModel):
    """The hook's context: patientId; userId, encounterId and others are accepted.

    order-sign also needs `draftOrders`, a Bundle of the orders being signed (checked by that service).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    patientId: str = Field(min_length=1)


class Prefetch(BaseModel):
    """Per key: a FHIR resource or searchset Bundle, or null for no data. An absent key or an
    OperationOutcome is fetched from fhirServer. Keys the services do not advertise are ignored."""

    model_config = ConfigDict(extra="allow", frozen=True)

    patient: FhirResource | None = None
    observations: FhirResource | None = None
    conditions: FhirResource | None = None
    medicationRequests: FhirResource | None = None
    medicationStatements: FhirResource | None = None
    questionnaireResponses: FhirResource | None = None


class HookRequestBody(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#http-request_1 (validated by cds.intake.read_hook_request).

    The schema says what read_hook_request requires, so that a request valid by it is refused only
    for its FHIR content, its hook name, or a missing prefetch key; what the service does not read
    is left open.
    """

    hook: str = Field(min_length=1, description="Must be the hook of the service called.")
    hookInstance: str = Field(min_length=1, max_length=255, description="A UUID.")
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: Prefetch | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Card(BaseModel):
    """https://cds-hooks.hl7.org/2.0/#card-attributes"""

    uuid: str
    summary: str = Field(max_length=139)
    detail: str | None = Field(default=None, description="GitHub Flavored Markdown")
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None


class CardsResponse(BaseModel):
    cards: list[Card]


# --------------------------------------------------------------------------- feedback


class AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1, max_length=255)

    _stored = field_validator("id")(_storable)


class OverrideReason(_Lenient):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=10_000)

    _stored = field_validator("userComment")(_storable)


class FeedbackEntry(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#feedback"""

    card: UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime

    @field_validator("outcomeTimestamp")
    @classmethod
    def _storable_instant(cls, value: datetime) -> datetime:
        # The store keeps UTC: an instant in year 0 or 10000 once there (0001-01-01T00:00:00+14:00) was a 500.
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("must fall between years 1 and 9999 in UTC") from None

    @model_validator(mode="after")
    def _fits_outcome(self) -> FeedbackEntry:
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason is only allowed when the outcome is overridden")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only allowed when the outcome is accepted")
        return self


class FeedbackRequest(_Lenient):
    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=1000)


# --------------------------------------------------------------------------- errors


class Issue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(description="FHIR issue-type code, e.g. invalid, not-found, incomplete, too-long")
    diagnostics: str
    expression: list[str] | None = Field(
        default=None, description="Where the problem is, e.g. prefetch.observations or feedback[0].card"
    )


class OperationOutcome(BaseModel):
    """Every error body is a FHIR OperationOutcome (the form CDS Hooks 3.0 asks for)."""

    resourceType: Literal["OperationOutcome"] = "OperationOutcome"
    issue: list[Issue]


# --------------------------------------------------------------------------- parsing


def field_path(loc: tuple[int | str, ...]) -> str:
    """('feedback', 0, 'card') -> 'feedback[0].card'"""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text


def parse_body(model: type[M], raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> M:
    """Strict JSON, then the model; the first problem becomes a ShapeError naming its field."""
    document = load_json(raw, max_depth=max_depth)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        # An after-validator's loc is the object it checks; its message names the member.
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise ShapeError(message, field=field_path(tuple(first.get("loc", ()))) or None) from None


# --------------------------------------------------------------------------- OpenAPI

SCHEMA_REF = "#/components/schemas/{model}"
REQUEST_MODELS: tuple[type[BaseModel], ...] = (HookRequestBody, FeedbackRequest, FhirBundle)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself (see parse_body)."""
    schema = {"$ref": SCHEMA_REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def request_schemas() -> dict[str, Any]:
    """Component schemas of the request models and everything they use."""
    _, top = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=SCHEMA_REF)
    defs: dict[str, Any] = top.get("$defs", {})
    return defs
