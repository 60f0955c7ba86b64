"""Modifier extensions: FHIR forbids ignoring one that is not understood, and this service understands none.

https://hl7.org/fhir/R4/extensibility.html#modifierExtension: a modifier extension changes the meaning of
the element that holds it (for example "this is NOT a pregnancy"). Reading the resource without it could
reverse what it says, and dropping the resource silently would lose evidence. So a request whose patient
resources (or their Medications) carry a modifierExtension anywhere is refused with a 400 error that names
the resource, the field and the extension's URL; the EHR can send the data without it, or a person can
read the record instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from cds.errors import FhirValidationError
from cds.intake import Resource


def refuse_modifier_extensions(resource: Resource) -> None:
    if not resource.may_modify:
        return
    for path, extension in _modifiers(resource.model, ""):
        url = getattr(extension, "url", None)
        raise FhirValidationError(
            f"carries a modifier extension this service does not understand ({url or 'no url'}); "
            "FHIR forbids reading the resource without it, so the request is refused",
            resource=resource.key,
            field=path,
        )


def _modifiers(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, extension) of every modifierExtension under `node`, walking the validated model's own
    fields (no serialisation: this runs on every resource of the patient)."""
    if isinstance(node, BaseModel):
        fields = node.__dict__
        for index, extension in enumerate(fields.get("modifierExtension") or ()):
            yield f"{path}.modifierExtension[{index}]" if path else f"modifierExtension[{index}]", extension
        for key, value in fields.items():
            if key != "modifierExtension" and isinstance(value, BaseModel | list):
                yield from _modifiers(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, BaseModel | list):
                yield from _modifiers(value, f"{path}[{index}]")
