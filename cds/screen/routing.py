"""One NDJSON line -> the patient it belongs to, with the pack's filters applied before anything is kept.

Both engines route every line through `Router.route`, so the local bucket files and Spark's groups
hold the same lines. A line is kept (a resource the rules read, about a patient), shared (a
Medication, which orders refer to), skipped and counted (a type or code the rules never read, a
subject that is not a Patient), or an error naming the line and field.

    >>> router.route(b'{"resourceType":"Observation","subject":{"reference":"Patient/p1"},...}', "Observation.ndjson:7")
    Routed(action='keep', patient='p1', kind='Observation', reason=None, problem=None)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cds.fhirvalues import reference_key
from cds.intake import MODELS
from cds.record import condition_wanted, medication_wanted, observation_wanted
from cds.rulepack import RulePack

KEEP: Final = "keep"
SHARED: Final = "shared"
SKIP: Final = "skip"
ERROR: Final = "error"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Problem:
    """Why a line, resource or patient could not be read: where (file:line), what, which field."""

    where: str | None
    message: str
    resource: str | None = None
    field: str | None = None
    patient: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "error": {
                "where": self.where,
                "resource": self.resource,
                "field": self.field,
                "message": self.message,
            },
        }


@dataclass(frozen=True)
class Routed:
    action: str  # keep | shared | skip | error
    patient: str | None = None  # keep: the patient id; shared: the Medication's `Medication/id`
    kind: str | None = None
    reason: str | None = None  # skip: the count it goes to
    problem: Problem | None = None


def bucket_of(patient: str, buckets: int) -> int:
    """A stable bucket for a patient id (the same in every process, engine and run)."""
    return zlib.crc32(patient.encode()) % buckets


class Router:
    def __init__(self, pack: RulePack) -> None:
        medications = medication_wanted(pack)
        self.wanted: Mapping[str, Callable[[Mapping[str, Any]], bool]] = {
            "Observation": observation_wanted(pack),
            "Condition": condition_wanted(pack),
            "MedicationRequest": medications,
            "MedicationStatement": medications,
        }

    def route(self, raw: bytes, where: str) -> Routed:
        try:
            resource = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _error(where, f"not valid JSON ({exc})")
        if not isinstance(resource, dict):
            return _error(where, "not a JSON object")
        kind = resource.get("resourceType")
        if not isinstance(kind, str) or not kind:
            return _error(where, "has no resourceType", field="resourceType")
        rid = resource.get("id")
        label = f"{kind}/{rid}" if isinstance(rid, str) and rid else kind
        if kind not in MODELS:
            return Routed(SKIP, kind=kind, reason=f"{kind} (not read by the rules)")
        wanted = self.wanted.get(kind)
        if wanted is not None and not wanted(resource):
            return Routed(SKIP, kind=kind, reason=f"{kind} (code not read by the rules)")
        if kind == "Patient":
            if not isinstance(rid, str) or not _FHIR_ID.match(rid):
                return _error(
                    where, "needs an id of 1-64 letters, digits, '-' or '.'", resource=label, field="id"
                )
            return Routed(KEEP, patient=rid, kind=kind)
        if kind == "Medication":
            if not isinstance(rid, str) or not rid:
                return _error(where, "needs an id so that orders can refer to it", resource=label, field="id")
            return Routed(SHARED, patient=f"Medication/{rid}", kind=kind)
        subject = resource.get("subject")
        reference = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(reference, str) or not reference:
            return _error(
                where,
                "has no subject reference, so it belongs to no patient",
                resource=label,
                field="subject.reference",
            )
        key = reference_key(reference)
        if key is None or "/" not in key or key.startswith("urn:"):
            return _error(
                where,
                f"subject {reference!r} is not a Type/id reference",
                resource=label,
                field="subject.reference",
            )
        target, _, pid = key.partition("/")
        if target != "Patient":
            return Routed(SKIP, kind=kind, reason=f"{kind} (subject is a {target}, not a Patient)")
        return Routed(KEEP, patient=pid, kind=kind)


def _error(where: str, message: str, *, resource: str | None = None, field: str | None = None) -> Routed:
    return Routed(ERROR, problem=Problem(where=where, message=message, resource=resource, field=field))
