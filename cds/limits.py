"""Limits: the most work one request may ask for, counted before the work is done.

Each limit is a setting (cds.settings, `CDS_MAX_*`) and each refusal names the limit and the field:

    a prefetch `conditions` Bundle of 6,000 entries -> 413, issue.expression ["prefetch.conditions"],
    "holds 6000 resources; the limit is 5000 per prefetch key (CDS_MAX_RESOURCES_PER_KEY)"

Counting is linear in the size of the request and touches no FHIR model, so a request over a limit
costs almost nothing. The nesting depth of any JSON (CDS_MAX_JSON_DEPTH) is checked while parsing
(cds.intake.load_json); bytes fetched from a client's FHIR server by cds.fhirclient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cds.errors import PayloadTooLargeError

#: Default limits (the settings start from these). Measured on this project's 2-core machine, a read
#: Condition costs about 0.1-0.3 ms from parse to card, so 10,000 resources are a few seconds of one
#: worker's CPU (off the event loop, see cds.api.services); the default body limit (5 MiB) holds
#: about 25,000 minimal resources, hence separate counts.
MAX_RESOURCES_PER_KEY: Final = 5_000
MAX_RESOURCES: Final = 10_000
MAX_ANSWERS_PER_QUESTIONNAIRE: Final = 1_000
MAX_FETCH_BYTES: Final = 16 * 1024 * 1024
# Objects and arrays inside one another, the body itself counting as one. A hook request reaches a
# QuestionnaireResponse item at depth 8 and each nested item adds 2, so 64 leaves room for groups
# nested about 25 deep; more is an attack or a bug.
MAX_JSON_DEPTH: Final = 64
#: Up to this many resources a request is evaluated on the event loop (see cds.api.services).
INLINE_MAX_RESOURCES: Final = 100


@dataclass(frozen=True)
class Limits:
    resources_per_key: int = MAX_RESOURCES_PER_KEY
    resources: int = MAX_RESOURCES
    answers_per_questionnaire: int = MAX_ANSWERS_PER_QUESTIONNAIRE
    json_depth: int = MAX_JSON_DEPTH
    fetch_bytes: int = MAX_FETCH_BYTES


def check_prefetch(prefetch: Mapping[str, Any], extra: Iterable[Any], limits: Limits) -> int:
    """The number of resources in the prefetch (per key and in all) and `extra` (draft orders), each
    QuestionnaireResponse's items and answers; PayloadTooLargeError (413) naming the first limit passed."""
    total = 0
    for key, value in prefetch.items():
        if not isinstance(value, dict):
            continue
        where = f"prefetch.{key}"
        resources, is_bundle = _resources(value)
        if len(resources) > limits.resources_per_key:
            raise PayloadTooLargeError(
                f"holds {len(resources)} resources; the limit is {limits.resources_per_key} per prefetch key "
                "(CDS_MAX_RESOURCES_PER_KEY)",
                field=where,
            )
        total += len(resources)
        _check_answers(resources, f"{where}.entry" if is_bundle else None, where, limits)
    drafts = list(extra)
    return _check_total(total + len(drafts), "prefetch", limits)


def check_bundle(document: Any, limits: Limits) -> int:
    """The number of entries of a Bundle sent to /evaluate (or of a hook request's prefetch)."""
    if isinstance(document, dict) and isinstance(document.get("prefetch"), dict):
        return check_prefetch(document["prefetch"], (), limits)
    if not isinstance(document, dict):
        return 0
    resources, _ = _resources(document)
    _check_answers(resources, "entry", None, limits)
    return _check_total(len(resources), "entry", limits)


def _check_total(total: int, where: str, limits: Limits) -> int:
    if total > limits.resources:
        raise PayloadTooLargeError(
            f"holds {total} resources in all; the limit is {limits.resources} (CDS_MAX_RESOURCES)",
            field=where,
        )
    return total


def _resources(value: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The resources of a Bundle (its entries) or the one resource, and whether it was a Bundle; shapes
    are checked later (cds.intake)."""
    if value.get("resourceType") != "Bundle":
        return [value], False
    entries = value.get("entry")
    if not isinstance(entries, list):
        return [], True
    return [entry.get("resource") if isinstance(entry, dict) else None for entry in entries], True


def _check_answers(resources: list[Any], entries: str | None, single: str | None, limits: Limits) -> None:
    """Items and answers per QuestionnaireResponse; `entries` names a Bundle's entry list, `single` a
    prefetch key that holds one resource."""
    for index, resource in enumerate(resources):
        if isinstance(resource, dict) and resource.get("resourceType") == "QuestionnaireResponse":
            count = count_answers(resource)
            if count > limits.answers_per_questionnaire:
                place = f"{entries}[{index}].resource" if entries is not None else str(single)
                raise PayloadTooLargeError(
                    f"holds {count} items and answers; the limit is {limits.answers_per_questionnaire} per "
                    "QuestionnaireResponse (CDS_MAX_ANSWERS_PER_QUESTIONNAIRE)",
                    field=f"{place}.item",
                )


def count_answers(response: Mapping[str, Any]) -> int:
    """Items and answers of a QuestionnaireResponse, nested ones included (raw JSON, iteratively).

    >>> count_answers({"item": [{"linkId": "a", "answer": [{"valueBoolean": True}]}]})
    2
    """
    count = 0
    stack: list[Any] = [response.get("item")]
    while stack:
        items = stack.pop()
        if not isinstance(items, list):
            continue
        for item in items:
            count += 1
            if not isinstance(item, dict):
                continue
            stack.append(item.get("item"))
            answers = item.get("answer")
            if isinstance(answers, list):
                count += len(answers)
                stack.extend(a.get("item") for a in answers if isinstance(a, dict))
    return count
