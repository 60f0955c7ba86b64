"""Deterministic synthetic patients of a chosen size, shaped like a Synthea record, for benchmarks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LOINC = "http://loinc.org"
READ_LABS = [  # (code, unit, low, high): analytes the rules read
    ("62292-8", "ng/mL", 8, 60),
    ("19123-9", "mg/dL", 1.2, 2.6),
    ("3016-3", "m[IU]/L", 0.3, 9),
    ("2823-3", "mmol/L", 3.0, 5.2),
    ("2951-2", "mmol/L", 130, 146),
    ("49765-1", "mg/dL", 8.0, 10.4),
    ("33914-3", "mL/min/{1.73_m2}", 40, 110),
    ("39156-5", "kg/m2", 19, 36),
]
OTHER_LABS = [
    ("8867-4", "/min"),
    ("8480-6", "mm[Hg]"),
    ("29463-7", "kg"),
    ("2093-3", "mg/dL"),
    ("718-7", "g/dL"),
]
CONDITIONS = [
    ("http://snomed.info/sct", "55300003", "Cramp"),
    ("http://snomed.info/sct", "72866009", "Varicose veins of lower limb"),
    ("http://snomed.info/sct", "44054006", "Diabetes mellitus type 2"),
    ("http://snomed.info/sct", "59621000", "Essential hypertension"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "E03.9", "Hypothyroidism, unspecified"),
]
MEDICATIONS = [
    ("7646", "omeprazole 20 MG Delayed Release Oral Capsule"),
    ("316049", "Hydrochlorothiazide 25 MG Oral Tablet"),
    ("1897", "calcium carbonate 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
]


def make_patient(size: int, seed: int = 7, now: datetime = NOW) -> dict[str, Any]:
    """A collection Bundle of exactly `size` resources about one patient (size >= 4), dated before `now`."""
    rng = random.Random(seed * 1_000_003 + size)
    entries: list[dict[str, Any]] = []

    def add(resource: dict[str, Any]) -> None:
        resource["id"] = f"{resource['resourceType'].lower()}-{len(entries)}"
        entries.append({"fullUrl": f"urn:uuid:{rng.getrandbits(128):032x}", "resource": resource})

    add(
        {
            "resourceType": "Patient",
            "gender": "female",
            "birthDate": "1968-04-12",
            "name": [{"family": "Benchmark", "given": ["Pat"]}],
        }
    )
    patient_ref = {"reference": entries[0]["fullUrl"]}
    add(_answers(patient_ref, rng, now))
    for index in range(size - 2):
        roll = index % 20
        days = rng.randint(1, 900)
        when = (now - timedelta(days=days)).isoformat()
        if roll < 4:
            code, unit, low, high = READ_LABS[rng.randrange(len(READ_LABS))]
            add(_observation(code, unit, round(rng.uniform(low, high), 2), when, patient_ref))
        elif roll < 10:
            code, unit = OTHER_LABS[rng.randrange(len(OTHER_LABS))]
            add(_observation(code, unit, round(rng.uniform(1, 150), 1), when, patient_ref))
        elif roll < 12:
            system, code, display = CONDITIONS[rng.randrange(len(CONDITIONS))]
            add(
                {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
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
                    "code": {
                        "coding": [{"system": system, "code": code, "display": display}],
                        "text": display,
                    },
                    "subject": patient_ref,
                    "onsetDateTime": when,
                }
            )
        elif roll < 13:
            code, display = MEDICATIONS[rng.randrange(len(MEDICATIONS))]
            add(
                {
                    "resourceType": "MedicationRequest",
                    "status": rng.choice(["active", "stopped"]),
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": code,
                                "display": display,
                            }
                        ],
                        "text": display,
                    },
                    "subject": patient_ref,
                    "authoredOn": when,
                }
            )
        elif roll < 17:
            add(
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "type": [
                        {
                            "coding": [
                                {
                                    "system": "http://snomed.info/sct",
                                    "code": "185349003",
                                    "display": "Encounter for check up",
                                }
                            ]
                        }
                    ],
                    "subject": patient_ref,
                    "period": {"start": when, "end": when},
                }
            )
        else:
            add(
                {
                    "resourceType": "Procedure",
                    "status": "completed",
                    "code": {
                        "coding": [
                            {
                                "system": "http://snomed.info/sct",
                                "code": "430193006",
                                "display": "Medication reconciliation",
                            }
                        ]
                    },
                    "subject": patient_ref,
                    "performedDateTime": when,
                }
            )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _observation(code: str, unit: str, value: float, when: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
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
        "code": {"coding": [{"system": LOINC, "code": code}], "text": code},
        "subject": subject,
        "effectiveDateTime": when,
        "issued": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def _answers(subject: dict[str, Any], rng: random.Random, now: datetime) -> dict[str, Any]:
    yes_no = [
        "cramp-nocturnal",
        "cramp-symmetrical",
        "low-sun-exposure",
        "magnesium-rich-diet",
        "prolonged-sitting-standing",
    ]
    items = [{"linkId": "cramp-frequency", "answer": [{"valueInteger": rng.randint(1, 5)}]}]
    items += [{"linkId": link, "answer": [{"valueBoolean": rng.random() < 0.5}]} for link in yes_no]
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "https://cramp-cds.example.org/fhir/Questionnaire/cramp-assessment",
        "subject": subject,
        "authored": (now - timedelta(days=3)).isoformat(),
        "item": [{"linkId": "cramps", "item": items}],
    }


def as_hook_request(
    bundle: dict[str, Any], hook_instance: str = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
) -> dict[str, Any]:
    """The same patient as a patient-view request with every prefetch key filled."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    patient = bundle["entry"][0]["resource"]
    for entry in bundle["entry"][1:]:
        resource = dict(entry["resource"])
        if "subject" in resource:
            resource["subject"] = {"reference": f"Patient/{patient['id']}"}
        by_type.setdefault(resource["resourceType"], []).append(resource)

    def searchset(kind: str) -> dict[str, Any]:
        found = by_type.get(kind, [])
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"https://ehr.example.org/fhir/{kind}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in found
            ],
        }

    return {
        "hook": "patient-view",
        "hookInstance": hook_instance,
        "context": {"userId": "Practitioner/example", "patientId": patient["id"]},
        "prefetch": {
            "patient": patient,
            "observations": searchset("Observation"),
            "conditions": searchset("Condition"),
            "medicationRequests": searchset("MedicationRequest"),
            "medicationStatements": searchset("MedicationStatement"),
            "questionnaireResponses": searchset("QuestionnaireResponse"),
        },
    }
