"""Run the real app under uvicorn on a free loopback port, and mint real JWTs for it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from cds.api.app import create_app
from cds.api.deps import Runtime
from cds.settings import Settings

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"
HASH_KEY = "test-patient-hash-key"
# The fixtures' evaluation day, seen from a zone far from UTC (as in tests/conftest.py).
NOW = datetime(2026, 6, 1, 21, 30, tzinfo=ZoneInfo("Pacific/Auckland"))


def dev_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """--dev settings (no JWT) with a private SQLite store under tmp_path."""
    values: dict[str, Any] = {"dev": True, "database_url": f"sqlite:///{tmp_path / 'cds.sqlite3'}"}
    return Settings(**(values | overrides))


def secure_settings(tmp_path: Path, issuer: Issuer, **overrides: Any) -> Settings:
    """Production-like settings: JWTs from `issuer` only, a real hash key, a private SQLite store, and
    a free loopback port whose URL is the public base URL (`running` serves on that port)."""
    port = free_port()
    values: dict[str, Any] = {
        "dev": False,
        "port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "database_url": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        "patient_hash_key": HASH_KEY,
        "trusted_issuers": issuer.write_trusted_issuers(tmp_path / "trusted-issuers.json"),
    }
    return Settings(**(values | overrides))


@dataclass
class Api:
    """A running app: its base URL, an HTTP client bound to it, and its runtime (store, metrics...)."""

    base: str
    client: httpx.Client
    app: FastAPI

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def url(self, path: str) -> str:
        return self.base + path


@contextmanager
def running(settings: Settings, **kwargs: Any) -> Iterator[Api]:
    """create_app(settings, clock=NOW, **kwargs) served by uvicorn, with an httpx client."""
    kwargs.setdefault("clock", lambda: NOW)
    app = create_app(settings, **kwargs)
    # secure_settings names a free loopback port as the public URL: serve there (else any free port).
    own = settings.public_base_url == f"http://127.0.0.1:{settings.port}"
    port = settings.port if own else 0
    with serve(app, port=port) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield Api(base=base, client=client, app=app)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(app: FastAPI, *, port: int = 0) -> Iterator[str]:
    """Start `app` with uvicorn in a thread on 127.0.0.1:<port, free by default>; yield its base URL; stop it.

    As `cds serve` does, X-Forwarded-* headers are not trusted from anyone.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        ws="none",
        access_log=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start (see the log above)")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def hook_request() -> dict[str, Any]:
    """A fresh copy of fixtures/hook-request.json (patient-view, full prefetch)."""
    document: dict[str, Any] = json.loads((FIXTURES / "hook-request.json").read_text(encoding="utf-8"))
    return document


def prefetch_resources(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource of a request's prefetch, to load a FHIR test server with."""
    found: list[dict[str, Any]] = []
    for value in request["prefetch"].values():
        if value is None:
            continue
        if value["resourceType"] == "Bundle":
            found.extend(entry["resource"] for entry in value.get("entry", []))
        else:
            found.append(value)
    return found


def order_sign_request(*, medication: dict[str, Any], status: str = "draft") -> dict[str, Any]:
    """The fixture patient's prefetch on an order-sign hook whose draft order is `medication`."""
    request = hook_request()
    patient_id = request["context"]["patientId"]
    request["hook"] = "order-sign"
    request["hookInstance"] = str(uuid.uuid4())
    request["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-1",
                    "status": status,
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "medicationCodeableConcept": medication,
                }
            }
        ],
    }
    return request


CALCIUM_CARBONATE = {
    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1897"}],
    "text": "Calcium carbonate 500 mg tablet",
}
CALCIUM_BY_TEXT = {"text": "Calcium citrate 950 mg"}
ATORVASTATIN = {
    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "83367"}],
    "text": "atorvastatin",
}


# --------------------------------------------------------------------------- JWTs


@dataclass
class Issuer:
    """A CDS client with a real P-384 key; `token` signs whatever claims a test needs."""

    iss: str = "https://ehr.example.org"
    kid: str = "ehr-key-1"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES384"}]}

    def write_trusted_issuers(self, path: Path) -> Path:
        path.write_text(json.dumps({"issuers": [{"iss": self.iss, "jwks": self.jwks()}]}), encoding="utf-8")
        return path

    def token(
        self,
        aud: str,
        *,
        now: datetime,
        lifetime: timedelta = timedelta(minutes=5),
        iss: str | None = None,
        jti: str | None = None,
        key: Any = None,
        alg: str = "ES384",
        kid: str | None = None,
    ) -> str:
        claims = {
            "iss": iss or self.iss,
            "sub": "cds-client",
            "aud": aud,
            "iat": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "jti": jti or str(uuid.uuid4()),
        }
        signing_key = self.key if key is None else key
        return jwt.encode(claims, signing_key, algorithm=alg, headers={"kid": kid or self.kid, "typ": "JWT"})


def wait_for_request_log(records: Callable[[], list[logging.LogRecord]], timeout: float = 5.0) -> None:
    """Wait until the `request` line of a call is logged (RequestLog writes it after the response left)."""
    deadline = time.monotonic() + timeout
    while not any(r.getMessage() == "request" for r in records()):
        if time.monotonic() > deadline:
            raise AssertionError("no request log line")
        time.sleep(0.01)
