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

from cds.errors import FhirValidationError
from cds.intake import Resource


def refuse_modifier_extensions(resource: Resource) -> None:
    if "modifierExtension" not in resource.model.model_dump_json(exclude_none=True):
        return  # the common case, decided on the serialised text without walking the model
    for path, extension in _modifiers(resource.model.model_dump(exclude_none=True, by_alias=True), ""):
        url = extension.get("url") if isinstance(extension, dict) else None
        raise FhirValidationError(
            f"carries a modifier extension this service does not understand ({url or 'no url'}); "
            "FHIR forbids reading the resource without it, so the request is refused",
            resource=resource.key,
            field=path,
        )


def _modifiers(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key == "modifierExtension" and isinstance(value, list):
                for index, extension in enumerate(value):
                    yield f"{where}[{index}]", extension
            else:
                yield from _modifiers(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _modifiers(value, f"{path}[{index}]")
