"""Rule cases: turn a case's compact `given` into a real FHIR Bundle, run it, and check the rule's verdict.

`given` keys (all optional):
    age: 52 | null                       Patient.birthDate set so the age at `now` is this (null: no birthDate)
    birth_date: "1981" | "1981-07"       Patient.birthDate exactly as given (partial dates), instead of age
    answers: {linkId: true|false|int}    one completed QuestionnaireResponse, nested in a group
    labs: {analyte: value | {value, unit, months_ago, days_ago, interpretation, range: [low, high],
           comparator, coded: positive|negative, coded_as: {system, code}} | [several of these]}
                                         one final Observation each (default: 1 month ago); `value: null`
                                         sends no value, `coded_as` a code the pack does not know
    conditions: [group | {group, months_ago, status, verification, code, recorded_days_ago}]
    responses: [{answers: {...}, days_ago | months_ago, questionnaire: url | null}]
                                         further QuestionnaireResponses (default: to ours, 1 day ago);
                                         `questionnaire: null` names none
    medications: [group | {group, as: statement, status, intent, do_not_perform, text_only, code, text}]
                                         `code`: that code of the group's system, sent with no display;
                                         `text`: only this text, no coding
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from cds.evaluation import Evaluator
from cds.fhirvalues import end_of_day, subtract_months
from cds.rulepack import CaseSpec, RulePack, RuleSpec

PATIENT_URL = "urn:uuid:00000000-0000-4000-8000-000000000001"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True)
class CaseResult:
    rule: str
    case: str
    passed: bool
    message: str

    @property
    def name(self) -> str:
        return f"{self.rule}::{self.case}"


def case_now(pack: RulePack, case: CaseSpec) -> datetime:
    return end_of_day(date.fromisoformat(case.now or pack.manifest.case_now))


def build_case_bundle(pack: RulePack, given: dict[str, Any], now: datetime) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []

    def add(resource: dict[str, Any]) -> None:
        index = len(entries) + 2
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{index:012d}", "resource": resource})

    patient: dict[str, Any] = {"resourceType": "Patient", "id": "case-patient", "gender": "female"}
    age = given.get("age", 40)
    if "birth_date" in given:  # as sent, partial dates included ("1981", "1981-07")
        patient["birthDate"] = str(given["birth_date"])
    elif age is not None:
        born = subtract_months(now, 12 * int(age)) - timedelta(days=1)
        patient["birthDate"] = born.date().isoformat()
    entries.append({"fullUrl": PATIENT_URL, "resource": patient})
    subject = {"reference": PATIENT_URL}

    index = 0
    for analyte, specs in given.get("labs", {}).items():
        for spec in specs if isinstance(specs, list) else [specs]:
            add(
                _observation(
                    pack, analyte, spec if isinstance(spec, dict) else {"value": spec}, now, subject, index
                )
            )
            index += 1
    for index, spec in enumerate(given.get("conditions", [])):
        add(_condition(pack, spec if isinstance(spec, dict) else {"group": spec}, now, subject, index))
    for index, spec in enumerate(given.get("medications", [])):
        add(_medication(pack, spec if isinstance(spec, dict) else {"group": spec}, now, subject, index))
    answers = given.get("answers", {})
    if answers:
        add(_questionnaire_response(pack, answers, now, subject))
    for index, spec in enumerate(given.get("responses", [])):
        add(
            _questionnaire_response(
                pack,
                spec["answers"],
                now,
                subject,
                when={k: v for k, v in spec.items() if k in ("days_ago", "months_ago")},
                questionnaire=spec.get("questionnaire", ""),
                rid=f"answers-{index + 1}",
            )
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _when(spec: dict[str, Any], now: datetime, default_months: int = 1) -> str | None:
    if "days_ago" in spec:
        return (now - timedelta(days=int(spec["days_ago"]))).isoformat()
    months = spec.get("months_ago", default_months)
    if months is None:
        return None
    return subtract_months(now, int(months)).replace(hour=9, minute=0, second=0, microsecond=0).isoformat()


def _observation(
    pack: RulePack, analyte: str, spec: dict[str, Any], now: datetime, subject: dict[str, Any], index: int
) -> dict[str, Any]:
    definition = pack.analytes[analyte]
    code = definition.codes[0]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"lab-{index}",
        "status": spec.get("status", "final"),
        "code": {"coding": [{"system": code.system, "code": code.code, "display": code.display}]},
        "subject": subject,
        "effectiveDateTime": _when(spec, now),
    }
    if "coded" in spec:
        coded = next(c for c in definition.coded_values if c.band == spec["coded"])
        obs["valueCodeableConcept"] = {"coding": [{"system": coded.system, "code": coded.code}]}
        return obs
    if "coded_as" in spec:  # a code the pack does not know: {system, code, display}
        obs["valueCodeableConcept"] = {"coding": [dict(spec["coded_as"])]}
        return obs
    unit = spec.get("unit", definition.unit)
    quantity: dict[str, Any] = {"unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if spec["value"] is not None:  # `value: null` sends a result with a unit and no value
        quantity["value"] = spec["value"]
    if "comparator" in spec:
        quantity["comparator"] = spec["comparator"]
    obs["valueQuantity"] = quantity
    if "interpretation" in spec:
        obs["interpretation"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": spec["interpretation"],
                    }
                ]
            }
        ]
    if "range" in spec:
        low, high = spec["range"]
        obs["referenceRange"] = [
            {
                "low": {"value": low, "unit": unit, "code": unit},
                "high": {"value": high, "unit": unit, "code": unit},
            }
        ]
    return obs


def _condition(
    pack: RulePack, spec: dict[str, Any], now: datetime, subject: dict[str, Any], index: int
) -> dict[str, Any]:
    valueset = pack.valuesets.conditions[spec["group"]]
    if "code" in spec:
        bare = str(spec["code"]).replace(".", "")  # ICD-10-CM codes may come without their dot (I872)
        system = next(
            (c.system for c in valueset.codes if c.code.replace(".", "") == bare),
            next((p.system for p in valueset.prefixes if bare.startswith(p.prefix.replace(".", ""))), None),
        )
        if system is None:
            raise ValueError(f"code {spec['code']!r} is not in condition group {spec['group']!r}")
        coding = {"system": system, "code": str(spec["code"])}
    elif valueset.codes:
        first = valueset.codes[0]
        coding = {"system": first.system, "code": first.code, "display": first.display}
    else:
        prefix = valueset.prefixes[0]
        coding = {"system": prefix.system, "code": prefix.prefix + ".9", "display": prefix.display}
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": f"condition-{index}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": spec.get("status", "active"),
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": spec.get("verification", "confirmed"),
                }
            ]
        },
        "code": {"coding": [coding]},
        "subject": subject,
    }
    onset = _when(spec, now, default_months=24)
    if onset is not None:
        condition["onsetDateTime"] = onset
    if "recorded_days_ago" in spec:
        condition["recordedDate"] = _when({"days_ago": spec["recorded_days_ago"]}, now)
    return condition


def _medication(
    pack: RulePack, spec: dict[str, Any], now: datetime, subject: dict[str, Any], index: int
) -> dict[str, Any]:
    valueset = pack.valuesets.medications[spec["group"]]
    name = valueset.text[0] if valueset.text else valueset.display
    concept: dict[str, Any] = {"text": f"{name} tablet"}
    if "code" in spec:
        concept = {"coding": [{"system": RXNORM, "code": str(spec["code"])}]}
    elif "text" in spec:
        concept = {"text": str(spec["text"])}
    elif not spec.get("text_only"):
        first = valueset.codes[0]
        concept["coding"] = [{"system": first.system, "code": first.code, "display": first.display}]
    if spec.get("as") == "statement":
        return {
            "resourceType": "MedicationStatement",
            "id": f"medication-{index}",
            "status": spec.get("status", "active"),
            "medicationCodeableConcept": concept,
            "subject": subject,
        }
    return {
        "resourceType": "MedicationRequest",
        "id": f"medication-{index}",
        "status": spec.get("status", "active"),
        "intent": spec.get("intent", "order"),
        **({"doNotPerform": True} if spec.get("do_not_perform") else {}),
        "medicationCodeableConcept": concept,
        "subject": subject,
        "authoredOn": _when({}, now, default_months=2),
    }


def _questionnaire_response(
    pack: RulePack,
    answers: dict[str, Any],
    now: datetime,
    subject: dict[str, Any],
    *,
    when: dict[str, Any] | None = None,
    questionnaire: str | None = "",
    rid: str = "answers",
) -> dict[str, Any]:
    items = []
    for link_id, value in answers.items():
        kind = pack.question_types[link_id]
        answer = {"valueBoolean": bool(value)} if kind == "boolean" else {"valueInteger": int(value)}
        items.append({"linkId": link_id, "answer": [answer]})
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "questionnaire": pack.questionnaire_url if questionnaire == "" else questionnaire,
        "status": "completed",
        "subject": subject,
        "authored": _when(when or {"days_ago": 1}, now),
        "item": [{"linkId": "group-cramps", "item": items}],
    }
    if response["questionnaire"] is None:
        del response["questionnaire"]
    return response


def run_case(evaluator: Evaluator, rule: RuleSpec, case: CaseSpec) -> CaseResult:
    pack = evaluator.pack
    now = case_now(pack, case)
    bundle = build_case_bundle(pack, case.given, now)
    result = evaluator.evaluate_document(bundle, now=now)
    fired = rule.id in result.fired
    if fired != (case.expect == "fires"):
        verdict = "fired" if fired else "stayed silent"
        return CaseResult(
            rule.id, case.id, False, f"expected it to {case.expect.rstrip('s')}, but it {verdict}"
        )
    topic = pack.topic_of_rule.get(rule.id)
    if case.expect == "fires" and topic is not None:
        card = next((c for c in result.cards if c["source"]["topic"]["code"] == topic), None)
        if card is None and not pack.topics[topic].spec.only_unsuggested:
            return CaseResult(rule.id, case.id, False, f"the rule fired but no {topic} card was issued")
        if case.indicator is not None and (card is None or card["indicator"] != case.indicator):
            got = card["indicator"] if card else "no card"
            return CaseResult(rule.id, case.id, False, f"expected indicator {case.indicator}, got {got}")
        if card is not None:
            labels = " ".join(s["label"] for s in card.get("suggestions", []))
            text = f"{card['summary']}\n{card.get('detail', '')}\n{labels}".lower()
            for words in case.card_says:
                if words.lower() not in text:
                    return CaseResult(rule.id, case.id, False, f"the {topic} card does not say {words!r}")
            for words in case.card_lacks:
                if words.lower() in text:
                    return CaseResult(rule.id, case.id, False, f"the {topic} card says {words!r}")
        elif case.card_says:
            return CaseResult(rule.id, case.id, False, f"no {topic} card to say {case.card_says[0]!r}")
    return CaseResult(rule.id, case.id, True, "ok")


def all_cases(pack: RulePack) -> list[tuple[RuleSpec, CaseSpec]]:
    return [(rule, case) for rule in pack.rules_by_id.values() for case in rule.cases]


def run_all_cases(evaluator: Evaluator) -> list[CaseResult]:
    return [run_case(evaluator, rule, case) for rule, case in all_cases(evaluator.pack)]
