"""The normalised record of one patient: what each reader below produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class LabResult:
    analyte: str
    band: str  # low | normal | high | indeterminate | positive | negative | unreadable
    grade: str | None
    value: float | None
    unit: str | None
    display: str
    when: datetime
    ref: str
    basis: str  # interpretation | reference-range | default | coded | none
    critical: bool = False  # flagged LL/HH/AA/</> or beyond a critical cut-off of the pack
    why: str | None = None  # for an unreadable result: why it could not be used
    reported: str | None = None  # for an unreadable result: its value and unit as sent, if any
    # The newest result in the window could not be read; this is the newest usable one before it.
    earlier: bool = False
    newer_unreadable: LabResult | None = None

    @property
    def usable(self) -> bool:
        return self.band != "unreadable"

    @property
    def unread_note(self) -> str:
        """An unreadable result in a few words: `12 mcg/L of 2026-05-20 could not be read (unit not known)`."""
        what = f"{self.reported} " if self.reported else ""
        return f"{what}of {self.when.date().isoformat()} could not be read ({self.why})"


@dataclass(frozen=True)
class Hit:
    """A resource that falls in a value set."""

    group: str
    ref: str
    display: str
    onset_months: int | None = None
    when: datetime | None = None  # onset, else when recorded: what newer evidence is compared with


@dataclass(frozen=True)
class Answer:
    link_id: str
    value: bool | int
    ref: str
    when: datetime | None = None  # QuestionnaireResponse.authored


@dataclass
class PatientRecord:
    patient_key: str | None
    age: int | None  # the certain (youngest possible) age; see age_max
    age_max: int | None = None  # the oldest possible age: above `age` only for a partial birthDate
    labs: dict[str, LabResult] = field(default_factory=dict)
    conditions: list[Hit] = field(default_factory=list)
    medications: list[Hit] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
