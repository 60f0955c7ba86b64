"""Worklist rows, the run's summary, and the writers: CSV, NDJSON, and a FHIR transaction Bundle.

A row is a JSON object. Patients with cards:

    {"patient": "p1", "topics": ["lifestyle", "vitamin-d-deficiency"],
     "indicators": {"lifestyle": "info", "vitamin-d-deficiency": "warning"},
     "summaries": {...}, "tests": [{"topic": "vitamin-d-deficiency", "label": "Order 25-OH vitamin D",
     "system": "http://loinc.org", "code": "62292-8"}], "rules": ["vitd.deficient", ...],
     "packVersion": "0.3.0"}

A line, resource or patient that could not be read:

    {"patient": "p2", "error": {"where": "Observation.ndjson:17", "resource": "Observation/o9",
     "field": "valueQuantity.value", "message": "..."}}

Patients without cards are counted in the summary, not listed.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from cds.cards import EXPLANATION_KEY

CSV_COLUMNS = (
    "patient",
    "status",
    "topics",
    "indicators",
    "tests",
    "test_codes",
    "rules",
    "pack_version",
    "error_where",
    "error_resource",
    "error_field",
    "error_message",
)
_NAMESPACE = uuid.UUID("6f1d1c52-8e1b-4c43-9d1e-2a7f0c3c5a11")  # for stable fullUrls in the Bundle


def card_row(patient: str, cards: Sequence[Mapping[str, Any]], pack_version: str) -> dict[str, Any]:
    """The worklist row of one patient's cards (as the hook would return them)."""
    topics: list[str] = []
    indicators: dict[str, str] = {}
    summaries: dict[str, str] = {}
    tests: list[dict[str, str]] = []
    rules: list[str] = []
    for card in cards:
        topic = str(card["source"]["topic"]["code"])
        topics.append(topic)
        indicators[topic] = str(card["indicator"])
        summaries[topic] = str(card["summary"])
        for suggestion in card.get("suggestions", []):
            for action in suggestion.get("actions", []):
                resource = action.get("resource") or {}
                for coding in (resource.get("code") or {}).get("coding", []):
                    tests.append(
                        {
                            "topic": topic,
                            "label": str(suggestion["label"]),
                            "system": str(coding.get("system")),
                            "code": str(coding.get("code")),
                        }
                    )
        for rule in card["extension"][EXPLANATION_KEY]["rules"]:
            if rule["rule"] not in rules:
                rules.append(str(rule["rule"]))
    return {
        "patient": patient,
        "topics": topics,
        "indicators": indicators,
        "summaries": summaries,
        "tests": tests,
        "rules": rules,
        "packVersion": pack_version,
    }


@dataclass
class Summary:
    """What a run saw: patients, cards per topic, errors, and lines by what happened to them."""

    patients: int = 0
    with_cards: int = 0
    errors: int = 0
    patient_errors: int = 0  # error rows that stand for a whole patient (counted among `patients`)
    topics: Counter[str] = field(default_factory=Counter)
    lines: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add_rows(self, rows: Sequence[Mapping[str, Any]], patients: int) -> None:
        self.patients += patients
        for row in rows:
            if "error" in row:
                self.errors += 1
                self.patient_errors += 1
            else:
                self.with_cards += 1
                self.topics.update(row["topics"])

    def add_line_errors(self, count: int) -> None:
        self.errors += count

    def as_json(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "withCards": self.with_cards,
            "withoutCards": self.patients - self.with_cards - self.patient_errors,
            "errors": self.errors,
            "topics": dict(sorted(self.topics.items())),
            "lines": self.lines,
            "linesKept": self.kept,
            "linesSkipped": dict(sorted(self.skipped.items())),
        }

    def text(self) -> str:
        data = self.as_json()
        lines = [
            f"patients read: {data['patients']}; with cards: {data['withCards']}; "
            f"without cards: {data['withoutCards']}; errors: {data['errors']}",
        ]
        lines += [f"  {topic}: {count}" for topic, count in data["topics"].items()]
        lines.append(f"lines read: {data['lines']}; kept for the rules: {data['linesKept']}")
        lines += [f"  skipped {reason}: {count}" for reason, count in data["linesSkipped"].items()]
        return "\n".join(lines)


class Writer:
    """Base: `write(row)` per row, then `close()`."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, row: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.handle.close()


class NdjsonWriter(Writer):
    def write(self, row: Mapping[str, Any]) -> None:
        self.handle.write(orjson.dumps(row) + b"\n")


class CsvWriter(Writer):
    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__(handle)
        self.text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        self.csv = csv.writer(self.text)
        self.csv.writerow(CSV_COLUMNS)

    def write(self, row: Mapping[str, Any]) -> None:
        if "error" in row:
            problem = row["error"]
            values = [row.get("patient") or "", "error", "", "", "", "", "", ""]
            values += [problem.get(k) or "" for k in ("where", "resource", "field", "message")]
        else:
            values = [
                row["patient"],
                "cards",
                "; ".join(row["topics"]),
                "; ".join(f"{t}={i}" for t, i in row["indicators"].items()),
                "; ".join(t["label"] for t in row["tests"]),
                "; ".join(f"{t['system']}|{t['code']}" for t in row["tests"]),
                "; ".join(row["rules"]),
                row["packVersion"],
                "",
                "",
                "",
                "",
            ]
        self.csv.writerow(values)

    def close(self) -> None:
        self.text.close()


class BundleWriter(Writer):
    """A FHIR R4 transaction Bundle: per suggested test a draft ServiceRequest, per card a draft Task.

    The Task asks someone to review the patient's card (its summary is the description) and points
    at the card's ServiceRequests through `basedOn`. fullUrls are uuid5 of patient, topic and code,
    so the same worklist gives the same Bundle. Error rows are not part of the Bundle.
    """

    def __init__(self, handle: IO[bytes], *, topic_system: str) -> None:
        super().__init__(handle)
        self.topic_system = topic_system
        self.first = True
        handle.write(b'{"resourceType":"Bundle","type":"transaction","entry":[')

    def _entry(self, full_url: str, resource: Mapping[str, Any]) -> None:
        entry = {
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]},
        }
        self.handle.write((b"" if self.first else b",\n") + orjson.dumps(entry))
        self.first = False

    def write(self, row: Mapping[str, Any]) -> None:
        if "error" in row:
            return
        patient = {"reference": f"Patient/{row['patient']}"}
        for topic in row["topics"]:
            requests = []
            for test in (t for t in row["tests"] if t["topic"] == topic):
                url = _urn(row["patient"], topic, test["system"], test["code"])
                requests.append({"reference": url})
                self._entry(
                    url,
                    {
                        "resourceType": "ServiceRequest",
                        "status": "draft",
                        "intent": "proposal",
                        "code": {
                            "coding": [{"system": test["system"], "code": test["code"]}],
                            "text": test["label"],
                        },
                        "subject": patient,
                        "reasonCode": [{"coding": [{"system": self.topic_system, "code": topic}]}],
                        "note": [
                            {"text": f"Suggested by cramp-cds screening, rule pack {row['packVersion']}"}
                        ],
                    },
                )
            task: dict[str, Any] = {
                "resourceType": "Task",
                "status": "draft",
                "intent": "proposal",
                "priority": "urgent" if row["indicators"][topic] == "critical" else "routine",
                "code": {"text": "Review a cramp-cds screening finding"},
                "description": row["summaries"][topic],
                "for": patient,
                "reasonCode": {"coding": [{"system": self.topic_system, "code": topic}]},
            }
            if requests:
                task["basedOn"] = requests
            self._entry(_urn(row["patient"], topic, "task"), task)

    def close(self) -> None:
        self.handle.write(b"]}\n")
        self.handle.close()


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '|'.join(parts))}"


def check_output(path: Path) -> None:
    """ValueError unless the name says .csv, .ndjson/.jsonl or .json."""
    if path.suffix.lower() not in {".csv", ".ndjson", ".jsonl", ".json"}:
        raise ValueError(f"{path}: the worklist is written as .csv, .ndjson or .json (a FHIR Bundle)")


def open_writer(path: Path, *, topic_system: str) -> Writer:
    """By suffix: .csv, .ndjson/.jsonl, .json (a FHIR Bundle)."""
    check_output(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CsvWriter(path.open("wb"))
    if suffix in {".ndjson", ".jsonl"}:
        return NdjsonWriter(path.open("wb"))
    if suffix == ".json":
        return BundleWriter(path.open("wb"), topic_system=topic_system)
    raise ValueError(f"{path}: the worklist is written as .csv, .ndjson or .json (a FHIR Bundle)")
