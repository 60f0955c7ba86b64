"""Synthetic population: a FHIR Bulk Data export (NDJSON per type and a manifest) for tests and benchmarks.

Each patient is built from a template record (a public Synthea Bundle when a folder of them is given,
else one of the project's own fixtures): new ids and references, dates shifted, numeric results
perturbed. On top of that background come the results, conditions, medications and questionnaire
answers the rule pack reads, drawn with missing rates so that every topic occurs in a population of a
few hundred. Lines are shuffled within each type. Everything is drawn from one seeded generator: the
same seed, size and templates give the same bytes.

    >>> write_export(Path("out"), patients=3, seed=1, pack=pack)   # doctest: +SKIP
    ExportSummary(patients=3, lines={'Patient': 3, 'Observation': ...})
"""

from __future__ import annotations

import gzip
import math
import random
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from cds.rulepack import RulePack

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V2_0136 = "http://terminology.hl7.org/CodeSystem/v2-0136"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
UNREADABLE_RATE = 0.015  # results without a value or in a unit no lab uses for the analyte
PATIENTS_PER_SPILL = 1000  # lines of about this many patients are shuffled in memory at once
DEFAULT_BACKGROUND = 60  # background resources kept per patient from its template (-1: all)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Lab:
    """How one analyte is drawn: how often it is on file, its codes/units, and its value distribution."""

    analyte: str
    present: float  # share of patients with a result
    forms: tuple[tuple[str, str, float, float], ...]  # (LOINC code, UCUM unit, factor from canonical, weight)
    draw: Callable[[random.Random], float]  # a value in the canonical unit
    low: float | None = None  # reference range in the canonical unit, sent with some results
    high: float | None = None
    decimals: int = 1


# Values are shaped like an adult outpatient population (means and spreads chosen for variety, not
# taken from a survey): about a third below 20 ng/mL of 25-OH vitamin D, a tenth with low magnesium.
LABS: tuple[Lab, ...] = (
    Lab(
        "vitamin-d-25oh",
        0.45,
        (("62292-8", "ng/mL", 1.0, 0.6), ("1989-3", "ng/mL", 1.0, 0.15), ("14635-7", "nmol/L", 2.496, 0.25)),
        lambda r: r.uniform(101, 160) if r.random() < 0.01 else r.lognormvariate(math.log(24), 0.45),
        30,
        100,
    ),
    Lab(
        "magnesium",
        0.4,
        (("19123-9", "mg/dL", 2.4307, 0.7), ("2601-3", "mmol/L", 1.0, 0.3)),
        lambda r: r.gauss(0.84, 0.1),
        0.7,
        1.05,
        2,
    ),
    Lab("calcium-total", 0.6, (("17861-6", "mg/dL", 1.0, 0.7), ("49765-1", "mg/dL", 1.0, 0.3)),
        lambda r: r.uniform(10.6, 12.4) if r.random() < 0.05 else r.gauss(9.4, 0.45), 8.5, 10.5),
    Lab("potassium", 0.65, (("2823-3", "mmol/L", 1.0, 0.7), ("6298-4", "mmol/L", 1.0, 0.3)),
        lambda r: r.gauss(4.2, 0.4), 3.5, 5.1),
    Lab("sodium", 0.65, (("2951-2", "mmol/L", 1.0, 0.7), ("2947-0", "mmol/L", 1.0, 0.3)),
        lambda r: r.gauss(139, 3), 135, 145, 0),
    Lab("tsh", 0.5, (("3016-3", "m[IU]/L", 1.0, 1.0),), lambda r: r.lognormvariate(math.log(2.0), 0.6),
        0.4, 4.5, 2),
    Lab("free-t4", 0.2, (("3024-7", "ng/dL", 1.0, 1.0),), lambda r: r.gauss(1.2, 0.25), 0.8, 1.8, 2),
    Lab("egfr", 0.55, (("33914-3", "mL/min/{1.73_m2}", 1.0, 0.5), ("62238-1", "mL/min/{1.73_m2}", 1.0, 0.5)),
        lambda r: min(130, max(8, r.gauss(84, 22))), None, None, 0),
    Lab("bmi", 0.8, (("39156-5", "kg/m2", 1.0, 1.0),), lambda r: max(15, r.gauss(28, 5.5)), None, None),
)  # fmt: skip

# Share of patients with an active entry of each value set (others: DEFAULT_CONDITION_RATE).
CONDITION_RATES = {
    "cramp": 0.12,
    "hypothyroidism": 0.07,
    "peripheral-neuropathy": 0.04,
    "ckd": 0.06,
    "obesity": 0.12,
    "varicose-veins": 0.08,
    "lumbar-disc": 0.04,
}
DEFAULT_CONDITION_RATE = 0.025
MEDICATION_RATES = {"calcium-supplement": 0.75, "ppi": 0.15, "thiazide-diuretic": 0.1, "loop-diuretic": 0.05}
DEFAULT_MEDICATION_RATE = 0.03
# Chance of a "yes" per boolean question; cramp frequency is drawn separately. Red-flag questions are
# rare, and so is any question added to the pack later (DEFAULT_YES_RATE), until it is listed here.
YES_RATES = {
    "cramp-nocturnal": 0.5,
    "cramp-symmetrical": 0.4,
    "persisting-after-lifestyle-changes": 0.2,
    "taking-calcium": 0.8,
    "calcium-with-meals": 0.5,
    "acid-suppressant": 0.2,
    "chronic-diarrhea": 0.05,
    "lactose-intolerance": 0.1,
    "low-sun-exposure": 0.3,
    "magnesium-rich-diet": 0.5,
    "prolonged-sitting-standing": 0.35,
    "leg-swelling-or-varicose-veins": 0.15,
    "back-pain-radiating": 0.1,
    "numbness-tingling": 0.08,
    "claudication": 0.04,
    "calf-swelling-one-side": 0.01,
    "weakness-wasting-fasciculations": 0.01,
    "perioral-tingling-tetany": 0.01,
    "pregnant": 0.0,
}
DEFAULT_YES_RATE = 0.02
GIVEN = (
    "Alder",
    "Brin",
    "Calla",
    "Dace",
    "Esker",
    "Fenn",
    "Garnet",
    "Hollis",
    "Ines",
    "Jory",
    "Kestrel",
    "Linden",
)
FAMILY = ("Ashgrove", "Brookmere", "Coldwell", "Dunmore", "Eastholm", "Fairlow", "Greystone", "Hartwell")


@dataclass(frozen=True)
class Template:
    """One whole record to copy the background of: its resources and the latest date in them."""

    name: str
    patient: Mapping[str, Any]
    patient_url: str
    entries: tuple[tuple[str, Mapping[str, Any]], ...]  # (fullUrl, resource) of everything but the Patient
    latest: date


@dataclass
class ExportSummary:
    patients: int
    source: str
    lines: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def load_templates(folder: Path) -> list[Template]:
    """Every Bundle in `folder` that holds exactly one Patient, in file-name order."""
    templates = []
    for path in sorted(folder.glob("*.json")):
        try:
            bundle = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue
        entries = [
            e for e in bundle.get("entry", []) if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        patients = [e for e in entries if e["resource"].get("resourceType") == "Patient"]
        if len(patients) != 1:
            continue
        rest = tuple(
            (str(e.get("fullUrl") or ""), e["resource"])
            for e in entries
            if e["resource"].get("resourceType") != "Patient"
        )
        templates.append(
            Template(
                name=path.name,
                patient=patients[0]["resource"],
                patient_url=str(patients[0].get("fullUrl") or ""),
                entries=rest,
                latest=_latest_date([r for _, r in rest]) or date(2020, 1, 1),
            )
        )
    return templates


def _latest_date(resources: Sequence[Any]) -> date | None:
    latest: date | None = None
    stack: list[Any] = list(resources)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and len(node) >= 10 and (_DATE.match(node) or _DATETIME.match(node)):
            try:
                day = date.fromisoformat(node[:10])
            except ValueError:
                continue
            if day.year < 2100 and (latest is None or day > latest):
                latest = day
    return latest


class Generator:
    """Draws patients; one instance per export, every draw from `rng`."""

    def __init__(
        self,
        pack: RulePack,
        templates: Sequence[Template],
        *,
        rng: random.Random,
        as_of: date,
        background: int = DEFAULT_BACKGROUND,
    ) -> None:
        if not templates:
            raise ValueError("no template records to build patients from")
        self.pack = pack
        self.templates = templates
        self.rng = rng
        self.as_of = as_of
        self.background = background
        self.question_groups = _question_groups(pack)
        self.medication_catalog: dict[str, dict[str, Any]] = {}

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def patient(self) -> list[dict[str, Any]]:
        """Every resource of one new patient: the Patient first."""
        rng = self.rng
        template = self.templates[rng.randrange(len(self.templates))]
        pid = self.uuid()
        female = rng.random() < 0.56
        age = int(min(95, max(18, rng.triangular(18, 95, 52))))
        born = self.as_of - timedelta(days=age * 365 + rng.randrange(365))
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": pid,
            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
            "identifier": [
                {
                    "system": "https://cramp-cds.example.org/synthetic-mrn",
                    "value": f"S{rng.getrandbits(40):012d}",
                }
            ],
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
            "gender": "female" if female else "male",
            "birthDate": born.isoformat(),
        }
        out = [patient]
        out.extend(self._background(template, pid))
        subject = {"reference": f"Patient/{pid}"}
        pregnant = female and age <= 44 and rng.random() < 0.08
        out.extend(self._labs(subject, female=female, age=age, pregnant=pregnant))
        out.extend(self._conditions(subject, pregnant=pregnant))
        out.extend(self._medications(subject))
        if rng.random() < 0.65:
            out.append(self._answers(subject, pregnant=pregnant))
        return out

    # --- background from the template ---------------------------------------------------------------

    def _background(self, template: Template, pid: str) -> list[dict[str, Any]]:
        rng = self.rng
        entries = list(template.entries)
        if 0 <= self.background < len(entries):
            keep = sorted(rng.sample(range(len(entries)), self.background))
            entries = [entries[i] for i in keep]
        ids: dict[str, str] = {}
        if template.patient_url:
            ids[template.patient_url] = f"Patient/{pid}"
        if isinstance(template.patient.get("id"), str):
            ids[f"Patient/{template.patient['id']}"] = f"Patient/{pid}"
        for full_url, resource in template.entries:
            new = f"{resource['resourceType']}/{self.uuid()}"
            if full_url:
                ids[full_url] = new
            if isinstance(resource.get("id"), str):
                ids[f"{resource['resourceType']}/{resource['id']}"] = new
        shift = (self.as_of - template.latest) - timedelta(days=rng.randrange(20, 400))
        out = []
        for full_url, resource in entries:
            copy = _rewrite(resource, ids, shift)
            key = ids.get(full_url) or ids.get(f"{resource['resourceType']}/{resource.get('id')}")
            copy["id"] = key.split("/", 1)[1] if key else self.uuid()
            if copy["resourceType"] == "Observation":
                _perturb(copy, rng)
            out.append(copy)
        return out

    # --- what the rules read --------------------------------------------------------------------------

    def _when(self, *, months: int = 18) -> str:
        """A moment within the last `months` (about a tenth of results fall outside a 12-month window)."""
        days = self.rng.randrange(1, months * 30)
        moment = datetime.combine(self.as_of, datetime.min.time(), tzinfo=UTC) - timedelta(
            days=days, minutes=self.rng.randrange(8 * 60, 18 * 60)
        )
        return moment.isoformat().replace("+00:00", "Z")

    def _labs(
        self, subject: dict[str, Any], *, female: bool, age: int, pregnant: bool
    ) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for lab in LABS:
            if lab.analyte not in self.pack.analytes or rng.random() >= lab.present:
                continue
            code, unit, factor, _ = _weighted(rng, lab.forms)
            value = lab.draw(rng)
            if lab.analyte == "egfr" and age > 65:
                value = max(8.0, value - rng.uniform(0, 30))
            shown = round(value * factor, lab.decimals + (1 if factor != 1.0 else 0))
            observation = _observation(self.uuid(), code, subject, self._when(), rng)
            observation["valueQuantity"] = {"value": shown, "unit": unit, "system": UCUM, "code": unit}
            if rng.random() < UNREADABLE_RATE:  # a result the rules cannot read: no value, or a stray unit
                if rng.random() < 0.5:
                    del observation["valueQuantity"]
                    observation["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "error"}]}
                else:
                    observation["valueQuantity"] = {"value": shown, "unit": "mg"}
                out.append(observation)
                continue
            if lab.low is not None and lab.high is not None and rng.random() < 0.5:
                observation["referenceRange"] = [
                    {
                        "low": {
                            "value": round(lab.low * factor, 2),
                            "unit": unit,
                            "system": UCUM,
                            "code": unit,
                        },
                        "high": {
                            "value": round(lab.high * factor, 2),
                            "unit": unit,
                            "system": UCUM,
                            "code": unit,
                        },
                    }
                ]
            if lab.low is not None and rng.random() < 0.3:
                flag = "L" if value < lab.low else ("H" if lab.high is not None and value > lab.high else "N")
                observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
            out.append(observation)
        if (
            female
            and age <= 50
            and "pregnancy-status" in self.pack.analytes
            and (pregnant or rng.random() < 0.1)
        ):
            observation = _observation(self.uuid(), "82810-3", subject, self._when(months=9), rng)
            code, display = ("77386006", "Pregnant") if pregnant else ("60001007", "Not pregnant")
            observation["valueCodeableConcept"] = {
                "coding": [{"system": SNOMED, "code": code, "display": display}]
            }
            out.append(observation)
        return out

    def _conditions(self, subject: dict[str, Any], *, pregnant: bool) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for name, valueset in self.pack.valuesets.conditions.items():
            rate = CONDITION_RATES.get(name, DEFAULT_CONDITION_RATE)
            if name == "pregnancy":
                rate = 0.7 if pregnant else 0.0
            if rng.random() >= rate:
                continue
            choices = [(c.system, c.code, c.display) for c in valueset.codes] + [
                (p.system, p.prefix if "." in p.prefix else f"{p.prefix}.{rng.randrange(10)}", p.display)
                for p in valueset.prefixes
            ]
            system, code, display = choices[rng.randrange(len(choices))]
            active = rng.random() < 0.85
            onset = self.as_of - timedelta(
                days=rng.randrange(60, 3650) if name != "pregnancy" else rng.randrange(20, 200)
            )
            out.append(
                {
                    "resourceType": "Condition",
                    "id": self.uuid(),
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active" if active else "resolved",
                            }
                        ]
                    },
                    "verificationStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                "code": "confirmed",
                            }
                        ]
                    },
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                    "code": "problem-list-item",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": system, "code": code, "display": display}],
                        "text": display,
                    },
                    "subject": subject,
                    "onsetDateTime": onset.isoformat(),
                    "recordedDate": onset.isoformat(),
                }
            )
        return out

    def _medications(self, subject: dict[str, Any]) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for name, valueset in self.pack.valuesets.medications.items():
            if not valueset.codes or rng.random() >= MEDICATION_RATES.get(name, DEFAULT_MEDICATION_RATE):
                continue
            coded = valueset.codes[rng.randrange(len(valueset.codes))]
            concept = {
                "coding": [{"system": coded.system, "code": coded.code, "display": coded.display}],
                "text": coded.display,
            }
            status = "active" if rng.random() < 0.85 else rng.choice(["stopped", "completed"])
            resource: dict[str, Any]
            if rng.random() < 0.5:
                resource = {
                    "resourceType": "MedicationRequest",
                    "id": self.uuid(),
                    "status": status,
                    "intent": "order",
                    "subject": subject,
                    "authoredOn": self._when(months=24),
                }
            else:
                resource = {
                    "resourceType": "MedicationStatement",
                    "id": self.uuid(),
                    "status": status,
                    "subject": subject,
                    "effectiveDateTime": self._when(months=24),
                }
            if rng.random() < 0.2:
                # A product listed once in Medication.ndjson and referred to, as many EHR exports do.
                key = f"{coded.system}|{coded.code}"
                medication = self.medication_catalog.setdefault(
                    key,
                    {
                        "resourceType": "Medication",
                        "id": f"med-{len(self.medication_catalog) + 1}",
                        "code": concept,
                    },
                )
                resource["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
            else:
                resource["medicationCodeableConcept"] = concept
            out.append(resource)
        return out

    def _answers(self, subject: dict[str, Any], *, pregnant: bool) -> dict[str, Any]:
        rng = self.rng
        coded = rng.random() < 0.1
        groups = []
        for group, questions in self.question_groups:
            items = []
            for link_id, kind in questions:
                if rng.random() < 0.08:
                    continue  # left unanswered
                if kind == "integer":
                    answer: dict[str, Any] = {
                        "valueInteger": _weighted_int(rng, (0, 1, 2, 3, 4, 5, 7), (4, 3, 3, 2, 2, 1, 1))
                    }
                else:
                    yes = (
                        pregnant
                        if link_id == "pregnant"
                        else rng.random() < YES_RATES.get(link_id, DEFAULT_YES_RATE)
                    )
                    if coded:
                        answer = {"valueCoding": {"system": V2_0136, "code": "Y" if yes else "N"}}
                    else:
                        answer = {"valueBoolean": yes}
                items.append({"linkId": link_id, "answer": [answer]})
            if items:
                groups.append({"linkId": group, "item": items} if group else items[0])
        return {
            "resourceType": "QuestionnaireResponse",
            "id": self.uuid(),
            "questionnaire": f"{self.pack.questionnaire_url}|1.0.0",
            "status": "completed",
            "subject": subject,
            "authored": self._when(months=8),
            "item": groups,
        }


def _question_groups(pack: RulePack) -> list[tuple[str, list[tuple[str, str]]]]:
    """(group linkId, [(question linkId, type)]) from the pack's questionnaire; "" for top-level questions."""
    groups: dict[str, list[tuple[str, str]]] = {}

    def walk(items: Sequence[Mapping[str, Any]], group: str) -> None:
        for item in items:
            link_id = str(item.get("linkId"))
            if item.get("type") == "group":
                walk(item.get("item", ()), link_id)
            elif item.get("type") in {"integer", "boolean"}:
                groups.setdefault(group, []).append((link_id, str(item["type"])))

    walk(pack.questionnaire.get("item", ()), "")
    return list(groups.items())


def _rewrite(node: Any, ids: Mapping[str, str], shift: timedelta) -> Any:
    """A copy with references renamed and every date or dateTime moved by `shift`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = ids.get(value, value)
            else:
                out[key] = _rewrite(value, ids, shift)
        return out
    if isinstance(node, list):
        return [_rewrite(item, ids, shift) for item in node]
    if isinstance(node, str) and len(node) >= 10 and node[4] == "-":
        return _shift(node, shift)
    return node


def _shift(text: str, shift: timedelta) -> str:
    if _DATE.match(text):
        try:
            return (date.fromisoformat(text) + shift).isoformat()
        except ValueError:
            return text
    if _DATETIME.match(text):
        try:
            moved = datetime.fromisoformat(text.replace("Z", "+00:00")) + shift
        except ValueError:
            return text
        shown = moved.isoformat()
        return shown.replace("+00:00", "Z") if text.endswith("Z") else shown
    return text


def _perturb(observation: dict[str, Any], rng: random.Random) -> None:
    quantity = observation.get("valueQuantity")
    if (
        isinstance(quantity, dict)
        and isinstance(quantity.get("value"), int | float)
        and not isinstance(quantity.get("value"), bool)
    ):
        quantity["value"] = round(quantity["value"] * rng.uniform(0.9, 1.1), 2)


def _observation(
    rid: str, code: str, subject: dict[str, Any], when: str, rng: random.Random
) -> dict[str, Any]:
    status = "final" if rng.random() < 0.95 else rng.choice(["preliminary", "amended"])
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": subject,
        "effectiveDateTime": when,
        "issued": when,
    }


def _weighted(
    rng: random.Random, forms: Sequence[tuple[str, str, float, float]]
) -> tuple[str, str, float, float]:
    pick = rng.random() * sum(f[3] for f in forms)
    for form in forms:
        pick -= form[3]
        if pick < 0:
            return form
    return forms[-1]


def _weighted_int(rng: random.Random, values: Sequence[int], weights: Sequence[int]) -> int:
    return rng.choices(values, weights=weights)[0]


class _Spill:
    """Lines of one type spread over a few temporary files, each shuffled in memory when written out."""

    def __init__(self, folder: Path, kind: str, chunks: int) -> None:
        self.paths = [folder / f"{kind}.{i}.tmp" for i in range(chunks)]
        self.files: list[IO[bytes]] = [p.open("wb") for p in self.paths]
        self.count = 0

    def add(self, line: bytes, rng: random.Random) -> None:
        self.files[rng.randrange(len(self.files))].write(line)
        self.count += 1

    def close(self) -> None:
        for handle in self.files:
            handle.close()


def write_export(
    out_dir: Path,
    *,
    patients: int,
    seed: int,
    pack: RulePack,
    templates: Sequence[Template],
    source: str,
    as_of: date = date(2026, 6, 1),
    background: int = DEFAULT_BACKGROUND,
    files_per_type: int = 1,
    compress: bool = False,
) -> ExportSummary:
    """Write `patients` patients as `Type.ndjson` files (or `n.Type.ndjson`, gzipped if asked) and manifest.json."""
    rng = random.Random(seed)  # noqa: S311 -- synthetic test data, reproducible by design
    drawn = random.Random(rng.getrandbits(64))  # noqa: S311
    generator = Generator(pack, templates, rng=drawn, as_of=as_of, background=background)
    shuffle = random.Random(rng.getrandbits(64))  # noqa: S311
    out_dir.mkdir(parents=True, exist_ok=True)
    spill_dir = out_dir / ".synth-spill"
    shutil.rmtree(spill_dir, ignore_errors=True)
    spill_dir.mkdir()
    chunks = max(files_per_type, math.ceil(patients / PATIENTS_PER_SPILL))
    spills: dict[str, _Spill] = {}
    for _ in range(patients):
        for resource in generator.patient():
            kind = resource["resourceType"]
            spill = spills.get(kind)
            if spill is None:
                spill = spills[kind] = _Spill(spill_dir, kind, chunks)
            spill.add(orjson.dumps(resource) + b"\n", shuffle)
    if generator.medication_catalog:
        spill = spills["Medication"] = _Spill(spill_dir, "Medication", chunks)
        for medication in generator.medication_catalog.values():
            spill.add(orjson.dumps(medication) + b"\n", shuffle)
    summary = ExportSummary(patients=patients, source=source)
    output = []
    for kind in sorted(spills):
        spill = spills[kind]
        spill.close()
        count = min(files_per_type, len(spill.paths)) if files_per_type > 1 else 1
        suffix = ".ndjson.gz" if compress else ".ndjson"
        names = [f"{kind}{suffix}"] if count == 1 else [f"{n}.{kind}{suffix}" for n in range(1, count + 1)]
        handles: list[Any] = [
            gzip.GzipFile(out_dir / n, "wb", mtime=0) if compress else (out_dir / n).open("wb") for n in names
        ]
        counts = [0] * len(names)
        for index, path in enumerate(spill.paths):
            lines = path.read_bytes().splitlines(keepends=True)
            shuffle.shuffle(lines)
            handles[index % len(handles)].writelines(lines)
            counts[index % len(handles)] += len(lines)
            path.unlink()
        for handle in handles:
            handle.close()
        for name, lines_written in zip(names, counts, strict=True):
            output.append({"type": kind, "url": name, "count": lines_written})
        summary.lines[kind] = spill.count
        summary.files.extend(names)
    shutil.rmtree(spill_dir, ignore_errors=True)
    manifest = {
        "transactionTime": datetime.combine(as_of, datetime.min.time(), tzinfo=UTC).isoformat(),
        "request": f"cds synth --patients {patients} --seed {seed}",
        "requiresAccessToken": False,
        "output": output,
        "error": [],
        "extension": {
            "https://cramp-cds.example.org/synth": {"source": source, "seed": seed, "patients": patients}
        },
    }
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return summary
