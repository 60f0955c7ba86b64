"""The classic bad inputs, by hand, against the running app over real HTTP on loopback.

Empty and oversized bodies, JSON nested 100,000 deep, invalid UTF-8, the wrong content type, duplicate
keys, numbers beyond double range, a 100,000-entry prefetch Bundle, and a FHIR server that loops its
`next` links, answers slowly, with garbage, with 500, or not at all. Every error is a JSON
OperationOutcome with no stack trace; nothing hangs (bounded timeouts) and memory stays low.
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from cds.evaluation import Evaluator
from cds.intake import PREFETCH_KEYS, load_json
from cds.rulepack import RulePack
from tests.support.api import Api, dev_settings, hook_request, running
from tests.support.fhir_server import FhirTestServer
from tests.support.figures import record_figures

SERVICE = "/cds-services/cramp-assessment"
JSON = {"content-type": "application/json"}
BUDGET = 1.0  # CDS_FHIR_BUDGET_SECONDS for these tests
MB = 1024 * 1024
LIMIT = 5 * MB  # the default CDS_MAX_BODY_BYTES
FIGURES: dict[str, Any] = {}
# What a leaked traceback or internal detail looks like in a body.
LEAKS = re.compile(r"Traceback|File \"|line \d+, in|/site-packages/|\.py\b|Exception\b|Error\(")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("classics")
    with running(dev_settings(tmp, fhir_budget_seconds=BUDGET), evaluator=Evaluator(pack)) as api:
        yield api


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The single issue of a clean error answer: JSON OperationOutcome, the status, no stack trace."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    assert not LEAKS.search(response.text), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["severity"] == "error"
    assert issue["diagnostics"]
    result: dict[str, Any] = issue
    return result


def rss_bytes() -> int:
    """Resident set size of this process, which also runs the server (uvicorn in a thread)."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def full_prefetch() -> dict[str, Any]:
    return hook_request()


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("path", [SERVICE, f"{SERVICE}/feedback", "/evaluate"])
def test_a_body_of_zero_bytes_is_400(api: Api, path: str) -> None:
    found = problem(api.client.post(path, content=b"", headers=JSON), 400)
    assert found["code"] == "structure"


def raw_post(api: Api, path: str, head: dict[str, str]) -> socket.socket:
    """Open a connection and send the request line and headers only."""
    parts = urlsplit(api.base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in head.items()),
        "",
        "",
    ]
    sock.sendall("\r\n".join(lines).encode("ascii"))
    return sock


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the answer (Content-Length framed), read until the body is complete."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return status, body


def test_a_declared_100_mb_body_is_refused_before_it_is_sent(api: Api) -> None:
    """Content-Length says 100 MB: the 413 arrives after the headers alone, no body byte read."""
    with raw_post(
        api, SERVICE, {"Content-Type": "application/json", "Content-Length": str(100 * MB)}
    ) as sock:
        status, body = read_answer(sock)
    assert status == 413
    assert orjson.loads(body)["issue"][0]["code"] == "too-long"


def test_a_streamed_100_mb_body_is_refused_at_the_limit_and_memory_stays_low(api: Api) -> None:
    """Chunked, no Content-Length: the server answers 413 once the limit is passed, long before 100 MB."""
    chunk = b" " * MB
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    before = rss_bytes()
    sent = 0
    with raw_post(api, SERVICE, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}) as sock:
        sock.sendall(b"1\r\n{\r\n")
        while sent < 100 * MB:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered while we were still sending
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        status, body = read_answer(sock)
    grown = rss_bytes() - before
    FIGURES["streamed_100mb"] = {"sent_mb_before_413": sent // MB, "rss_growth_mb": round(grown / MB, 1)}
    print(f"streamed 100 MB body: 413 after {sent // MB} MB sent; RSS grew {grown / MB:.1f} MB")
    assert status == 413
    assert orjson.loads(body)["issue"][0]["expression"] == ["body"]
    assert sent < 100 * MB // 2  # refused well before the end (the limit is 5 MB, plus socket buffers)
    assert grown < 64 * MB  # the 100 MB were never held


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_json_nested_100000_deep_is_400(api: Api, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * 100_000 + b"1" + closer * 100_000
    found = problem(api.client.post("/evaluate", content=body, headers=JSON), 400)
    assert found["code"] == "structure"


@pytest.mark.parametrize(
    "raw",
    [b'{"hook": "\xff\xfe"}', b'{"hook": "\xc3\x28"}', b'{"hook": "\xed\xa0\x80"}', b"\xef\xbb\xbf{}"],
    ids=["ff-fe", "bad-continuation", "utf8-surrogate", "byte-order-mark"],
)
def test_invalid_utf8_is_400(api: Api, raw: bytes) -> None:
    found = problem(api.client.post(SERVICE, content=raw, headers=JSON), 400)
    assert "UTF-8" in found["diagnostics"] or "not valid JSON" in found["diagnostics"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/jsonx",
    ],
)
@pytest.mark.parametrize("path", [SERVICE, f"{SERVICE}/feedback", "/evaluate"])
def test_a_body_that_is_not_sent_as_json_is_415(api: Api, path: str, content_type: str) -> None:
    response = api.client.post(
        path, content=orjson.dumps(hook_request()), headers={"content-type": content_type}
    )
    found = problem(response, 415)
    assert found["code"] == "not-supported"
    assert found["expression"] == ["header.content-type"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/fhir+json", "APPLICATION/JSON"],
)
def test_json_media_types_are_read(api: Api, content_type: str) -> None:
    response = api.client.post(
        SERVICE, content=orjson.dumps(hook_request()), headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


def test_a_wrong_content_type_on_an_unknown_path_is_still_404(api: Api) -> None:
    problem(api.client.post("/no/such/path", content=b"x", headers={"content-type": "text/plain"}), 404)


def test_duplicate_keys_are_400_naming_the_key(api: Api) -> None:
    body = orjson.dumps(hook_request())
    # The same hook request with the patient's id given twice, the second one different.
    doubled = body.replace(b'"patientId":', b'"patientId":"someone-else","patientId":', 1)
    assert doubled != body
    found = problem(api.client.post(SERVICE, content=doubled, headers=JSON), 400)
    assert found["code"] == "structure"
    assert "'patientId'" in found["diagnostics"]


def test_duplicate_key_check_cost_on_a_250_resource_body() -> None:
    """Not a timing assertion: the figure for the decision to refuse duplicate keys (printed, recorded)."""
    from bench.patients import make_patient

    raw = orjson.dumps(make_patient(250))

    def per_call(parse: Any) -> float:
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(20):
                parse(raw)
            best = min(best, (time.perf_counter() - began) / 20)
        return best * 1000

    plain, strict = per_call(orjson.loads), per_call(load_json)
    FIGURES["duplicate_key_check"] = {
        "body_kb": len(raw) // 1024,
        "orjson_ms": round(plain, 3),
        "load_json_ms": round(strict, 3),
    }
    print(f"duplicate-key check on {len(raw) // 1024} kB: orjson {plain:.2f} ms, load_json {strict:.2f} ms")
    assert load_json(raw) == orjson.loads(raw)


@pytest.mark.parametrize("number", [b"1e309", b"-1e309", b"1E400", b"-1E+99999"])
def test_numbers_beyond_double_range_are_400(api: Api, number: bytes) -> None:
    body = orjson.dumps(hook_request()).replace(
        b'"hookInstance":', b'"extra":' + number + b',"hookInstance":', 1
    )
    found = problem(api.client.post(SERVICE, content=body, headers=JSON), 400)
    assert found["code"] == "structure"


# --------------------------------------------------------------------------- a 100,000-entry prefetch


def huge_prefetch(entries: int) -> bytes:
    """The fixture request whose observations Bundle holds `entries` low vitamin D results (5-14 ng/mL),
    hourly over 20,000 hours, so five share the latest time (a tie, announced in the notes)."""
    request = hook_request()
    patient_id = request["context"]["patientId"]
    template = (
        '{"fullUrl":"urn:uuid:%d","resource":{"resourceType":"Observation","id":"vd-%d","status":"final",'
        '"code":{"coding":[{"system":"http://loinc.org","code":"62292-8"}]},'
        '"subject":{"reference":"Patient/' + patient_id + '"},"effectiveDateTime":"%s",'
        '"valueQuantity":{"value":%d,"unit":"ng/mL","system":"http://unitsofmeasure.org","code":"ng/mL"}}}'
    )
    start = 1_700_000_000  # 2023-11-14
    rows = [
        template
        % (i, i, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 3600 * (i % 20_000))), 5 + i % 10)
        for i in range(entries)
    ]
    request["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    body = orjson.dumps(request)
    marker = b'"entry":[]'
    return body.replace(marker, b'"entry":[' + ",".join(rows).encode() + b"]", 1)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    """The app with a 64 MB body limit and room for 100,000 resources, so that a 100,000-entry Bundle is
    read rather than refused."""
    tmp = tmp_path_factory.mktemp("roomy")
    settings = dev_settings(tmp, max_body_bytes=64 * MB, max_resources_per_key=100_000, max_resources=200_000)
    with running(settings, evaluator=Evaluator(pack)) as api:
        yield api


def test_a_prefetch_bundle_of_100000_entries_is_answered_without_eating_memory(roomy: Api) -> None:
    body = huge_prefetch(100_000)
    before = rss_bytes()
    began = time.monotonic()
    response = roomy.client.post(SERVICE, content=body, headers=JSON, timeout=120)
    seconds = time.monotonic() - began
    grown = rss_bytes() - before
    FIGURES["prefetch_100000"] = {
        "body_mb": round(len(body) / MB, 1),
        "status": response.status_code,
        "seconds": round(seconds, 2),
        "rss_growth_mb": round(grown / MB, 1),
    }
    print(
        f"100,000-entry prefetch ({len(body) / MB:.1f} MB): {response.status_code} in {seconds:.1f} s, RSS +{grown / MB:.0f} MB"
    )
    assert response.status_code == 200, response.text[:500]
    cards = response.json()["cards"]
    assert "vitamin-d-deficiency" in {c["source"]["topic"]["code"] for c in cards}
    # The client's copy, the server's bytes and the parsed JSON: a small multiple of the body.
    assert grown < 10 * len(body)


def test_a_prefetch_bundle_of_100000_entries_over_the_default_limit_is_413(api: Api) -> None:
    body = huge_prefetch(100_000)
    assert len(body) > LIMIT
    problem(api.client.post(SERVICE, content=body, headers=JSON), 413)


# --------------------------------------------------------------------------- a misbehaving FHIR server


def without_observations(server: FhirTestServer) -> dict[str, Any]:
    """The fixture request with its observations left for the service to fetch from `server`."""
    request = hook_request()
    request["prefetch"].pop("observations")
    request["fhirServer"] = server.base_url
    return request


def fetched(api: Api, server: FhirTestServer) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = api.client.post(SERVICE, json=without_observations(server), timeout=30)
    return response, time.monotonic() - began


@pytest.mark.parametrize(
    ("mode", "options", "code"),
    [
        ("next_loop", {"page_size": 1}, "incomplete"),
        ("slow", {"delay": 3 * BUDGET}, "timeout"),
        ("garbage", {}, "incomplete"),
        ("status", {"status": 500}, "incomplete"),
        ("hang", {}, "timeout"),
        ("drip", {"delay": 0.2}, "timeout"),
    ],
    ids=["next-link-loop", "slow", "garbage", "http-500", "no-answer", "drip"],
)
def test_a_misbehaving_fhir_server_gives_412_within_the_budget(
    api: Api, mode: str, options: dict[str, Any], code: str
) -> None:
    observations = [r for r in _fixture_resources() if r["resourceType"] == "Observation"]
    with FhirTestServer(observations, mode=mode, fault_on="Observation", **options) as server:
        response, seconds = fetched(api, server)
    found = problem(response, 412)
    assert found["expression"] == ["prefetch.observations"]
    assert found["code"] == code
    FIGURES.setdefault("fhir_faults", {})[mode] = {"status": 412, "seconds": round(seconds, 2)}
    assert seconds < BUDGET + 5  # bounded: the budget plus slack for a loaded CI machine


def test_a_bad_prefetch_value_is_400_before_anything_is_fetched(api: Api) -> None:
    with FhirTestServer(_fixture_resources()) as server:
        request = without_observations(server)
        request["prefetch"]["conditions"] = 42
        found = problem(api.client.post(SERVICE, json=request, timeout=30), 400)
        assert server.requests == []
    assert found["expression"] == ["prefetch.conditions"]


def test_a_fhir_server_that_is_not_there_gives_412(api: Api) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = hook_request()
    request["prefetch"].pop("observations")
    request["fhirServer"] = f"http://127.0.0.1:{port}/fhir"
    found = problem(api.client.post(SERVICE, json=request, timeout=30), 412)
    assert found["expression"] == ["prefetch.observations"]


def _fixture_resources() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for key in PREFETCH_KEYS:
        value = hook_request()["prefetch"].get(key)
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry", [])]
        elif isinstance(value, dict):
            resources.append(value)
    return resources


def test_report_the_figures() -> None:
    """Print what the classics measured (shown by `pytest -rA`) and keep it in bench/results/hardening.json."""
    if not FIGURES:
        pytest.skip("no measuring test ran")
    print(orjson.dumps(FIGURES, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    record_figures("classics", FIGURES)
