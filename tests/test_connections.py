"""Connection hygiene and honest metrics against a real `cds serve` over loopback (cds.connections).

A connection that never finishes its headers is closed with a 408 within CDS_HEADER_TIMEOUT_SECONDS; a
body that stalls gets a readable 408 within CDS_BODY_TIMEOUT_SECONDS; a 20 MB body gets a readable 413
even from clients that write the whole body before reading (http.client, urllib); a client that hangs
up mid-body is counted and logged as 499 at INFO, never as a 500 or an ERROR.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.test_server import CDS, free_port, wait_until_up

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
SLACK = 5.0  # a loaded two-core machine
MB = 1024 * 1024


@dataclass
class Served:
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def requests_total(self) -> dict[str, float]:
        """cds_http_requests_total by status, summed over routes and methods."""
        text = httpx.get(self.base + "/metrics", timeout=10).text
        found: dict[str, float] = {}
        for status, value in re.findall(r'^cds_http_requests_total\{.*status="(\d+)".*\} (\S+)$', text, re.M):
            found[status] = found.get(status, 0.0) + float(value)
        return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("connections")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {
        "CDS_DATABASE_URL": f"sqlite:///{tmp / 'cds.sqlite3'}",
        "CDS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "CDS_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp / "serve.log"
    with log.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            [str(CDS), "serve", "--dev", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}", process)
            yield Served(port=port, log=log)
        finally:
            process.terminate()
            process.wait(timeout=30)


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=60)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    began = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - began


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /evaluate HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\nHost"],
    ids=["nothing", "headers-never-finished", "header-line-cut"],
)
def test_a_connection_that_never_finishes_its_headers_is_closed_in_time(served: Served, sent: bytes) -> None:
    with connect(served) as sock:
        sock.sendall(sent)
        answer, seconds = read_until_closed(sock)
    assert seconds < HEADER_TIMEOUT + SLACK
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"CDS_HEADER_TIMEOUT_SECONDS" in answer


def test_headers_sent_slowly_but_in_time_are_served(served: Served) -> None:
    with connect(served) as sock:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(part)
            time.sleep(HEADER_TIMEOUT / 4)
        answer, _ = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_serves_requests_past_the_header_timeout(served: Served) -> None:
    """The header clock starts per request: a connection used now and then is not cut."""
    with httpx.Client(base_url=served.base, timeout=30) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT * 0.8)


def test_a_body_that_stalls_is_a_readable_408(served: Served) -> None:
    head = (
        b"POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with connect(served) as sock:
        sock.sendall(head + b'{"resourceType": ')
        answer, seconds = read_until_closed(sock)
    assert seconds < BODY_TIMEOUT + SLACK
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408 ")
    issue = json.loads(body)["issue"][0]
    assert issue["code"] == "timeout"
    assert "CDS_BODY_TIMEOUT_SECONDS" in issue["diagnostics"]


BIG = b'{"resourceType": "Bundle", "type": "collection", "entry": [], "x": "' + b"x" * (20 * MB) + b'"}'


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
@pytest.mark.parametrize("path", ["/evaluate", "/cds-services/cramp-assessment"])
def test_a_20_mb_body_from_http_client_gets_a_readable_413(
    served: Served, path: str, connection: str
) -> None:
    """http.client writes the whole body before it reads; the 413 must still be there to read."""
    client = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        client.request(
            "POST", path, body=BIG, headers={"Content-Type": "application/json", "Connection": connection}
        )
        response = client.getresponse()
        body = response.read()
    finally:
        client.close()
    assert response.status == 413
    issue = json.loads(body)["issue"][0]
    assert issue["code"] == "too-long"
    assert "CDS_MAX_BODY_BYTES" in issue["diagnostics"]


def test_a_20_mb_body_from_urllib_gets_a_readable_413(served: Served) -> None:
    """urllib sends `Connection: close`: the server must not reset the connection under the answer."""
    request = urllib.request.Request(
        served.base + "/evaluate", data=BIG, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["issue"][0]["code"] == "too-long"


def test_a_client_that_hangs_up_mid_body_is_499_at_info_never_500(served: Served) -> None:
    before = served.requests_total()
    head = (
        b"POST /cds-services/cramp-assessment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20000\r\n\r\n"
    )
    with connect(served) as sock:
        sock.sendall(head + b" " * 10_000)
        time.sleep(0.3)  # the handler is reading the body
    deadline = time.monotonic() + 10
    while served.requests_total().get("499", 0) == before.get("499", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = served.requests_total()
    assert after.get("499", 0) == before.get("499", 0) + 1
    assert not any(status.startswith("5") for status in after), after
    lines = served.log_lines()
    assert not [line for line in lines if line.get("level") == "ERROR"], lines
    [logged] = [line for line in lines if line.get("event") == "request" and line.get("status") == 499]
    assert logged["level"] == "INFO"
