"""JWT authentication of CDS clients over HTTP (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

Real keys, a real trusted-issuers file, tokens minted per test; every failure is a bare 401.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.support.api import (
    NOW,
    Api,
    Issuer,
    dev_settings,
    hook_request,
    running,
    secure_settings,
    wait_for_request_log,
)
from tests.support.jwks import blackhole

SERVICE = "/cds-services/cramp-assessment"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def api(tmp_path: Path, pack: RulePack, issuer: Issuer) -> Iterator[Api]:
    with running(secure_settings(tmp_path, issuer), evaluator=Evaluator(pack)) as api:
        yield api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: Any) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "authentication failed"}],
    }


def test_a_good_token_is_accepted_on_the_service(api: Api, issuer: Issuer) -> None:
    token = issuer.token(api.url(SERVICE), now=NOW)
    response = api.client.post(SERVICE, json=hook_request(), headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["cards"]


def test_a_good_token_is_accepted_on_discovery(api: Api, issuer: Issuer) -> None:
    token = issuer.token(api.url("/cds-services"), now=NOW)
    assert api.client.get("/cds-services", headers=bearer(token)).status_code == 200


def test_a_good_token_is_accepted_on_feedback(api: Api, issuer: Issuer) -> None:
    card = api.client.post(
        SERVICE, json=hook_request(), headers=bearer(issuer.token(api.url(SERVICE), now=NOW))
    ).json()["cards"][0]
    feedback = {
        "feedback": [{"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}]
    }
    token = issuer.token(api.url(SERVICE + "/feedback"), now=NOW)
    assert api.client.post(SERVICE + "/feedback", json=feedback, headers=bearer(token)).status_code == 200


def test_a_good_token_is_accepted_on_evaluate(api: Api, issuer: Issuer) -> None:
    token = issuer.token(api.url("/evaluate"), now=NOW)
    response = api.client.post("/evaluate", json=hook_request(), headers=bearer(token))
    assert response.status_code == 200


Minter = Callable[[Issuer, str], dict[str, str]]

FAILURES: dict[str, Minter] = {
    "missing": lambda issuer, aud: {},
    "not-bearer": lambda issuer, aud: {"Authorization": "Basic dXNlcjpwYXNz"},
    "not-a-jwt": lambda issuer, aud: bearer("not.a.jwt"),
    "expired": lambda issuer, aud: bearer(
        issuer.token(aud, now=NOW - timedelta(minutes=30), lifetime=timedelta(minutes=5))
    ),
    "issued-in-the-future": lambda issuer, aud: bearer(issuer.token(aud, now=NOW + timedelta(hours=1))),
    "wrong-audience": lambda issuer, aud: bearer(
        issuer.token("https://other.example.org/cds-services/x", now=NOW)
    ),
    "audience-of-another-endpoint": lambda issuer, aud: bearer(issuer.token(aud + "/feedback", now=NOW)),
    "unknown-issuer": lambda issuer, aud: bearer(issuer.token(aud, now=NOW, iss="https://evil.example.org")),
    "bad-signature": lambda issuer, aud: bearer(
        issuer.token(aud, now=NOW, key=ec.generate_private_key(ec.SECP384R1()))
    ),
    "tampered-payload": lambda issuer, aud: bearer(_tamper(issuer.token(aud, now=NOW))),
    "alg-none": lambda issuer, aud: bearer(
        jwt.encode(
            {
                "iss": issuer.iss,
                "sub": "x",
                "aud": aud,
                "iat": int(NOW.timestamp()),
                "exp": int(NOW.timestamp()) + 300,
                "jti": "n",
            },
            None,
            algorithm="none",
            headers={"kid": issuer.kid},
        )
    ),
    "alg-hs256": lambda issuer, aud: bearer(
        issuer.token(aud, now=NOW, key="shared-secret-" * 4, alg="HS256")
    ),
    "unknown-kid": lambda issuer, aud: bearer(issuer.token(aud, now=NOW, kid="other-key")),
    "lifetime-too-long": lambda issuer, aud: bearer(issuer.token(aud, now=NOW, lifetime=timedelta(days=2))),
}


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = jwt.utils.base64url_decode(payload.encode())
    changed = claims.replace(b'"sub":"cds-client"', b'"sub":"cds-admin!"')
    return ".".join([header, jwt.utils.base64url_encode(changed).decode(), signature])


@pytest.mark.parametrize("failure", list(FAILURES), ids=list(FAILURES))
@pytest.mark.parametrize("path", [SERVICE, "/cds-services"], ids=["service", "discovery"])
def test_every_bad_token_is_401(api: Api, issuer: Issuer, failure: str, path: str) -> None:
    headers = FAILURES[failure](issuer, api.url(path))
    if path == SERVICE:
        response = api.client.post(path, json=hook_request(), headers=headers)
    else:
        response = api.client.get(path, headers=headers)
    assert_401(response)


def test_a_replayed_jti_is_401(api: Api, issuer: Issuer) -> None:
    token = issuer.token(api.url(SERVICE), now=NOW)
    assert api.client.post(SERVICE, json=hook_request(), headers=bearer(token)).status_code == 200
    assert_401(api.client.post(SERVICE, json=hook_request(), headers=bearer(token)))


def test_replay_is_caught_across_app_instances_sharing_the_store(
    tmp_path: Path, pack: RulePack, issuer: Issuer
) -> None:
    """Two workers share the store, so a token used on one is refused by the other."""
    settings = secure_settings(tmp_path, issuer, public_base_url="https://cds.example.org")
    with (
        running(settings, evaluator=Evaluator(pack)) as one,
        running(settings, evaluator=Evaluator(pack)) as two,
    ):
        token = issuer.token("https://cds.example.org/cds-services", now=NOW)
        assert one.client.get("/cds-services", headers=bearer(token)).status_code == 200
        assert_401(two.client.get("/cds-services", headers=bearer(token)))


def test_audience_is_the_public_base_url_when_set(tmp_path: Path, pack: RulePack, issuer: Issuer) -> None:
    settings = secure_settings(tmp_path, issuer, public_base_url="https://cds.example.org/")
    with running(settings, evaluator=Evaluator(pack)) as api:
        good = issuer.token("https://cds.example.org/cds-services", now=NOW)
        assert api.client.get("/cds-services", headers=bearer(good)).status_code == 200
        local = issuer.token(api.url("/cds-services"), now=NOW)
        assert_401(api.client.get("/cds-services", headers=bearer(local)))


def test_failures_are_logged_by_reason_never_with_the_token(
    api: Api, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.token(api.url(SERVICE), now=NOW - timedelta(hours=1))
    with caplog.at_level(logging.INFO, logger="cds"):
        assert_401(api.client.post(SERVICE, json=hook_request(), headers=bearer(token)))
        wait_for_request_log(lambda: caplog.records)
    lines = [r for r in caplog.records if r.name.startswith("cds")]
    assert any(getattr(r, "cds_fields", {}).get("error") == "auth:expired" for r in lines)
    assert all(token not in repr(getattr(r, "cds_fields", {})) + r.getMessage() for r in lines)


def test_health_and_metrics_need_no_token(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.client.get(path).status_code == 200


def test_dev_mode_needs_no_token_and_warns(
    tmp_path: Path, pack: RulePack, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="cds"),
        running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api,
    ):
        assert api.client.post(SERVICE, json=hook_request()).status_code == 200
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)


def test_a_blackholed_issuer_does_not_hold_up_a_healthy_one(
    tmp_path: Path, pack: RulePack, issuer: Issuer
) -> None:
    """Issue 9 class 4: forged tokens naming an issuer whose jwks_url accepts and never answers are in
    flight; the healthy issuer's tokens are answered meanwhile, and the failure is remembered."""
    with blackhole() as hole:
        trusted = tmp_path / "trusted.json"
        trusted.write_text(
            json.dumps(
                {
                    "issuers": [
                        {"iss": issuer.iss, "jwks": issuer.jwks()},
                        {"iss": "https://blackholed.example.org", "jwks_url": hole.url},
                    ]
                }
            )
        )
        forger = Issuer(iss="https://blackholed.example.org", kid="any")
        settings = secure_settings(tmp_path, issuer, trusted_issuers=trusted)
        with running(settings, evaluator=Evaluator(pack)) as api:
            url = api.url("/cds-services")
            statuses: list[int] = []

            def forged() -> None:
                with httpx.Client(timeout=30) as client:
                    response = client.get(url, headers=bearer(forger.token(url, now=NOW)))
                    statuses.append(response.status_code)

            threads = [threading.Thread(target=forged) for _ in range(8)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while hole.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hole.accepted == 1
            # A generous bound: the blackholed fetch itself takes JWKS_DEADLINE_SECONDS.
            with httpx.Client(base_url=api.base, timeout=2.5) as healthy:
                for _ in range(5):
                    token = issuer.token(url, now=NOW)
                    assert healthy.get("/cds-services", headers=bearer(token)).status_code == 200
            assert statuses == []  # every forged request was still waiting on the blackhole
            for thread in threads:
                thread.join(timeout=30)
            assert statuses == [401] * 8
            # Remembered: more forged tokens are refused without another connection.
            for _ in range(5):
                assert_401(api.client.get("/cds-services", headers=bearer(forger.token(url, now=NOW))))
            assert hole.accepted == 1


STEERING = {
    "host-header": {"Host": "evil.example.org"},
    "forwarded-proto-and-host": {
        "Host": "evil.example.org",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example.org",
        "X-Forwarded-For": "127.0.0.1",
    },
    "forwarded-rfc7239": {"Host": "evil.example.org", "Forwarded": "proto=https;host=evil.example.org"},
}


@pytest.mark.parametrize("headers", list(STEERING.values()), ids=list(STEERING))
def test_the_audience_cannot_be_steered_by_host_or_forwarded_headers(
    api: Api, issuer: Issuer, headers: dict[str, str]
) -> None:
    """Issue 9 class 5: a token minted for another service's URL is refused, whatever the request
    claims about its own host and scheme; the audience is CDS_PUBLIC_BASE_URL + path only."""
    for minted_for in ("https://evil.example.org/cds-services", "http://evil.example.org/cds-services"):
        token = issuer.token(minted_for, now=NOW)
        assert_401(api.client.get("/cds-services", headers={**headers, **bearer(token)}))
    token = issuer.token(api.runtime.settings.public_base_url + "/cds-services", now=NOW)
    assert api.client.get("/cds-services", headers={**headers, **bearer(token)}).status_code == 200


def test_cds_serve_trusts_forwarded_headers_only_from_configured_proxies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, issuer: Issuer
) -> None:
    import uvicorn

    from cds import server

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.append(kwargs))
    server.run(secure_settings(tmp_path, issuer))
    server.run(secure_settings(tmp_path, issuer, trusted_proxies=("10.0.0.0/8", "192.0.2.7")))
    assert (seen[0]["proxy_headers"], seen[0]["forwarded_allow_ips"]) == (False, None)
    assert (seen[1]["proxy_headers"], seen[1]["forwarded_allow_ips"]) == (True, ["10.0.0.0/8", "192.0.2.7"])
    # Workers that take long to start on a busy machine are not killed as hung (uvicorn's default: 5 s).
    assert seen[0]["timeout_worker_healthcheck"] >= 30
