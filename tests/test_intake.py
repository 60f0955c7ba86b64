"""Intake: JSON, Bundle and CDS Hooks request shapes, FHIR validation errors that name resource and field."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cds.errors import (
    CdsError,
    FhirValidationError,
    JsonError,
    PatientError,
    PrefetchMissingError,
    ShapeError,
)
from cds.evaluation import Evaluator
from cds.intake import (
    MODELS,
    PREFETCH_KEYS,
    VALIDATED,
    ValidatedElements,
    _check_keys_and_depth,
    bundle_entries,
    document_entries,
    is_hook_request,
    load_json,
    prefetch_entries,
    project,
    read_hook_request,
    validate_entries,
)
from tests.conftest import FIXTURES, FROZEN_NOW, load_fixture

# Part of the compatibility subset that .ci/run runs on every supported Python.
pytestmark = pytest.mark.compat

TSH = {"system": "http://loinc.org", "code": "3016-3"}


def tsh(oid: str = "abc", value: Any = 2.0, subject: str = "Patient/p1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [TSH]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2026-05-01",
        "valueQuantity": {
            "value": value,
            "unit": "mIU/L",
            "system": "http://unitsofmeasure.org",
            "code": "mIU/L",
        },
    }


def collection(*resources: dict[str, Any], kind: str = "collection") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="broken"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"value": NaN}', id="nan"),
        pytest.param(b'{"value": Infinity}', id="infinity"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="too-deep"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
    ],
)
def test_load_json_refuses(raw: bytes) -> None:
    with pytest.raises(JsonError) as caught:
        load_json(raw)
    assert "not valid JSON" in str(caught.value)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param({"hook": "patient-view", "hookInstance": "x"}, True, id="hook-request"),
        pytest.param({"resourceType": "Bundle", "hook": "patient-view"}, False, id="resource-with-hook-key"),
        pytest.param({"resourceType": "Bundle"}, False, id="bundle"),
        pytest.param([{"hook": "patient-view"}], False, id="list"),
    ],
)
def test_is_hook_request(document: Any, expected: bool) -> None:
    assert is_hook_request(document) is expected


def valid_request() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {},
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"hook": ""}, "hook", id="empty-hook"),
        pytest.param({"hookInstance": None}, "hookInstance", id="no-hook-instance"),
        pytest.param({"context": []}, "context", id="context-not-object"),
        pytest.param({"context": {"userId": "Practitioner/1"}}, "context.patientId", id="no-patient-id"),
        pytest.param({"prefetch": ["x"]}, "prefetch", id="prefetch-not-object"),
        pytest.param({"fhirServer": 42}, "fhirServer", id="fhir-server-not-string"),
        pytest.param(
            {"fhirAuthorization": {"token_type": "Bearer"}}, "fhirAuthorization", id="authorization-no-token"
        ),
    ],
)
def test_read_hook_request_names_the_field(change: dict[str, Any], field: str) -> None:
    request = valid_request() | change
    with pytest.raises(ShapeError) as caught:
        read_hook_request(request)
    assert caught.value.field == field


def test_read_hook_request_keeps_what_the_service_needs() -> None:
    request = valid_request() | {
        "fhirServer": "https://ehr.example.org/fhir",
        "fhirAuthorization": {"access_token": "t0k", "token_type": "Bearer"},
        "prefetch": None,
    }
    read = read_hook_request(request)
    assert (read.hook, read.context["patientId"], read.fhir_server, read.access_token) == (
        "patient-view",
        "p1",
        "https://ehr.example.org/fhir",
        "t0k",
    )
    assert read.prefetch == {}


@pytest.mark.parametrize("kind", ["collection", "searchset", "transaction", "batch"])
def test_bundle_types_accepted(kind: str) -> None:
    entries = bundle_entries(collection(tsh(), kind=kind))
    assert [(where, r["id"]) for where, r, _ in entries] == [("Bundle.entry[0]", "abc")]


@pytest.mark.parametrize("kind", ["document", "message", "history", "transaction-response", None])
def test_other_bundle_types_refused(kind: str | None) -> None:
    with pytest.raises(ShapeError) as caught:
        bundle_entries({"resourceType": "Bundle", "type": kind, "entry": []})
    assert caught.value.field == "Bundle.type"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        pytest.param("not-an-object", "Bundle.entry[0]", id="entry-not-object"),
        pytest.param({"resource": {"id": "x"}}, "Bundle.entry[0].resource", id="resource-without-type"),
        pytest.param({"resource": ["x"]}, "Bundle.entry[0].resource", id="resource-not-object"),
    ],
)
def test_malformed_entries_named(entry: Any, field: str) -> None:
    with pytest.raises(ShapeError) as caught:
        bundle_entries({"resourceType": "Bundle", "type": "collection", "entry": [entry]})
    assert caught.value.field == field


def test_entry_list_must_be_a_list() -> None:
    with pytest.raises(ShapeError) as caught:
        bundle_entries({"resourceType": "Bundle", "type": "collection", "entry": {"resource": tsh()}})
    assert caught.value.field == "Bundle.entry"


def test_transaction_entries_without_resource_are_skipped() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": "Observation/old"}},
            {
                "fullUrl": "urn:uuid:0f3c6d2e-8a7b-4c1e-9d5f-2a6b7c8d9e0f",
                "resource": tsh(),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    entries = bundle_entries(document)
    assert [(where, full_url) for where, _, full_url in entries] == [
        ("Bundle.entry[1]", "urn:uuid:0f3c6d2e-8a7b-4c1e-9d5f-2a6b7c8d9e0f")
    ]


@pytest.mark.parametrize(
    ("document", "mentions"),
    [
        pytest.param({"resourceType": "Patient", "id": "p1"}, "got Patient", id="bare-patient"),
        pytest.param({"resourceType": "Observation"}, "got Observation", id="bare-observation"),
        pytest.param({"hello": "world"}, "expected a FHIR Bundle", id="object-without-type"),
        pytest.param([1, 2], "JSON object", id="list"),
        pytest.param("Bundle", "JSON object", id="string"),
    ],
)
def test_document_must_be_a_bundle(document: Any, mentions: str) -> None:
    with pytest.raises(ShapeError) as caught:
        document_entries(document)
    assert mentions in str(caught.value)


@pytest.mark.parametrize(
    ("resource", "label", "field"),
    [
        pytest.param(tsh(value="abc"), "Observation/abc", "valueQuantity.value", id="value-not-a-number"),
        pytest.param(
            {k: v for k, v in tsh().items() if k != "status"},
            "Observation/abc",
            "status",
            id="status-missing",
        ),
        pytest.param(
            tsh() | {"effectiveDateTime": "June 2026"},
            "Observation/abc",
            "effectiveDateTime",
            id="date-not-fhir",
        ),
        pytest.param(
            {"resourceType": "Patient", "id": "p1", "birthDate": "1980-13-01"},
            "Patient/p1",
            "birthDate",
            id="patient-birth-date",
        ),
        pytest.param(
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": "Patient/p1",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]},
            },
            "Condition/c1",
            "subject",
            id="reference-as-string",
        ),
    ],
)
def test_invalid_fhir_names_resource_and_field(resource: dict[str, Any], label: str, field: str) -> None:
    with pytest.raises(FhirValidationError) as caught:
        validate_entries(bundle_entries(collection(resource)))
    assert caught.value.resource == label
    assert caught.value.field is not None
    assert caught.value.field.startswith(field)
    assert str(caught.value).startswith(f"{label}: {field}")


def test_invalid_resource_without_id_is_named_by_its_place() -> None:
    resource = tsh(value="abc")
    del resource["id"]
    with pytest.raises(FhirValidationError) as caught:
        validate_entries(bundle_entries(collection({"resourceType": "Patient", "id": "p1"}, resource)))
    assert caught.value.resource == "Observation at Bundle.entry[1]"


def test_types_the_rules_do_not_read_are_listed_not_validated() -> None:
    broken_procedure = {"resourceType": "Procedure", "id": "x", "status": 12}
    submission = validate_entries(
        bundle_entries(
            collection({"resourceType": "Patient", "id": "p1"}, broken_procedure, broken_procedure)
        )
    )
    assert [r.key for r in submission.resources] == ["Patient/p1"]
    assert submission.notes == ["not read by the rules, ignored: 2 Procedure"]


def test_validated_resources_keep_key_and_full_url() -> None:
    document = collection(tsh())
    document["entry"][0]["fullUrl"] = "https://ehr.example.org/fhir/Observation/abc"
    [resource] = validate_entries(bundle_entries(document)).resources
    assert (resource.type, resource.key, resource.full_url) == (
        "Observation",
        "Observation/abc",
        "https://ehr.example.org/fhir/Observation/abc",
    )


# --- prefetch -------------------------------------------------------------------------------------


def test_prefetch_reads_resources_and_searchset_bundles() -> None:
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": tsh()}]},
        "conditions": None,
        "medicationRequests": {"resourceType": "OperationOutcome", "issue": []},
        "unexpected": {"resourceType": "Patient", "id": "p2"},
    }
    found = [(where, r["resourceType"]) for where, r, _ in prefetch_entries(prefetch)]
    assert found == [("prefetch.patient", "Patient"), ("prefetch.observations.entry[0]", "Observation")]


def test_prefetch_value_must_be_a_resource() -> None:
    with pytest.raises(ShapeError) as caught:
        prefetch_entries({"observations": ["not", "a", "bundle"]})
    assert caught.value.field == "prefetch.observations"


def test_searchset_operation_outcome_entries_are_not_data() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "OperationOutcome", "issue": []}}, {"resource": tsh()}],
    }
    assert [r["resourceType"] for _, r, _ in prefetch_entries({"observations": bundle})] == ["Observation"]


def hook_request() -> dict[str, Any]:
    return copy.deepcopy(load_fixture("hook-request.json"))


@pytest.mark.parametrize("key", PREFETCH_KEYS)
def test_absent_prefetch_key_is_an_error_naming_it(evaluator: Evaluator, key: str) -> None:
    request = hook_request()
    del request["prefetch"][key]
    with pytest.raises(PrefetchMissingError) as caught:
        evaluator.evaluate_document(request, now=FROZEN_NOW)
    assert caught.value.field == f"prefetch.{key}"
    assert caught.value.status == 412


@pytest.mark.parametrize("key", ["conditions", "medicationStatements", "questionnaireResponses"])
def test_operation_outcome_in_prefetch_counts_as_not_sent(evaluator: Evaluator, key: str) -> None:
    request = hook_request()
    request["prefetch"][key] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    with pytest.raises(PrefetchMissingError) as caught:
        evaluator.evaluate_document(request, now=FROZEN_NOW)
    assert caught.value.field == f"prefetch.{key}"


def test_null_prefetch_key_means_no_data(evaluator: Evaluator) -> None:
    request = hook_request()
    request["prefetch"]["medicationRequests"] = None
    result = evaluator.evaluate_document(request, now=FROZEN_NOW)
    assert not any(
        m.group == "ppi" for m in result.record.medications if m.ref.startswith("MedicationRequest/")
    )
    assert "lifestyle" in [c["source"]["topic"]["code"] for c in result.cards]


def test_prefetch_patient_must_be_the_context_patient(evaluator: Evaluator) -> None:
    request = hook_request()
    request["context"]["patientId"] = "someone-else"
    with pytest.raises(PatientError) as caught:
        evaluator.evaluate_document(request, now=FROZEN_NOW)
    assert caught.value.resource == "Patient/hook-patient"
    assert caught.value.field == "prefetch.patient"


def test_hook_request_record_is_the_context_patient(evaluator: Evaluator) -> None:
    result = evaluator.evaluate_document(hook_request(), now=FROZEN_NOW)
    assert result.record.patient_key == "Patient/hook-patient"
    assert result.record.age == 58


# --- the fast duplicate-key and nesting checks of load_json agree with the exact pass -------------------

_keys = st.sampled_from(["a", "b", "\\u0061", "\\ud83d\\ude00", "\U0001f600", "k[", "}"])
_scalars = st.sampled_from(
    ["1", "2.5e-7", "null", "true", '"x"', '"line\\nbreak [ {"', '"\\"q\\""', "[]", "{}"]
)


@st.composite
def _json_texts(draw: st.DrawFn, depth: int = 0) -> str:
    """JSON text (not parsed: keys may repeat, and may be spelt with escapes) nested up to ~12 deep."""
    if depth > 11 or draw(st.integers(0, 4)) == 0:
        return draw(_scalars)
    members = draw(st.lists(_json_texts(depth + 1), max_size=3))
    if draw(st.booleans()):
        return "[" + " , ".join(members) + "]"
    keys = draw(st.lists(_keys, min_size=len(members), max_size=len(members)))
    return "{" + ",".join(f'"{k}" :{m}' for k, m in zip(keys, members, strict=True)) + "}"


@settings(max_examples=400, deadline=None)
@given(_json_texts(), st.integers(1, 10))
def test_load_json_refuses_exactly_what_the_exact_pass_refuses(text: str, limit: int) -> None:
    """jiter's duplicate check and the indented-text nesting check are shortcuts: whatever they let
    through, the exact stdlib pass (`_check_keys_and_depth`) must let through too, and the other way."""
    raw = text.encode()
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return  # not JSON at all (e.g. a lone surrogate escape): both refuse it before these checks
    try:
        _check_keys_and_depth(raw, document, limit)
        exact: str | None = None
    except JsonError as exc:
        exact = str(exc)
    try:
        assert load_json(raw, max_depth=limit) == document
        fast: str | None = None
    except JsonError as exc:
        fast = str(exc)
    assert fast == exact


# --- validated elements remembered between resources (cds.intake.ValidatedElements) ------------------


def test_a_remembered_element_gives_the_same_model_and_the_same_errors() -> None:
    memory = ValidatedElements()
    first, unseen = memory.substitute("Observation", project(tsh("o1"), "Observation"))
    model = MODELS["Observation"].model_validate(first)
    memory.learn(model, unseen)
    assert {key[1] for key in memory._known} == {"code", "subject", "valueQuantity"}
    # Keys compare the JSON, not its spelling: the same code with its keys in another order is a hit.
    again = tsh("o2")
    again["code"] = {"coding": [{"code": "3016-3", "system": "http://loinc.org"}]}
    given, unseen = memory.substitute("Observation", project(again, "Observation"))
    assert given["code"] is model.code
    assert given["subject"] is model.subject
    assert unseen == []
    assert MODELS["Observation"].model_validate(given) == MODELS["Observation"].model_validate(
        project(again, "Observation")
    )
    # A remembered member does not hide an error elsewhere, nor change its text.
    broken = {**tsh("o3"), "issued": "yesterday"}
    given, _ = memory.substitute("Observation", project(broken, "Observation"))
    with pytest.raises(ValidationError) as remembered:
        MODELS["Observation"].model_validate(given)
    with pytest.raises(ValidationError) as fresh:
        MODELS["Observation"].model_validate(project(broken, "Observation"))
    assert remembered.value.errors(include_context=False) == fresh.value.errors(include_context=False)


def test_an_element_is_remembered_only_from_a_resource_that_validated() -> None:
    memory = ValidatedElements()
    broken = {**tsh("o1"), "issued": "yesterday"}
    given, unseen = memory.substitute("Observation", project(broken, "Observation"))
    with pytest.raises(ValidationError):
        MODELS["Observation"].model_validate(given)
    assert len(memory) == 0
    assert len(unseen) == 3
    # Another resource type, or another member, is another key: Condition.code is not Observation.code.
    memory.learn(MODELS["Observation"].model_validate(project(tsh("o2"), "Observation")), unseen)
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": tsh()["code"],
    }
    _, unseen = memory.substitute("Condition", project(condition, "Condition"))
    assert {name for name, _ in unseen} == {"code", "subject"}


def test_the_memory_is_bounded() -> None:
    memory = ValidatedElements(capacity=3)
    for index in range(10):
        observation = tsh(f"o{index}", value=float(index), subject=f"Patient/p{index}")
        given, unseen = memory.substitute("Observation", project(observation, "Observation"))
        memory.learn(MODELS["Observation"].model_validate(given), unseen)
        assert len(memory) <= 3


def test_a_large_member_is_validated_every_time_and_never_kept() -> None:
    """A client sending large distinct members cannot grow the memory: only small ones are kept."""
    memory = ValidatedElements(max_bytes=512)
    observation = tsh("o1")
    observation["code"] = {"coding": [TSH], "text": "x" * 600}
    given, unseen = memory.substitute("Observation", project(observation, "Observation"))
    assert given["code"] == observation["code"]
    memory.learn(MODELS["Observation"].model_validate(given), unseen)
    assert {key[1] for key in memory._known} == {"subject", "valueQuantity"}
    assert all(len(key[2]) <= 512 for key in memory._known)


def test_evaluations_never_change_a_remembered_model(evaluator: Evaluator) -> None:
    """The remembered models are shared by every later request: evaluating every fixture twice leaves
    each of them as it was when it was remembered."""
    documents = [
        load_fixture(name)
        for name in sorted(p.name for p in FIXTURES.glob("*.json"))
        if name != "manifest.json"
    ]
    documents = [
        d for d in documents if isinstance(d, dict) and (d.get("resourceType") == "Bundle" or "hook" in d)
    ]
    for document in documents:
        with contextlib.suppress(CdsError):
            evaluator.evaluate_document(document, now=FROZEN_NOW)
    assert len(VALIDATED) > 0
    before = {key: model.model_dump_json() for key, model in VALIDATED._known.items()}
    for document in documents:
        with contextlib.suppress(CdsError):
            evaluator.evaluate_document(document, now=FROZEN_NOW)
    after = {key: VALIDATED._known[key].model_dump_json() for key in before if key in VALIDATED._known}
    assert after == {key: before[key] for key in after}
    assert len(after) == len(before)
