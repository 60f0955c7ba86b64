"""Prefetch: the templates a service advertises (built from the rule pack) and filling in what a client left out.

The templates are derived from the pack's code lists, so they change when the pack changes::

    >>> prefetch_templates(pack)["observations"]
    'Observation?patient={{context.patientId}}&code=http://loinc.org|62292-8,http://loinc.org|1989-3,...'

https://cds-hooks.hl7.org/2.0/#prefetch-template
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from cds.errors import PrefetchMissingError, ShapeError
from cds.fhirclient import FhirFetchError, fetch_prefetch, fill_template
from cds.intake import PREFETCH_KEYS, HookRequest, usable_prefetch
from cds.limits import Limits
from cds.rulepack import RulePack

PATIENT_TOKEN: Final = "{{context.patientId}}"  # noqa: S105 - a prefetch token, not a secret
# Statuses the record reads (cds.record); asking the server for the rest would only cost time.
OBSERVATION_STATUSES: Final = "final,amended,corrected"
# Visible ASCII: what cds.fhirclient accepts in the Authorization header it sends.
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


def _tokens(codes: list[tuple[str, str]]) -> str:
    """`system|code` search tokens, each once, in pack order."""
    return ",".join(dict.fromkeys(f"{system}|{code}" for system, code in codes))


def prefetch_templates(pack: RulePack) -> dict[str, str]:
    """One FHIR query per prefetch key, restricted by the codes the rules actually read.

    Conditions are filtered by code only when every condition value set is a plain code list: FHIR
    token search cannot express the ICD-10 prefixes (`N18.*`) some sets use, so with prefixes the
    template asks for all of the patient's conditions and intake does the matching. Medications are
    never filtered by code, because the medication value sets also match on free text.
    """
    observation_codes = [(c.system, c.code) for analyte in pack.analytes.values() for c in analyte.codes]
    condition_sets = pack.valuesets.conditions.values()
    condition_query = f"Condition?patient={PATIENT_TOKEN}"
    if not any(vs.prefixes for vs in condition_sets):
        condition_codes = [(c.system, c.code) for vs in condition_sets for c in vs.codes]
        condition_query += f"&code={_tokens(condition_codes)}"
    templates = {
        "patient": f"Patient/{PATIENT_TOKEN}",
        "observations": (
            f"Observation?patient={PATIENT_TOKEN}&status={OBSERVATION_STATUSES}"
            f"&code={_tokens(observation_codes)}"
        ),
        "conditions": condition_query,
        "medicationRequests": f"MedicationRequest?patient={PATIENT_TOKEN}&status=active",
        "medicationStatements": f"MedicationStatement?patient={PATIENT_TOKEN}&status=active",
        "questionnaireResponses": (
            f"QuestionnaireResponse?patient={PATIENT_TOKEN}&questionnaire={pack.questionnaire_url}"
        ),
    }
    assert tuple(templates) == PREFETCH_KEYS
    return templates


@dataclass(frozen=True)
class ResolvedPrefetch:
    """Every prefetch key with a usable value (a resource, a Bundle, or None for "no data")."""

    data: dict[str, Any]
    fetched: tuple[str, ...]  # keys fetched from the FHIR server rather than sent


def missing_keys(prefetch: Mapping[str, Any], keys: tuple[str, ...] = PREFETCH_KEYS) -> list[str]:
    """Keys not sent, or sent as an OperationOutcome (the client tried and failed: fetch as if absent)."""
    return [k for k in keys if k not in prefetch or not usable_prefetch(prefetch[k])]


def why_missing(prefetch: Mapping[str, Any], key: str) -> str:
    """Why a key counts as missing, in the words of a 412 body."""
    if key not in prefetch:
        return "was not sent"
    return "was sent as an OperationOutcome (the client's own query for it failed)"


def require_sent(request: HookRequest, keys: tuple[str, ...], *, can_fetch: bool) -> list[str]:
    """The keys to fetch; without a FHIR server to ask, a missing key is a 412 that names each one and why.

    A CDS client (the public sandbox does this) may drop a key or send an OperationOutcome when its own
    query fails, and then show "no recommendations" for the 412: the body says which key and why, e.g.
    `prefetch.observations was sent as an OperationOutcome (...); prefetch.conditions was not sent; ...`.
    """
    missing = missing_keys(request.prefetch, keys)
    if missing and not can_fetch:
        reasons = "; ".join(f"prefetch.{key} {why_missing(request.prefetch, key)}" for key in missing)
        raise PrefetchMissingError(
            f"{reasons}; the request has no fhirServer to fetch {'it' if len(missing) == 1 else 'them'} "
            "from (send the data, or null for none)",
            field=f"prefetch.{missing[0]}",
        )
    return missing


def template_context(context: Mapping[str, Any]) -> dict[str, str]:
    """Only root-level primitive context fields may fill prefetch tokens (CDS Hooks 2.0, prefetch tokens)."""
    return {k: v for k, v in context.items() if isinstance(v, str)}


async def resolve_prefetch(
    request: HookRequest,
    templates: Mapping[str, str],
    *,
    client: httpx.AsyncClient,
    budget_seconds: float,
    limits: Limits | None = None,
) -> ResolvedPrefetch:
    """Use what the client sent; fetch each missing key from `fhirServer` within the time budget.

    Raises PrefetchMissingError (412) when a key is missing and there is no FHIR server to ask, and
    lets cds.fhirclient.FhirFetchError (412 naming the key; 413 when the data passes `limits`) through
    when the server fails.
    """
    limits = limits or Limits()
    data = {k: request.prefetch[k] for k in templates if k in request.prefetch}
    missing = require_sent(request, tuple(templates), can_fetch=request.fhir_server is not None)
    if not missing:
        return ResolvedPrefetch(data=data, fetched=())
    assert request.fhir_server is not None  # require_sent raised otherwise
    context = template_context(request.context)
    queries: dict[str, str] = {}
    for key in missing:
        try:
            queries[key] = fill_template(templates[key], context)
        except ValueError as exc:
            raise PrefetchMissingError(str(exc), field=f"prefetch.{key}") from None
    if request.access_token is not None and not _HEADER_SAFE.fullmatch(request.access_token):
        raise ShapeError(
            "holds characters not allowed in an HTTP header", field="fhirAuthorization.access_token"
        )
    try:
        fetched = await fetch_prefetch(
            client=client,
            fhir_server=request.fhir_server,
            access_token=request.access_token,
            queries=queries,
            deadline=time.monotonic() + budget_seconds,
            max_entries=limits.resources_per_key,
            max_total_bytes=limits.fetch_bytes,
        )
    except ValueError as exc:
        # The token was checked above, so what fetch_prefetch refuses here is the server URL.
        raise ShapeError(str(exc), field="fhirServer") from None
    except FhirFetchError as exc:
        exc.why_missing = why_missing(request.prefetch, exc.key)
        raise
    data.update(fetched)
    return ResolvedPrefetch(data=data, fetched=tuple(fetched))
