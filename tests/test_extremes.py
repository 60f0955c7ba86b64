"""Extreme but valid values in every numeric and temporal field (issue 9 class 7): each is a 4xx
naming the field or a correct answer, never a 500.

Seen before: date-times at the calendar's edges (`0001-01-01T00:00:00+14:00` is in year 0 in UTC,
`9999-12-31T23:59:59-01:00` in year 10000) in observations, answers, conditions, feedback and
`/evaluate?now=`; a lab value of 1e308 overflowing in unit conversion; draft orders nested several
hundred deep; a trusted token with `exp` in year 9999. Derandomized with fixed budgets.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.api.evaluate import parse_moment
from cds.errors import CdsError, InputError
from cds.evaluation import Evaluator
from cds.fhirvalues import LATEST, as_utc, end_of_day
from cds.rulepack import RulePack
from tests.conftest import load_fixture
from tests.support.api import (
    CALCIUM_CARBONATE,
    NOW,
    Api,
    Issuer,
    dev_settings,
    hook_request,
    order_sign_request,
    running,
    secure_settings,
)

EDGE_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999+00:00",
    "0001-01-01",
    "9999-12-31",
    "0001",
    "9999-12",
]
TEMPORAL_KEYS = frozenset(
    {
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "onsetDateTime",
        "recordedDate",
        "authored",
        "authoredOn",
        "dateAsserted",
        "start",
        "end",
        "valueDateTime",
        "valueDate",
    }
)
OFFSETS = ["Z", "+14:00", "-12:00", "+05:45", "-01:00", "+00:00"]

moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
fhir_date_times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.builds(lambda m, z: m.isoformat(timespec="seconds") + z, moments, st.sampled_from(OFFSETS)),
    moments.map(lambda m: m.date().isoformat()),
)
extreme_numbers = st.one_of(
    st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324, 1e-300, 3e-05, 0, -0.0, 1e16]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path, node


def put(document: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        document = document[step]
    document[path[-1]] = value


REQUEST = hook_request()
TEMPORAL = [p for p, v in leaves(REQUEST["prefetch"]) if p[-1] in TEMPORAL_KEYS]
NUMERIC = [
    p
    for p, v in leaves(REQUEST["prefetch"])
    if isinstance(v, int | float) and not isinstance(v, bool) and p[-1] != "total"
]


def test_the_request_has_the_fields_the_strategies_vary() -> None:
    assert {p[-1] for p in TEMPORAL} >= {"effectiveDateTime", "onsetDateTime", "authored"}
    assert {p[-1] for p in NUMERIC} >= {"value", "valueInteger"}


@pytest.fixture(scope="module")
def evaluator(pack: RulePack) -> Evaluator:
    counter = itertools.count(1)
    return Evaluator(pack, new_id=lambda: f"00000000-0000-4000-8000-{next(counter):012d}")


def evaluate_or_client_error(evaluator: Evaluator, document: Any, now: datetime) -> None:
    """An Evaluation or an error the client is told about (4xx); anything else fails the test."""
    refused: CdsError | None = None
    try:
        evaluator.evaluate_document(document, now=now)
    except CdsError as exc:
        refused = exc
    assert refused is None or refused.status < 500, repr(refused)


@budget(250)
@given(data=st.data())
def test_every_temporal_and_numeric_field_at_its_extremes(evaluator: Evaluator, data: st.DataObject) -> None:
    document = copy.deepcopy(REQUEST)
    for path in data.draw(st.lists(st.sampled_from(TEMPORAL), min_size=1, max_size=4, unique=True)):
        put(document["prefetch"], path, data.draw(fhir_date_times))
    for path in data.draw(st.lists(st.sampled_from(NUMERIC), max_size=4, unique=True)):
        put(document["prefetch"], path, data.draw(extreme_numbers))
    now = as_utc(data.draw(st.sampled_from([NOW, NOW.replace(year=1, month=1, day=1), LATEST])))
    evaluate_or_client_error(evaluator, document, now)


@pytest.mark.parametrize("now", [*EDGE_TIMES[:4], "0001-01-01", "9999-12-31"])
def test_the_evaluation_time_at_the_calendar_edges(evaluator: Evaluator, now: str) -> None:
    evaluate_or_client_error(evaluator, load_fixture("workup.json"), parse_moment(now))


def test_instants_beyond_the_utc_range_are_clamped_in_order() -> None:
    assert as_utc(datetime.fromisoformat("0001-01-01T00:00:00+14:00")) == datetime.min.replace(tzinfo=UTC)
    assert as_utc(datetime.fromisoformat("9999-12-31T23:59:59-01:00")) == LATEST
    assert end_of_day(datetime(9999, 12, 31).date()) == LATEST


def test_a_huge_lab_value_is_read_as_the_extreme_it_is(evaluator: Evaluator) -> None:
    """1e308 g/L converted to mg/dL overflows to infinity: refused or read, never a 500 or a wrong band."""
    for value in (1e308, 1.7976931348623157e308, -1e308):
        document = copy.deepcopy(REQUEST)
        for path in NUMERIC:
            if path[-1] == "value" and "valueQuantity" in path:
                put(document["prefetch"], path, value)
        evaluate_or_client_error(evaluator, document, NOW)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path_factory.mktemp("extremes")), evaluator=Evaluator(pack)) as api:
        yield api


def assert_answered(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("edge", EDGE_TIMES[:2])
@pytest.mark.parametrize("field", ["effectiveDateTime", "onsetDateTime", "authored"])
def test_calendar_edges_in_the_resources_over_http(api: Api, field: str, edge: str) -> None:
    request = hook_request()
    for path in TEMPORAL:
        if path[-1] == field:
            put(request["prefetch"], path, edge)
    response = api.client.post("/cds-services/cramp-assessment", json=request)
    assert_answered(response)


@pytest.mark.parametrize("edge", [*EDGE_TIMES[:4], "0001-01-01", "9999-12-31"])
def test_calendar_edges_as_now_over_http(api: Api, edge: str) -> None:
    response = api.client.post("/evaluate", params={"now": edge}, json=load_fixture("workup.json"))
    assert_answered(response)


@pytest.mark.parametrize("edge", EDGE_TIMES[:4])
def test_calendar_edges_as_feedback_outcome_timestamps(api: Api, edge: str) -> None:
    card = api.client.post("/cds-services/cramp-assessment", json=hook_request()).json()["cards"][0]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": edge}]}
    response = api.client.post("/cds-services/cramp-assessment/feedback", json=feedback)
    assert_answered(response)
    if response.status_code == 400:
        assert "outcomeTimestamp" in response.json()["issue"][0]["diagnostics"]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"x": value}
    return value


DRAFT_MEMBERS = [
    "note",
    "dosageInstruction",
    "medicationCodeableConcept",
    "contained",
    "extension",
    "subject",
]


@pytest.mark.parametrize("depth", [300, 500, 900])
@pytest.mark.parametrize("member", DRAFT_MEMBERS)
def test_a_draft_order_nested_hundreds_deep_is_never_a_500(api: Api, member: str, depth: int) -> None:
    request = order_sign_request(medication=copy.deepcopy(CALCIUM_CARBONATE))
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    if member == "medicationCodeableConcept":
        draft[member]["coding"][0]["extension"] = nested(depth)
    else:
        draft[member] = nested(depth)
    response = api.client.post("/cds-services/calcium-order-check", json=request)
    assert_answered(response)


# --------------------------------------------------------------------------- JWT


def test_a_trusted_token_expiring_in_year_9999_is_refused_not_a_500(tmp_path: Path, pack: RulePack) -> None:
    issuer = Issuer()
    with running(secure_settings(tmp_path, issuer), evaluator=Evaluator(pack)) as api:
        url = api.url("/cds-services")
        for exp in (253402300799, 253402300799 + 3600, 10**12):
            claims = {"iss": issuer.iss, "aud": url, "iat": int(NOW.timestamp()), "exp": exp, "jti": str(exp)}
            token = jwt.encode(claims, issuer.key, algorithm="ES384", headers={"kid": issuer.kid})
            response = api.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, response.text
        # and at the other end: issued in year 1, or exp before 1970
        for iat, exp in ((-62135596800, -62135596800 + 60), (0, -1)):
            claims = {"iss": issuer.iss, "aud": url, "iat": iat, "exp": exp, "jti": f"old{iat}"}
            token = jwt.encode(claims, issuer.key, algorithm="ES384", headers={"kid": issuer.kid})
            response = api.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, response.text
        good = issuer.token(url, now=NOW, lifetime=timedelta(minutes=5))
        assert api.client.get("/cds-services", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_input_error_is_what_clients_get() -> None:
    assert InputError.status == 400
