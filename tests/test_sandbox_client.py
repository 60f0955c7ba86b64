"""The CDS Hooks sandbox as a client, with authentication on, over real HTTP (issue 10).

`SandboxClient` signs exactly as https://sandbox.cds-hooks.org does: header `alg` ES384, `typ` JWT,
`kid` and `jku` = the sandbox's JWK Set URL; payload `iss` = the sandbox, `aud` = the exact URL called,
`iat`, `exp` = iat + 300 and a fresh `jti`, and no `sub` (CDS Hooks 2.0 defines none). Its key pair is
generated here; the service is told the public half as the sandbox's configured key, so it never has
to reach the internet.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.support.api import (
    CALCIUM_CARBONATE,
    NOW,
    Api,
    Issuer,
    hook_request,
    order_sign_request,
    running,
    secure_settings,
)
from tests.support.jwks import JwksServer, jwks_server
from tests.test_server import CDS, ROOT, free_port, wait_until_up

SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


@dataclass
class SandboxClient:
    """Signs and sends requests the way the CDS Hooks sandbox does."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    kid: str = field(default_factory=lambda: secrets.token_hex(16))

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES384"}]}

    def token(self, audience: str, *, now: datetime) -> str:
        iat = int(now.timestamp())
        payload = {"iss": SANDBOX, "aud": audience, "iat": iat, "exp": iat + 300, "jti": str(uuid.uuid4())}
        header = {"alg": "ES384", "typ": "JWT", "kid": self.kid, "jku": SANDBOX_JKU}
        return jwt.encode(payload, self.key, algorithm="ES384", headers=header)

    def headers(self, api: Api, path: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(api.url(path), now=NOW)}"}

    def drive(self, api: Api) -> dict[str, Any]:
        """Discovery, both hooks and feedback on a card, as the sandbox does; returns what it saw."""
        discovery = api.client.get("/cds-services", headers=self.headers(api, "/cds-services"))
        assert discovery.status_code == 200, discovery.text
        ids = {s["id"]: s["hook"] for s in discovery.json()["services"]}
        assert ids == {"cramp-assessment": "patient-view", "calcium-order-check": "order-sign"}

        path = "/cds-services/cramp-assessment"
        view = api.client.post(path, json=hook_request(), headers=self.headers(api, path))
        assert view.status_code == 200, view.text
        assert view.json()["cards"]

        order_path = "/cds-services/calcium-order-check"
        order = api.client.post(
            order_path,
            json=order_sign_request(medication=CALCIUM_CARBONATE),
            headers=self.headers(api, order_path),
        )
        assert order.status_code == 200, order.text
        assert order.json()["cards"]

        card = view.json()["cards"][0]
        feedback = {
            "feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}]
        }
        stored = api.client.post(
            path + "/feedback", json=feedback, headers=self.headers(api, path + "/feedback")
        )
        assert stored.status_code == 200, stored.text
        return {"view": view.json(), "order": order.json()}


def write_issuers(path: Path, entry: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"issuers": [{"iss": SANDBOX, "jku_allow": [SANDBOX_JKU], **entry}]}))
    return path


@pytest.fixture(scope="module")
def sandbox() -> SandboxClient:
    return SandboxClient()


@pytest.fixture
def keys_server() -> Iterator[JwksServer]:
    with jwks_server() as server:
        yield server


def test_the_sandbox_with_its_keys_configured_passes_discovery_hooks_and_feedback(
    tmp_path: Path, pack: RulePack, sandbox: SandboxClient
) -> None:
    """Offline: the sandbox's key is configured inline, so its `jku` is never fetched."""
    trusted = write_issuers(tmp_path / "trusted.json", {"jwks": sandbox.jwks()})
    settings = secure_settings(tmp_path, Issuer(), trusted_issuers=trusted)
    with running(settings, evaluator=Evaluator(pack)) as api:
        sandbox.drive(api)
        verifier = api.runtime.verifier
        assert verifier is not None
        assert verifier.key_loads(SANDBOX_JKU) == 0


def test_the_sandbox_keys_from_a_jwks_url_are_fetched_once_and_its_jku_never(
    tmp_path: Path, pack: RulePack, sandbox: SandboxClient, keys_server: JwksServer
) -> None:
    """Online-style configuration (a `jwks_url`, here on loopback): one fetch for the whole session."""
    url = keys_server.serve("/.well-known/jwks.json", sandbox.jwks())
    trusted = write_issuers(tmp_path / "trusted.json", {"jwks_url": url})
    settings = secure_settings(tmp_path, Issuer(), trusted_issuers=trusted)
    with running(settings, evaluator=Evaluator(pack)) as api:
        sandbox.drive(api)
        assert keys_server.count("/.well-known/jwks.json") == 1
        verifier = api.runtime.verifier
        assert verifier is not None
        assert verifier.key_loads(SANDBOX_JKU) == 0


def test_a_sandbox_token_signed_with_another_key_is_refused(
    tmp_path: Path, pack: RulePack, sandbox: SandboxClient
) -> None:
    trusted = write_issuers(tmp_path / "trusted.json", {"jwks": sandbox.jwks()})
    settings = secure_settings(tmp_path, Issuer(), trusted_issuers=trusted)
    impostor = SandboxClient(kid=sandbox.kid)
    with running(settings, evaluator=Evaluator(pack)) as api:
        response = api.client.get("/cds-services", headers=impostor.headers(api, "/cds-services"))
        assert response.status_code == 401


def test_the_shipped_trusted_issuers_file_trusts_the_public_sandbox() -> None:
    from cds.security import load_trusted_issuers

    shipped = Path(__file__).resolve().parent.parent / "deploy" / "trusted-issuers.yaml"
    (sandbox_entry,) = [i for i in load_trusted_issuers(shipped) if i.iss == SANDBOX]
    assert sandbox_entry.jwks_url == SANDBOX_JKU
    assert SANDBOX_JKU in sandbox_entry.jku_allow


def test_the_public_sandbox_keys_verify_online_when_reachable() -> None:
    """The shipped entry against the real sandbox's JWK Set (skips offline)."""
    try:
        response = httpx.get(SANDBOX_JKU, timeout=5)
        response.raise_for_status()
        keys = response.json()["keys"]
    except (httpx.HTTPError, ValueError, KeyError) as error:
        pytest.skip(f"the public sandbox's JWK Set cannot be read here ({type(error).__name__})")
    assert any(k.get("kty") == "EC" and k.get("crv") == "P-384" for k in keys)


FIXTURE_DAY = date(2026, 6, 1)  # the day the fixtures' results are recent on
ISO_DAY = re.compile(r"^(\d{4}-\d{2}-\d{2})")


def as_of_today(document: Any) -> Any:
    """The request with every date in its prefetch moved by (today - the fixtures' day), so that a
    server on the real clock sees results exactly as recent as the fixtures mean them to be."""
    shift = datetime.now(UTC).date() - FIXTURE_DAY

    def move(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: move(value) for key, value in node.items()}
        if isinstance(node, list):
            return [move(value) for value in node]
        if isinstance(node, str) and (match := ISO_DAY.match(node)):
            moved = date.fromisoformat(match.group(1)) + shift
            return moved.isoformat() + node[match.end() :]
        return node

    return {**document, "prefetch": move(document["prefetch"])}


@pytest.mark.slow
def test_the_sandbox_against_a_real_cds_serve_with_two_workers(
    tmp_path: Path, sandbox: SandboxClient
) -> None:
    """`cds serve` as deployed (2 workers, JWT on, CDS_PUBLIC_BASE_URL set), the sandbox's real clock."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        "CDS_PATIENT_HASH_KEY": "a-real-secret-for-this-test",
        "CDS_TRUSTED_ISSUERS": str(write_issuers(tmp_path / "trusted.json", {"jwks": sandbox.jwks()})),
        "CDS_PUBLIC_BASE_URL": base,
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [str(CDS), "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(base, process)
        with httpx.Client(base_url=base, timeout=30) as client:

            def headers(path: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {sandbox.token(base + path, now=datetime.now(UTC))}"}

            services = client.get("/cds-services", headers=headers("/cds-services"))
            assert services.status_code == 200, services.text
            view_path = "/cds-services/cramp-assessment"
            view = client.post(view_path, json=as_of_today(hook_request()), headers=headers(view_path))
            assert view.status_code == 200, view.text
            order_path = "/cds-services/calcium-order-check"
            order = client.post(
                order_path,
                json=as_of_today(order_sign_request(medication=CALCIUM_CARBONATE)),
                headers=headers(order_path),
            )
            assert order.status_code == 200, order.text
            cards = view.json()["cards"] + order.json()["cards"]
            assert cards
            uuid_ = cards[0]["uuid"]
            path = (
                view_path if uuid_ in {c["uuid"] for c in view.json()["cards"]} else order_path
            ) + "/feedback"
            feedback = {
                "feedback": [
                    {"card": uuid_, "outcome": "accepted", "outcomeTimestamp": datetime.now(UTC).isoformat()}
                ]
            }
            stored = client.post(path, json=feedback, headers=headers(path))
            assert stored.status_code == 200, stored.text
            # A replayed sandbox token is refused by whichever worker gets it.
            replay = headers("/cds-services")
            assert client.get("/cds-services", headers=replay).status_code == 200
            assert client.get("/cds-services", headers=replay).status_code == 401
    finally:
        process.terminate()
        process.communicate(timeout=30)
