"""One bucket's lines -> one evaluation per patient through the Evaluator (the hook's own pipeline) -> rows.

Both engines call `screen_lines`, so a patient's worklist row is what `cds evaluate` gives for a
Bundle of that patient's resources. A patient whose data cannot be read (bad JSON, invalid FHIR, two
results the rules cannot tell apart...) becomes one error row naming the line, resource and field,
exactly where the hook would answer 400.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from cds.errors import CdsError
from cds.evaluation import Evaluator
from cds.fhirvalues import reference_key
from cds.hooks import QUESTIONNAIRE_PATH, questionnaire_notice
from cds.intake import load_json
from cds.screen.routing import Problem
from cds.screen.worklist import card_row

Entry = tuple[str, Mapping[str, Any], str]
QUESTIONNAIRE_URL = "http://127.0.0.1:8000" + QUESTIONNAIRE_PATH  # the link is not part of a worklist row
SEPARATOR = b"\t"


def bucket_line(where: str, patient: str, raw: bytes) -> bytes:
    """A line of a bucket file: a small JSON header, a tab, the untouched NDJSON line."""
    return orjson.dumps([where, patient]) + SEPARATOR + raw + b"\n"


def read_bucket_line(line: bytes) -> tuple[str, str, bytes]:
    header, raw = line.rstrip(b"\n").split(SEPARATOR, 1)
    where, patient = orjson.loads(header)
    return str(where), str(patient), raw


def group_by_patient(lines: Iterable[tuple[str, str, bytes]]) -> dict[str, list[tuple[str, bytes]]]:
    grouped: dict[str, list[tuple[str, bytes]]] = {}
    for where, patient, raw in lines:
        grouped.setdefault(patient, []).append((where, raw))
    return grouped


def screen_patients(
    grouped: Mapping[str, list[tuple[str, bytes]]],
    *,
    evaluator: Evaluator,
    now: datetime,
    medications: Mapping[str, tuple[str, bytes]],
) -> list[dict[str, Any]]:
    """Rows for the patients with cards or errors, in patient-id order."""
    rows = []
    for patient in sorted(grouped):
        row = screen_patient(patient, grouped[patient], evaluator=evaluator, now=now, medications=medications)
        if row is not None:
            rows.append(row)
    return rows


def screen_patient(
    patient: str,
    lines: list[tuple[str, bytes]],
    *,
    evaluator: Evaluator,
    now: datetime,
    medications: Mapping[str, tuple[str, bytes]],
) -> dict[str, Any] | None:
    """One patient's row, or None when the patient gets no card."""
    entries: list[Entry] = []
    by_label: dict[str, str] = {}
    for where, raw in sorted(lines):  # file:line order, whatever order the lines were grouped in
        try:
            resource = load_json(raw)
        except CdsError as exc:
            return Problem(where=where, message=exc.message, patient=patient).as_json()
        entries.append((where, resource, ""))
        by_label.setdefault(f"{resource.get('resourceType')}/{resource.get('id')}", where)
    own = len(entries)
    entries.extend(_referred_medications(entries, medications))
    for where, resource, _ in entries[own:]:
        by_label.setdefault(f"Medication/{resource.get('id')}", where)
    try:
        result = evaluator.evaluate_entries(entries, now=now, patient_id=patient)
    except CdsError as exc:
        found = by_label.get(exc.resource or "") if exc.resource else None
        return Problem(
            where=found, message=exc.message, resource=exc.resource, field=exc.field, patient=patient
        ).as_json()
    except Exception as exc:  # a bug must not stop the other patients; the type names it, never the data
        return Problem(
            where=None, message=f"internal error ({type(exc).__name__})", patient=patient
        ).as_json()
    # As `cds evaluate` of a Bundle and the cramp-assessment service answer: a patient on calcium with no
    # answers and no cramp Condition gets the notice asking for the questionnaire.
    notice = questionnaire_notice(result, evaluator.pack, url=QUESTIONNAIRE_URL, new_id=evaluator.new_id)
    cards = [*result.cards, *([notice] if notice else [])]
    if not cards:
        return None
    return card_row(patient, cards, evaluator.pack.version)


def _referred_medications(entries: list[Entry], medications: Mapping[str, tuple[str, bytes]]) -> list[Entry]:
    """The Medication resources this patient's orders and statements refer to, once each."""
    found: dict[str, Entry] = {}
    for _, resource, _ in entries:
        if resource.get("resourceType") not in {"MedicationRequest", "MedicationStatement"}:
            continue
        ref = resource.get("medicationReference")
        target = ref.get("reference") if isinstance(ref, dict) else None
        key = reference_key(target) if isinstance(target, str) else None
        if key is not None and key in medications and key not in found:
            where, raw = medications[key]
            found[key] = (where, orjson.loads(raw), "")
    return list(found.values())
