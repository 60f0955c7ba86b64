"""Small real FHIR REST server on loopback for tests, with fault modes."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

MODES = ("status", "garbage", "slow", "hang", "drip", "next_loop", "foreign_next")

# Search parameters whose value is a token matched against these CodeableConcept elements.
_CODE_ELEMENTS = ("code", "medicationCodeableConcept")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str  # path and query string as sent
    authorization: str | None


def _codings(resource: dict[str, Any], element: str) -> list[dict[str, Any]]:
    value = resource.get(element)
    if isinstance(value, dict):
        codings = value.get("coding", [])
        return [c for c in codings if isinstance(c, dict)]
    return []


def _token_matches(codings: list[dict[str, Any]], tokens: list[str]) -> bool:
    for token in tokens:
        system, sep, code = token.rpartition("|")
        for coding in codings:
            if sep and system and coding.get("system") != system:
                continue
            if code and coding.get("code") != code:
                continue
            return True
    return False


def _references_patient(resource: dict[str, Any], patient_id: str) -> bool:
    wanted = patient_id if patient_id.startswith("Patient/") else f"Patient/{patient_id}"
    for element in ("subject", "patient"):
        ref = resource.get(element)
        if isinstance(ref, dict) and ref.get("reference") == wanted:
            return True
    return resource.get("resourceType") == "Patient" and f"Patient/{resource.get('id')}" == wanted


class FhirTestServer:
    """Serve FHIR resources over HTTP on 127.0.0.1 from a background thread.

    ``mode`` selects a fault: ``status`` (answer ``status``), ``garbage`` (non-JSON body), ``slow``
    (wait ``delay`` seconds, then answer), ``hang`` (never answer until shutdown), ``drip`` (send
    headers, then one byte every ``delay`` seconds), ``next_loop`` (search next links point to the
    page itself), ``foreign_next`` (next links use another origin: ``localhost`` instead of the IP).
    ``fault_on`` limits the fault to request paths containing that text (e.g. ``"Observation"``).
    ``require_token`` answers 401 unless ``Authorization: Bearer <token>`` is sent.
    """

    def __init__(
        self,
        resources: list[dict[str, Any]] | None = None,
        *,
        mode: str | None = None,
        status: int = 500,
        delay: float = 1.0,
        require_token: str | None = None,
        page_size: int = 10,
        fault_on: str | None = None,
        base_path: str = "/fhir",
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.status = status
        self.delay = delay
        self.require_token = require_token
        self.page_size = page_size
        self.fault_on = fault_on
        self.base_path = base_path.rstrip("/")
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        for resource in resources or []:
            self.add(resource)
        self.requests: list[RecordedRequest] = []
        self._snapshots: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, resource: dict[str, Any]) -> None:
        self.resources[(resource["resourceType"], resource["id"])] = resource

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def start(self) -> FhirTestServer:
        handler = type("Handler", (_Handler,), {"server_obj": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fhir-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Give handler threads (woken by _stop) a bounded time to finish and close their sockets.
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=5)

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- helpers used by the handler ---------------------------------------------------------

    def record(self, method: str, path: str, authorization: str | None) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, authorization))
            self._active += 1

    def done(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when the sleep ran to the end."""
        return not self._stop.wait(seconds)

    def faulty(self, path: str) -> bool:
        return self.mode is not None and (self.fault_on is None or self.fault_on in path)

    def search(self, resource_type: str, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        def values(name: str) -> list[str]:
            return [v for raw in params.get(name, []) for v in raw.split(",") if v]

        found = []
        for (rtype, _), resource in self.resources.items():
            if rtype != resource_type:
                continue
            patients = values("patient") + values("subject")
            if patients and not any(_references_patient(resource, p) for p in patients):
                continue
            ids = values("_id")
            if ids and resource.get("id") not in ids:
                continue
            codes = values("code")
            if codes and not any(_token_matches(_codings(resource, e), codes) for e in _CODE_ELEMENTS):
                continue
            clinical = values("clinical-status")
            if clinical and not _token_matches(_codings(resource, "clinicalStatus"), clinical):
                continue
            statuses = values("status")
            if statuses and resource.get("status") not in statuses:
                continue
            found.append(resource)
        return found

    def snapshot(self, matches: list[dict[str, Any]]) -> str:
        sid = uuid.uuid4().hex
        with self._lock:
            self._snapshots[sid] = matches
        return sid

    def page(
        self, sid: str, offset: int, count: int, self_url: str, *, foreign: bool, loop: bool
    ) -> dict[str, Any] | None:
        with self._lock:
            matches = self._snapshots.get(sid)
        if matches is None:
            return None
        chunk = matches[offset : offset + count]
        links = [{"relation": "self", "url": self_url}]
        if offset + count < len(matches):
            query = urlencode({"_getpages": sid, "_offset": offset + count, "_count": count})
            host = f"http://localhost:{self.port}" if foreign else f"http://127.0.0.1:{self.port}"
            links.append({"relation": "next", "url": f"{host}{self.base_path}?{query}"})
        if loop:
            links = [{"relation": "self", "url": self_url}, {"relation": "next", "url": self_url}]
        return {
            "resourceType": "Bundle",
            "id": sid,
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in chunk
            ],
        }


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class _Handler(BaseHTTPRequestHandler):
    server_obj: FhirTestServer
    timeout = 10  # socket timeout so an idle client cannot pin a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server_obj
        srv.record("GET", self.path, self.headers.get("Authorization"))
        try:
            self._serve(srv)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away, which tests do on purpose
        finally:
            srv.done()

    def _send(self, status: int, body: bytes, content_type: str = "application/fhir+json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode())

    def _serve(self, srv: FhirTestServer) -> None:
        if (
            srv.require_token is not None
            and self.headers.get("Authorization") != f"Bearer {srv.require_token}"
        ):
            self._send_json(401, _outcome("login", "missing or wrong bearer token"))
            return
        if srv.faulty(self.path) and not self._fault(srv):
            return
        split = urlsplit(self.path)
        if not (split.path == srv.base_path or split.path.startswith(srv.base_path + "/")):
            self._send_json(404, _outcome("not-found", "not under the FHIR base"))
            return
        parts = [p for p in split.path[len(srv.base_path) :].split("/") if p]
        params = parse_qs(split.query)
        self_url = f"http://127.0.0.1:{srv.port}{self.path}"
        foreign = srv.faulty(self.path) and srv.mode == "foreign_next"
        loop = srv.faulty(self.path) and srv.mode == "next_loop"
        if not parts and "_getpages" in params:
            count = int(params.get("_count", [str(srv.page_size)])[0])
            offset = int(params.get("_offset", ["0"])[0])
            bundle = srv.page(params["_getpages"][0], offset, count, self_url, foreign=foreign, loop=loop)
            if bundle is None:
                self._send_json(410, _outcome("not-found", "search snapshot expired"))
            else:
                self._send_json(200, bundle)
        elif len(parts) == 1:
            count = int(params.get("_count", [str(srv.page_size)])[0])
            sid = srv.snapshot(srv.search(parts[0], params))
            bundle = srv.page(sid, 0, count, self_url, foreign=foreign, loop=loop)
            assert bundle is not None
            self._send_json(200, bundle)
        elif len(parts) == 2:
            resource = srv.resources.get((parts[0], parts[1]))
            if resource is None:
                self._send_json(404, _outcome("not-found", f"{parts[0]} not found"))
            else:
                self._send_json(200, resource)
        else:
            self._send_json(400, _outcome("not-supported", "unsupported interaction"))

    def _fault(self, srv: FhirTestServer) -> bool:
        """Apply the fault mode; True when the request should then be served normally."""
        mode = srv.mode
        if mode == "status":
            self._send_json(srv.status, _outcome("exception", "injected failure"))
            return False
        if mode == "garbage":
            self._send(200, b"<html><body>Service Unavailable</body></html>")
            return False
        if mode == "slow":
            return srv.sleep(srv.delay)
        if mode == "hang":
            srv.sleep(3600)
            self.close_connection = True
            return False
        if mode == "drip":
            body = json.dumps(_outcome("informational", "x" * 1000)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if not srv.sleep(srv.delay):
                    break
            self.close_connection = True
            return False
        return True  # next_loop and foreign_next alter the Bundle built by the normal path
