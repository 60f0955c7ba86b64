"""Security over real HTTP: the rest of the JWT matrix, logs without secrets or PHI, bare error bodies,
security headers, and the dependency audit.

The JWT failures already in tests/test_api_auth.py (missing, not-bearer, not-a-jwt, expired, issued in
the future, wrong or other-endpoint audience, unknown issuer, bad signature, tampered payload, alg none,
HS256, unknown kid, lifetime too long, replay, replay across workers) are not repeated here; SECURITY.md
lists both files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastapi
import httpx
import jwt
import pydantic
import pytest
import starlette
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cds.evaluation import Evaluation, Evaluator
from cds.logs import JsonFormatter
from cds.rulepack import RulePack
from cds.store import Store, StoreUnavailableError
from tests.support.api import (
    NOW,
    Api,
    Issuer,
    dev_settings,
    hook_request,
    prefetch_resources,
    running,
    secure_settings,
)
from tests.support.fhir_server import FhirTestServer
from tests.test_server import CDS, ROOT, free_port, wait_until_up

SERVICE = "/cds-services/cramp-assessment"
LEEWAY = 60  # the default CDS_JWT_LEEWAY_SECONDS

# Distinctive secrets and PHI: none of these may appear in any log line.
ACCESS_TOKEN = "at-SECRET-9b1e5c3f77d04e2a"
PATIENT_ID = "pt-Q7XZ-4471"
FAMILY = "Zebrowskaya"
GIVEN = "Quixotica"
BIRTH_DATE = "1967-08-03"  # the fixture's, kept so the cards stay the same


# --------------------------------------------------------------------------- helpers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(issuer: Issuer, audience: str, *, at: datetime = NOW, **changes: Any) -> dict[str, Any]:
    now = int(at.timestamp())
    claims: dict[str, Any] = {
        "iss": issuer.iss,
        "sub": "cds-client",
        "aud": audience,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def signed(issuer: Issuer, claims: dict[str, Any], *, key: Any = None, **headers: Any) -> str:
    header = {"kid": issuer.kid, "typ": "JWT", **headers}
    return jwt.encode(claims, issuer.key if key is None else key, algorithm="ES384", headers=header)


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWS built by hand: PyJWT refuses to HMAC with a PEM key, an attacker does not."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def public_pem(issuer: Issuer) -> bytes:
    return issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["issue"][0]["diagnostics"] == "authentication failed"


class JwksServer:
    """Serve JWK Sets on loopback: /good.json (the issuer's keys) and /evil.json (an attacker's)."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        documents_ = {path: json.dumps(doc).encode() for path, doc in documents.items()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = documents_.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- the JWT matrix


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def attacker() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def jwks(issuer: Issuer, attacker: ec.EllipticCurvePrivateKey) -> Iterator[JwksServer]:
    evil = jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    documents = {
        "/good.json": issuer.jwks(),
        "/evil.json": {"keys": [{**evil, "kid": issuer.kid, "use": "sig", "alg": "ES384"}]},
    }
    with JwksServer(documents) as server:
        yield server


@pytest.fixture
def api(tmp_path: Path, pack: RulePack, issuer: Issuer, jwks: JwksServer) -> Iterator[Api]:
    """Production settings whose issuer allows one `jku`: the loopback URL of its own key set."""
    trusted = tmp_path / "trusted-with-jku.json"
    trusted.write_text(
        json.dumps(
            {"issuers": [{"iss": issuer.iss, "jwks": issuer.jwks(), "jku_allow": [jwks.url("/good.json")]}]}
        )
    )
    settings = secure_settings(tmp_path, issuer, trusted_issuers=trusted)
    with running(settings, evaluator=Evaluator(pack)) as api:
        yield api


Case = Callable[[Issuer, str, ec.EllipticCurvePrivateKey, JwksServer], str]
SECONDS = timedelta(seconds=1)
T = int(NOW.timestamp())

REFUSED: dict[str, Case] = {
    "not-yet-valid": lambda i, aud, evil, j: signed(i, claims_for(i, aud, nbf=T + LEEWAY + 30)),
    "expired-beyond-the-leeway": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, iat=T - 400, exp=T - LEEWAY - 5)
    ),
    "issued-beyond-the-leeway-ahead": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, iat=T + LEEWAY + 5, exp=T + LEEWAY + 300)
    ),
    "jku-not-allow-listed": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud), key=evil, jku=j.url("/evil.json")
    ),
    "jku-allow-listed-host-other-path": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud), key=evil, jku=j.url("/evil.json?/good.json")
    ),
    "embedded-jwk-header": lambda i, aud, evil, j: signed(
        i,
        claims_for(i, aud),
        key=evil,
        jwk=jwt.algorithms.ECAlgorithm.to_jwk(evil.public_key(), as_dict=True),
    ),
    "hmac-with-the-public-pem-as-secret": lambda i, aud, evil, j: hmac_token(
        {"alg": "HS256", "typ": "JWT", "kid": i.kid}, claims_for(i, aud), public_pem(i)
    ),
    "hmac-with-the-public-jwk-as-secret": lambda i, aud, evil, j: hmac_token(
        {"alg": "HS256", "typ": "JWT", "kid": i.kid},
        claims_for(i, aud),
        json.dumps(i.jwks()["keys"][0]).encode(),
    ),
    "alg-None-mixed-case": lambda i, aud, evil, j: (
        f"{b64(json.dumps({'alg': 'None', 'kid': i.kid}).encode())}."
        f"{b64(json.dumps(claims_for(i, aud)).encode())}."
    ),
    "alg-ES512-not-allowed": lambda i, aud, evil, j: jwt.encode(
        claims_for(i, aud), ec.generate_private_key(ec.SECP521R1()), algorithm="ES512", headers={"kid": i.kid}
    ),
    "crit-header": lambda i, aud, evil, j: signed(i, claims_for(i, aud), crit=["exp"]),
    "no-kid": lambda i, aud, evil, j: jwt.encode(claims_for(i, aud), i.key, algorithm="ES384"),
    "no-jti": lambda i, aud, evil, j: signed(i, claims_for(i, aud, jti=None)),
    "no-exp": lambda i, aud, evil, j: signed(i, claims_for(i, aud, exp=None)),
    "no-aud": lambda i, aud, evil, j: signed(i, claims_for(i, aud, aud=None)),
    "aud-list-without-us": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, aud=["https://a", "https://b"])
    ),
    "exp-not-a-number": lambda i, aud, evil, j: signed(i, claims_for(i, aud, exp="tomorrow")),
    "header-not-json": lambda i, aud, evil, j: f"{b64(b'{not json')}.{b64(b'{}')}.{b64(b'sig')}",
    "payload-not-base64": lambda i, aud, evil, j: signed(i, claims_for(i, aud)).split(".")[0] + ".%%%.abc",
    "four-segments": lambda i, aud, evil, j: signed(i, claims_for(i, aud)) + ".extra",
    "empty-signature": lambda i, aud, evil, j: signed(i, claims_for(i, aud)).rsplit(".", 1)[0] + ".",
}

ACCEPTED: dict[str, Case] = {
    "expired-within-the-leeway": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, iat=T - 300, exp=T - LEEWAY + 10)
    ),
    "issued-within-the-leeway-ahead": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, iat=T + LEEWAY - 10, exp=T + 300)
    ),
    "not-before-within-the-leeway": lambda i, aud, evil, j: signed(
        i, claims_for(i, aud, nbf=T + LEEWAY - 10)
    ),
    "jku-allow-listed": lambda i, aud, evil, j: signed(i, claims_for(i, aud), jku=j.url("/good.json")),
    "aud-list-naming-us": lambda i, aud, evil, j: signed(i, claims_for(i, aud, aud=["https://other", aud])),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_bad_token_is_401(
    api: Api, issuer: Issuer, attacker: ec.EllipticCurvePrivateKey, jwks: JwksServer, case: str
) -> None:
    token = REFUSED[case](issuer, api.url(SERVICE), attacker, jwks)
    assert_401(api.client.post(SERVICE, json=hook_request(), headers=bearer(token)))


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_a_good_token_at_the_edges_is_accepted(
    api: Api, issuer: Issuer, attacker: ec.EllipticCurvePrivateKey, jwks: JwksServer, case: str
) -> None:
    token = ACCEPTED[case](issuer, api.url(SERVICE), attacker, jwks)
    response = api.client.post(SERVICE, json=hook_request(), headers=bearer(token))
    assert response.status_code == 200, response.text


def test_a_token_replayed_on_feedback_after_the_hook_is_401(api: Api, issuer: Issuer) -> None:
    """One jti, two endpoints: the audience differs, so the jti is what stops the second use."""
    token = signed(issuer, claims_for(issuer, api.url(SERVICE)))
    assert api.client.post(SERVICE, json=hook_request(), headers=bearer(token)).status_code == 200
    assert_401(api.client.post(SERVICE, json=hook_request(), headers=bearer(token)))
    assert_401(api.client.get("/cds-services", headers=bearer(token)))


# --------------------------------------------------------------------------- what is logged


def phi_request() -> dict[str, Any]:
    """The fixture hook request about a patient with a distinctive id and name, with an access token."""
    text = json.dumps(hook_request()).replace("hook-patient", PATIENT_ID)
    text = text.replace("Hookham", FAMILY).replace("Beatrice", GIVEN)
    request: dict[str, Any] = json.loads(text)
    request["fhirAuthorization"] = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    return request


SECRETS = (ACCESS_TOKEN, PATIENT_ID, FAMILY, GIVEN, BIRTH_DATE)


def assert_clean(text: str, jwts: list[str]) -> None:
    for secret in (*SECRETS, *jwts):
        assert secret not in text, f"{secret[:12]}... appears in the log"
    for jwt_text in jwts:  # not even the signature part
        assert jwt_text.rsplit(".", 1)[1] not in text


def assert_security_headers(response: httpx.Response, *, real_server: bool = False) -> None:
    """The headers of cds.api.app.SECURITY_HEADERS; `server` is checked against `cds serve` only (the
    in-process test server of tests/support/api.py keeps uvicorn's default)."""
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    if real_server:
        assert "server" not in headers
    assert "x-powered-by" not in headers


@pytest.mark.slow
def test_a_real_server_logs_no_token_jwt_or_patient_on_any_path(tmp_path: Path, issuer: Issuer) -> None:
    """`cds serve` at DEBUG with uvicorn's own logging: 200, fetched prefetch, 412, 401, replay, 400, 413."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        "CDS_PATIENT_HASH_KEY": "a-real-secret-for-this-test",
        "CDS_TRUSTED_ISSUERS": str(issuer.write_trusted_issuers(tmp_path / "trusted.json")),
        "CDS_PUBLIC_BASE_URL": base,
        "CDS_LOG_LEVEL": "DEBUG",
        # Nothing here waits for the budget to run out (the broken server answers an error at once),
        # so it is roomy: 1 s was too little for fetching five keys under a loaded parallel run (a 412).
        "CDS_FHIR_BUDGET_SECONDS": "10",
        "CDS_MAX_BODY_BYTES": "65536",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(CDS), "serve", "--port", str(port), "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    jwts: list[str] = []

    def token(path: str, key: Any = None) -> dict[str, str]:
        minted = signed(issuer, claims_for(issuer, base + path, at=datetime.now(UTC)), key=key)
        jwts.append(minted)
        return bearer(minted)

    resources = prefetch_resources(phi_request())
    statuses: list[int] = []
    try:
        wait_until_up(base, process)
        with (
            FhirTestServer(resources, require_token=ACCESS_TOKEN) as fhir,
            FhirTestServer(
                resources, require_token=ACCESS_TOKEN, mode="status", fault_on="Condition"
            ) as broken,
            httpx.Client(base_url=base, timeout=30) as client,
        ):
            full = phi_request()
            full["fhirServer"] = fhir.base_url
            first = client.post(SERVICE, json=full, headers=token(SERVICE))
            assert first.status_code == 200
            fetched = phi_request()
            fetched["fhirServer"] = fhir.base_url
            del fetched["prefetch"]
            responses = [first, client.post(SERVICE, json=fetched, headers=token(SERVICE))]
            assert responses[-1].status_code == 200
            assert fhir.requests
            failing = phi_request()
            failing["fhirServer"] = broken.base_url
            del failing["prefetch"]["conditions"]
            responses.append(client.post(SERVICE, json=failing, headers=token(SERVICE)))
            responses.append(
                client.post(
                    SERVICE, json=full, headers=token(SERVICE, key=ec.generate_private_key(ec.SECP384R1()))
                )
            )
            replayed = jwts[0]
            responses.append(client.post(SERVICE, json=full, headers=bearer(replayed)))
            bad = phi_request()
            bad["prefetch"]["patient"]["birthDate"] = f"{GIVEN} {FAMILY}"
            responses.append(client.post(SERVICE, json=bad, headers=token(SERVICE)))
            responses.append(
                client.post(
                    SERVICE,
                    content=json.dumps(full | {"pad": "x" * 70_000}).encode(),
                    headers=token(SERVICE) | {"Content-Type": "application/json"},
                )
            )
            card = first.json()["cards"][0]["uuid"]
            feedback = {
                "feedback": [
                    {
                        "card": card,
                        "outcome": "overridden",
                        "outcomeTimestamp": NOW.isoformat(),
                        "overrideReason": {"userComment": f"{GIVEN} {FAMILY} {PATIENT_ID} said no"},
                    }
                ]
            }
            responses.append(
                client.post(SERVICE + "/feedback", json=feedback, headers=token(SERVICE + "/feedback"))
            )
            responses.append(client.get("/healthz"))
            responses.append(client.get("/no-such-path"))
            statuses = [r.status_code for r in responses]
            for response in responses:
                assert_security_headers(response, real_server=True)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert statuses == [200, 200, 412, 401, 401, 400, 413, 200, 200, 404]
    log = out + err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    logged_statuses = {line.get("status") for line in lines if line.get("event") == "request"}
    assert {200, 400, 401, 404, 412, 413} <= logged_statuses  # the logs were really captured
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert_clean(log, jwts)


class ExplodingEvaluator(Evaluator):
    def evaluate_prefetch(self, *args: Any, **kwargs: Any) -> Evaluation:
        raise RuntimeError(f"{GIVEN} {FAMILY} {PATIENT_ID} {ACCESS_TOKEN} at /work/main/cds/evaluation.py")


class DownStore(Store):
    def record_feedback(self, **kwargs: Any) -> int:
        raise StoreUnavailableError(f"cannot reach postgresql://user:pw@db/{PATIENT_ID}")


def test_500_and_503_paths_log_no_token_jwt_or_patient(
    tmp_path: Path, pack: RulePack, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger (root at DEBUG, uvicorn's included) while a request fails unexpectedly and the store is down."""
    store = DownStore(f"sqlite:///{tmp_path / 's.sqlite3'}")
    settings = secure_settings(tmp_path, issuer)
    caplog.set_level(logging.DEBUG)
    jwts: list[str] = []
    with running(settings, evaluator=ExplodingEvaluator(pack), store=store) as api:
        minted = signed(issuer, claims_for(issuer, api.url(SERVICE)))
        jwts.append(minted)
        crashed = api.client.post(SERVICE, json=phi_request(), headers=bearer(minted))
        assert crashed.status_code == 500
        feedback = {
            "feedback": [
                {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}
            ]
        }
        minted = signed(issuer, claims_for(issuer, api.url(SERVICE + "/feedback")))
        jwts.append(minted)
        down = api.client.post(SERVICE + "/feedback", json=feedback, headers=bearer(minted))
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
    store.close()
    formatted = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "request.failed" in formatted
    assert_clean(formatted + caplog.text, jwts)
    for response in (crashed, down):
        assert_security_headers(response)
        assert_bare_body(response)


# --------------------------------------------------------------------------- error bodies and headers

LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|/work/|/usr/|site-packages|uvicorn|starlette|fastapi|pydantic|"
    r"sqlalchemy|psycopg|python|CPython|postgresql://",
    re.IGNORECASE,
)
VERSIONS = (
    fastapi.__version__,
    starlette.__version__,
    uvicorn.__version__,
    pydantic.VERSION,
    sys.version.split()[0],
)


def assert_bare_body(response: httpx.Response) -> None:
    body = response.text
    assert response.headers["content-type"].startswith("application/json"), body
    assert response.json()["resourceType"] == "OperationOutcome"
    assert not LEAKS.search(body), body
    for version in VERSIONS:
        assert version not in body


def test_every_error_body_is_bare_and_every_response_has_the_headers(tmp_path: Path, pack: RulePack) -> None:
    settings = dev_settings(tmp_path, max_body_bytes=65536)
    with running(settings, evaluator=Evaluator(pack)) as api:
        c = api.client
        no_prefetch = hook_request()
        del no_prefetch["prefetch"]["patient"]
        errors = {
            "not-json": c.post(SERVICE, content=b"{nope", headers={"Content-Type": "application/json"}),
            "invalid-fhir": c.post(SERVICE, json=phi_request() | {"hook": 7}),
            "unknown-service": c.post("/cds-services/nope", json=hook_request()),
            "unknown-path": c.get("/etc/passwd"),
            "wrong-method": c.delete(SERVICE),
            "prefetch-missing": c.post(SERVICE, json=no_prefetch),
            "too-large": c.post(SERVICE, content=b" " * 70_000, headers={"Content-Type": "application/json"}),
            "bad-query": c.post("/evaluate?now=yesterday", json={"resourceType": "Bundle"}),
            "unknown-card": c.post(
                SERVICE + "/feedback",
                json={
                    "feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}]
                },
            ),
        }
        ok = [c.get(path) for path in ("/healthz", "/readyz", "/metrics", "/cds-services", "/openapi.json")]
        ok.append(c.post(SERVICE, json=hook_request()))
        docs = c.get("/docs")
    for name, response in errors.items():
        assert response.status_code >= 400, name
        assert_bare_body(response)
        assert_security_headers(response)
    for response in ok:
        assert response.status_code == 200
        assert_security_headers(response)
    assert docs.status_code == 200
    assert docs.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]


def test_cors_preflight_gets_the_headers_too(tmp_path: Path, pack: RulePack) -> None:
    origin = "https://sandbox.cds-hooks.org"
    with running(dev_settings(tmp_path, cors_origins=(origin,)), evaluator=Evaluator(pack)) as api:
        preflight = api.client.options(
            SERVICE, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["x-content-type-options"] == "nosniff"
    assert preflight.headers["cache-control"] == "no-store"


# --------------------------------------------------------------------------- dependency audit


def test_no_installed_dependency_has_a_known_vulnerability() -> None:
    """pip-audit against PyPI's advisory data (osv.dev is not reachable here); skips when PyPI is not."""
    audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if audit is None:
        pytest.skip("pip-audit is not installed (pip install -e '.[dev]')")
    try:
        httpx.get("https://pypi.org/pypi/pip/json", timeout=5).raise_for_status()
    except httpx.HTTPError:
        pytest.skip("PyPI is not reachable")
    result = subprocess.run(
        [
            audit,
            "--vulnerability-service",
            "pypi",
            "--skip-editable",
            "--progress-spinner",
            "off",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    found = {d["name"]: [v["id"] for v in d["vulns"]] for d in report["dependencies"] if d.get("vulns")}
    assert not found, f"known vulnerabilities: {found}"
    audited = [d for d in report["dependencies"] if "skip_reason" not in d]
    if not audited:
        pytest.skip(
            f"PyPI knows none of the {len(report['dependencies'])} installed versions: nothing audited"
        )
