"""Tests for cds.security: real keys, real signatures, a real local HTTP server for JWKS URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds.security import (
    AuthError,
    Claims,
    ConfigError,
    TokenVerifier,
    TrustedIssuer,
    load_trusted_issuers,
)
from cds.store import Store
from tests.support.jwks import JwksServer
from tests.support.jwks import jwks_server as serve_jwks

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TS = int(NOW.timestamp())
AUD = "https://cds.example.org/cds-services/cramps-after-calcium"
ISS = "https://ehr.example.org"
ISS_URL = "https://ehr-url.example.org"
ISS_FILE = "https://ehr-file.example.org"


# --------------------------------------------------------------------------- keys and JWKS


@dataclass(frozen=True)
class Keys:
    ec384: ec.EllipticCurvePrivateKey
    ec256: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    impostor384: ec.EllipticCurvePrivateKey
    jku384: ec.EllipticCurvePrivateKey
    url384: ec.EllipticCurvePrivateKey
    rotated384: ec.EllipticCurvePrivateKey
    file_rsa: rsa.RSAPrivateKey


def _jwk(private: Any, kid: str) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


def _jwks(*pairs: tuple[Any, str]) -> dict[str, Any]:
    return {"keys": [_jwk(key, kid) for key, kid in pairs]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ec384=ec.generate_private_key(ec.SECP384R1()),
        ec256=ec.generate_private_key(ec.SECP256R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        impostor384=ec.generate_private_key(ec.SECP384R1()),
        jku384=ec.generate_private_key(ec.SECP384R1()),
        url384=ec.generate_private_key(ec.SECP384R1()),
        rotated384=ec.generate_private_key(ec.SECP384R1()),
        file_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


# --------------------------------------------------------------------------- a real JWKS server


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with serve_jwks() as server:
        yield server


# --------------------------------------------------------------------------- token helpers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISS,
        "sub": "ehr-client-1",
        "aud": AUD,
        "iat": TS - 10,
        "exp": TS + 290,
        "jti": "jti-1",
    }
    for name, value in overrides.items():
        if value is _DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_DROP = object()


def _sign(key: Any, alg: str, kid: str | None, claims: dict[str, Any], **header: Any) -> str:
    headers: dict[str, Any] = {"typ": "JWT", **header}
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class Ctx:
    keys: Keys
    server: JwksServer
    jku_url: str
    evil_jku_url: str


@pytest.fixture
def ctx(keys: Keys, jwks_server: JwksServer, tmp_path: Path) -> Ctx:
    jku_url = jwks_server.serve("/jku.json", _jwks((keys.jku384, "jku-ec384")))
    evil = jwks_server.serve("/evil.json", _jwks((keys.impostor384, "evil")))
    jwks_server.serve("/jwks.json", _jwks((keys.url384, "url-ec384")))
    return Ctx(keys=keys, server=jwks_server, jku_url=jku_url, evil_jku_url=evil)


def _issuers(ctx: Ctx, tmp_path: Path) -> list[TrustedIssuer]:
    jwks_file = tmp_path / "file-jwks.json"
    jwks_file.write_text(json.dumps(_jwks((ctx.keys.file_rsa, "file-rsa"))))
    k = ctx.keys
    return [
        TrustedIssuer(
            iss=ISS,
            jwks=_jwks((k.ec384, "ec384"), (k.ec256, "ec256"), (k.rsa, "rsa")),
            jku_allow=(ctx.jku_url,),
        ),
        TrustedIssuer(iss=ISS_URL, jwks_url=ctx.server.base + "/jwks.json"),
        TrustedIssuer(iss=ISS_FILE, jwks_file=jwks_file),
    ]


class MemoryReplayGuard:
    """In-memory replay guard with the same contract as Store.remember_jti."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], datetime] = {}
        self.calls: list[tuple[str, str, datetime]] = []

    def __call__(self, iss: str, jti: str, expires_at: datetime) -> bool:
        self.calls.append((iss, jti, expires_at))
        known = self.seen.get((iss, jti))
        if known is not None and known > NOW:
            return False
        self.seen[(iss, jti)] = expires_at
        return True


class Clock:
    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def make_verifier(ctx: Ctx, tmp_path: Path) -> Callable[..., TokenVerifier]:
    def make(**kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("replay_guard", MemoryReplayGuard())
        kwargs.setdefault("clock", Clock())
        return TokenVerifier(_issuers(ctx, tmp_path), **kwargs)

    return make


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    id: str
    header: Callable[[Ctx], str | None]
    reason: str | None  # None: the token must be accepted
    audience: str = AUD


def _ok(key: Callable[[Keys], Any], alg: str, kid: str, **claims: Any) -> Callable[[Ctx], str]:
    return lambda c: _bearer(_sign(key(c.keys), alg, kid, _claims(**claims)))


def _hs256_with_public_pem(c: Ctx) -> str:
    pem = c.keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa"}
    return _bearer(_forge(header, _claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest()))


def _alg_none(c: Ctx) -> str:
    return _bearer(_forge({"alg": "none", "typ": "JWT", "kid": "ec384"}, _claims(), lambda _data: b""))


def _tampered(c: Ctx) -> str:
    token = _sign(c.keys.ec384, "ES384", "ec384", _claims())
    head, _payload, signature = token.split(".")
    evil = _b64(json.dumps(_claims(sub="someone-else")).encode())
    return _bearer(f"{head}.{evil}.{signature}")


def _jku(url: Callable[[Ctx], str], key: Callable[[Keys], Any], kid: str) -> Callable[[Ctx], str]:
    return lambda c: _bearer(_sign(key(c.keys), "ES384", kid, _claims(), jku=url(c)))


CASES = [
    Case("good-es384", _ok(lambda k: k.ec384, "ES384", "ec384"), None),
    Case("good-rs384", _ok(lambda k: k.rsa, "RS384", "rsa"), None),
    Case("good-es256", _ok(lambda k: k.ec256, "ES256", "ec256"), None),
    Case("good-rs256", _ok(lambda k: k.rsa, "RS256", "rsa"), None),
    Case("good-aud-list", _ok(lambda k: k.ec384, "ES384", "ec384", aud=["https://other", AUD]), None),
    Case("good-with-tenant", _ok(lambda k: k.ec384, "ES384", "ec384", tenant="hospital-a"), None),
    Case(
        "lowercase-bearer-scheme",
        lambda c: "bearer " + _sign(c.keys.ec384, "ES384", "ec384", _claims()),
        None,
    ),
    Case("missing-header", lambda c: None, "missing"),
    Case("empty-header", lambda c: "  ", "missing"),
    Case("not-bearer", lambda c: "Basic dXNlcjpwYXNz", "not_bearer"),
    Case("bearer-without-token", lambda c: "Bearer ", "malformed"),
    Case("malformed-two-segments", lambda c: "Bearer abc.def", "malformed"),
    Case("malformed-garbage", lambda c: "Bearer not.a.jwt", "malformed"),
    Case("expired", _ok(lambda k: k.ec384, "ES384", "ec384", iat=TS - 400, exp=TS - 61), "expired"),
    Case("expired-within-leeway", _ok(lambda k: k.ec384, "ES384", "ec384", iat=TS - 300, exp=TS - 30), None),
    Case("not-yet-valid-nbf", _ok(lambda k: k.ec384, "ES384", "ec384", nbf=TS + 120), "not_yet_valid"),
    Case("nbf-within-leeway", _ok(lambda k: k.ec384, "ES384", "ec384", nbf=TS + 30), None),
    Case(
        "iat-in-future-beyond-leeway",
        _ok(lambda k: k.ec384, "ES384", "ec384", iat=TS + 120, exp=TS + 300),
        "iat_in_future",
    ),
    Case(
        "clock-skew-within-leeway", _ok(lambda k: k.ec384, "ES384", "ec384", iat=TS + 45, exp=TS + 300), None
    ),
    Case("lifetime-too-long", _ok(lambda k: k.ec384, "ES384", "ec384", exp=TS + 7200), "lifetime_too_long"),
    Case(
        "wrong-aud",
        _ok(lambda k: k.ec384, "ES384", "ec384", aud="https://cds.example.org/other"),
        "bad_audience",
    ),
    Case("aud-trailing-slash", _ok(lambda k: k.ec384, "ES384", "ec384", aud=AUD + "/"), "bad_audience"),
    Case("aud-list-without-us", _ok(lambda k: k.ec384, "ES384", "ec384", aud=["https://x"]), "bad_audience"),
    Case("missing-aud", _ok(lambda k: k.ec384, "ES384", "ec384", aud=_DROP), "missing_claim"),
    Case("missing-exp", _ok(lambda k: k.ec384, "ES384", "ec384", exp=_DROP), "missing_claim"),
    Case("missing-iat", _ok(lambda k: k.ec384, "ES384", "ec384", iat=_DROP), "missing_claim"),
    Case("missing-jti", _ok(lambda k: k.ec384, "ES384", "ec384", jti=_DROP), "missing_claim"),
    # CDS Hooks 2.0 defines iss, aud, exp, iat, jti and tenant; `sub` and other claims are tolerated.
    Case("no-sub-as-the-spec-and-the-sandbox", _ok(lambda k: k.ec384, "ES384", "ec384", sub=_DROP), None),
    Case(
        "extra-claims-tolerated",
        _ok(lambda k: k.ec384, "ES384", "ec384", tenant="t-1", scope="x", fhirUser="Practitioner/1"),
        None,
    ),
    Case("sub-not-a-string", _ok(lambda k: k.ec384, "ES384", "ec384", sub=7), "malformed"),
    Case("missing-iss", _ok(lambda k: k.ec384, "ES384", "ec384", iss=_DROP), "missing_claim"),
    Case("exp-not-a-number", _ok(lambda k: k.ec384, "ES384", "ec384", exp="tomorrow"), "malformed"),
    Case(
        "unknown-iss", _ok(lambda k: k.ec384, "ES384", "ec384", iss="https://evil.example"), "unknown_issuer"
    ),
    Case("bad-signature-other-key", _ok(lambda k: k.impostor384, "ES384", "ec384"), "bad_signature"),
    Case("bad-signature-tampered-payload", _tampered, "bad_signature"),
    Case("alg-none", _alg_none, "alg_not_allowed"),
    Case("hs256-signed-with-public-pem", _hs256_with_public_pem, "alg_not_allowed"),
    Case("ps256-not-allowed", _ok(lambda k: k.rsa, "PS256", "rsa"), "alg_not_allowed"),
    Case(
        "es512-not-allowed",
        lambda c: _bearer(_sign(ec.generate_private_key(ec.SECP521R1()), "ES512", "ec384", _claims())),
        "alg_not_allowed",
    ),
    Case("kid-unknown", _ok(lambda k: k.ec384, "ES384", "no-such-kid"), "unknown_kid"),
    Case("kid-missing", lambda c: _bearer(_sign(c.keys.ec384, "ES384", None, _claims())), "missing_kid"),
    Case("es384-token-naming-rsa-key", _ok(lambda k: k.ec384, "ES384", "rsa"), "key_mismatch"),
    Case("es256-token-naming-p384-key", _ok(lambda k: k.ec256, "ES256", "ec384"), "key_mismatch"),
    Case(
        "jku-not-allow-listed",
        _jku(lambda c: c.evil_jku_url, lambda k: k.impostor384, "evil"),
        "jku_not_allowed",
    ),
    Case("jku-allow-listed", _jku(lambda c: c.jku_url, lambda k: k.jku384, "jku-ec384"), None),
    # A kid the issuer's configured keys hold is verified with that key, whatever the jku says.
    Case(
        "jku-allow-listed-kid-of-a-configured-key",
        _jku(lambda c: c.jku_url, lambda k: k.jku384, "ec384"),
        "bad_signature",
    ),
    Case(
        "jku-allow-listed-kid-in-neither",
        _jku(lambda c: c.jku_url, lambda k: k.jku384, "nowhere"),
        "unknown_kid",
    ),
    Case(
        "jku-not-a-string",
        lambda c: _bearer(_sign(c.keys.ec384, "ES384", "ec384", _claims(), jku=7)),
        "jku_not_allowed",
    ),
    Case("jwks-url-issuer", _ok(lambda k: k.url384, "ES384", "url-ec384", iss=ISS_URL), None),
    Case("jwks-url-issuer-wrong-key", _ok(lambda k: k.ec384, "ES384", "ec384", iss=ISS_URL), "unknown_kid"),
    Case("jwks-file-issuer", _ok(lambda k: k.file_rsa, "RS384", "file-rsa", iss=ISS_FILE), None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_verify_matrix(case: Case, ctx: Ctx, make_verifier: Callable[..., TokenVerifier]) -> None:
    guard = MemoryReplayGuard()
    verifier = make_verifier(replay_guard=guard)
    header = case.header(ctx)
    if case.reason is None:
        claims = verifier.verify(header, audience=case.audience)
        assert isinstance(claims, Claims)
        assert claims.aud == case.audience
        assert claims.jti == "jti-1"
        assert claims.exp.tzinfo is not None
        assert len(guard.calls) == 1
    else:
        with pytest.raises(AuthError) as caught:
            verifier.verify(header, audience=case.audience)
        assert caught.value.reason == case.reason
        assert guard.calls == []  # a refused token never reaches the replay guard


def test_claims_are_returned(ctx: Ctx, make_verifier: Callable[..., TokenVerifier]) -> None:
    token = _sign(ctx.keys.ec384, "ES384", "ec384", _claims(tenant="hospital-a"))
    assert make_verifier().verify(_bearer(token), audience=AUD) == Claims(
        iss=ISS,
        sub="ehr-client-1",
        aud=AUD,
        jti="jti-1",
        exp=NOW + timedelta(seconds=290),
        iat=NOW - timedelta(seconds=10),
        tenant="hospital-a",
    )


# --------------------------------------------------------------------------- replay


def test_replayed_jti_in_memory_guard(ctx: Ctx, make_verifier: Callable[..., TokenVerifier]) -> None:
    guard = MemoryReplayGuard()
    verifier = make_verifier(replay_guard=guard)
    header = _bearer(_sign(ctx.keys.ec384, "ES384", "ec384", _claims()))
    verifier.verify(header, audience=AUD)
    with pytest.raises(AuthError) as caught:
        verifier.verify(header, audience=AUD)
    assert caught.value.reason == "replayed"
    # The guard is told to remember the jti until the token can no longer be accepted (exp + leeway).
    assert guard.calls[0] == (ISS, "jti-1", NOW + timedelta(seconds=290 + 60))


def test_replayed_jti_sqlite_store(
    ctx: Ctx, make_verifier: Callable[..., TokenVerifier], tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'replay' / 'cds.sqlite3'}")
    store.migrate()
    try:

        def guard(iss: str, jti: str, expires_at: datetime) -> bool:
            return store.remember_jti(iss=iss, jti=jti, expires_at=expires_at, now=NOW)

        first = make_verifier(replay_guard=guard)
        second_worker = make_verifier(replay_guard=guard)
        header = _bearer(_sign(ctx.keys.rsa, "RS384", "rsa", _claims(jti="shared-jti")))
        assert first.verify(header, audience=AUD).jti == "shared-jti"
        with pytest.raises(AuthError) as caught:
            second_worker.verify(header, audience=AUD)
        assert caught.value.reason == "replayed"
        other = _bearer(_sign(ctx.keys.rsa, "RS384", "rsa", _claims(jti="other-jti")))
        assert second_worker.verify(other, audience=AUD).jti == "other-jti"
    finally:
        store.close()


# --------------------------------------------------------------------------- jku


def test_a_jku_is_not_fetched_for_a_key_the_issuer_already_has(
    ctx: Ctx, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """An offline deployment with the client's keys configured accepts its tokens, jku or not."""
    verifier = make_verifier()
    for n in range(3):
        known = _sign(ctx.keys.ec384, "ES384", "ec384", _claims(jti=f"k{n}"), jku=ctx.jku_url)
        assert verifier.verify(_bearer(known), audience=AUD).jti == f"k{n}"
    assert ctx.server.hits.get("/jku.json", 0) == 0
    assert verifier.key_loads(ctx.jku_url) == 0
    # A kid the configured keys lack is looked up at the allow-listed jku: one fetch, then cached.
    for n in range(3):
        fetched = _sign(ctx.keys.jku384, "ES384", "jku-ec384", _claims(jti=f"f{n}"), jku=ctx.jku_url)
        assert verifier.verify(_bearer(fetched), audience=AUD).jti == f"f{n}"
    assert ctx.server.hits["/jku.json"] == 1


# --------------------------------------------------------------------------- JWKS caching


def test_jwks_url_cached_then_refetched_after_ttl(
    ctx: Ctx, make_verifier: Callable[..., TokenVerifier]
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock, jwks_ttl_seconds=300)
    for n in range(3):
        token = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, jti=f"j{n}"))
        verifier.verify(_bearer(token), audience=AUD)
    assert ctx.server.hits["/jwks.json"] == 1
    clock.at = NOW + timedelta(seconds=301)
    token = _sign(
        ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, jti="late", iat=TS + 300, exp=TS + 500)
    )
    verifier.verify(_bearer(token), audience=AUD)
    assert ctx.server.hits["/jwks.json"] == 2


def test_unknown_kid_triggers_one_rate_limited_refetch(
    ctx: Ctx, make_verifier: Callable[..., TokenVerifier]
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock, jwks_min_refetch_seconds=30)
    first = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, jti="a"))
    verifier.verify(_bearer(first), audience=AUD)
    # The client rotates its key: the new kid is published after we cached the old set.
    ctx.server.serve("/jwks.json", _jwks((ctx.keys.url384, "url-ec384"), (ctx.keys.rotated384, "rotated")))
    rotated = _sign(ctx.keys.rotated384, "ES384", "rotated", _claims(iss=ISS_URL, jti="b"))
    with pytest.raises(AuthError) as caught:
        verifier.verify(_bearer(rotated), audience=AUD)  # fetched just now: refetch is rate-limited
    assert caught.value.reason == "unknown_kid"
    assert ctx.server.hits["/jwks.json"] == 1
    clock.at = NOW + timedelta(seconds=31)
    assert verifier.verify(_bearer(rotated), audience=AUD).jti == "b"
    assert ctx.server.hits["/jwks.json"] == 2
    bogus = _sign(ctx.keys.rotated384, "ES384", "never-published", _claims(iss=ISS_URL, jti="c"))
    for _ in range(3):
        with pytest.raises(AuthError):
            verifier.verify(_bearer(bogus), audience=AUD)
    assert ctx.server.hits["/jwks.json"] == 2  # unknown kids cannot make us hammer the client


def test_jwks_fetch_failure_without_cache_is_refused(
    ctx: Ctx, make_verifier: Callable[..., TokenVerifier]
) -> None:
    del ctx.server.routes["/jwks.json"]
    token = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL))
    with pytest.raises(AuthError) as caught:
        make_verifier().verify(_bearer(token), audience=AUD)
    assert caught.value.reason == "jwks_unavailable"


def test_jwks_fetch_failure_keeps_stale_keys(ctx: Ctx, make_verifier: Callable[..., TokenVerifier]) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock, jwks_ttl_seconds=60)
    verifier.verify(
        _bearer(_sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, jti="1"))), audience=AUD
    )
    del ctx.server.routes["/jwks.json"]
    clock.at = NOW + timedelta(seconds=120)
    late = _claims(iss=ISS_URL, jti="2", iat=TS + 110, exp=TS + 300)
    assert (
        verifier.verify(_bearer(_sign(ctx.keys.url384, "ES384", "url-ec384", late)), audience=AUD).jti == "2"
    )
    assert ctx.server.hits["/jwks.json"] == 2


def test_injected_http_get_is_used(ctx: Ctx, tmp_path: Path) -> None:
    fetched: list[str] = []

    def http_get(url: str) -> bytes:
        fetched.append(url)
        return json.dumps(_jwks((ctx.keys.url384, "url-ec384"))).encode()

    verifier = TokenVerifier(
        [TrustedIssuer(iss=ISS_URL, jwks_url="https://keys.ehr.example.org/jwks")],
        replay_guard=MemoryReplayGuard(),
        clock=Clock(),
        http_get=http_get,
    )
    token = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL))
    assert verifier.verify(_bearer(token), audience=AUD).iss == ISS_URL
    assert fetched == ["https://keys.ehr.example.org/jwks"]


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "issuers",
    [
        pytest.param([TrustedIssuer(iss=ISS)], id="no-key-source"),
        pytest.param(
            [TrustedIssuer(iss=ISS, jwks={"keys": []}, jwks_url="https://x.example/jwks")],
            id="two-key-sources",
        ),
        pytest.param([TrustedIssuer(iss=ISS, jwks={"keys": []})] * 2, id="duplicate-issuer"),
        pytest.param([TrustedIssuer(iss=ISS, jwks_url="http://keys.example.org/jwks")], id="plain-http-url"),
        pytest.param([TrustedIssuer(iss=ISS, jwks={"no": "keys"})], id="jwks-without-keys"),
    ],
)
def test_verifier_refuses_bad_issuers(issuers: list[TrustedIssuer]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(issuers, replay_guard=MemoryReplayGuard())


# --------------------------------------------------------------------------- configuration file


def _public_jwks_json(keys: Keys) -> dict[str, Any]:
    return _jwks((keys.ec384, "ec384"))


def test_load_trusted_issuers_yaml_and_json(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ehr.json").write_text(json.dumps(_public_jwks_json(keys)))
    yaml_file = tmp_path / "issuers.yaml"
    yaml_file.write_text(
        "issuers:\n"
        f"  - iss: {ISS}\n"
        "    jwks_file: keys/ehr.json\n"
        "    jku_allow: ['https://ehr.example.org/jku.json']\n"
        f"  - iss: {ISS_URL}\n"
        "    jwks_url: https://ehr-url.example.org/.well-known/jwks.json\n"
    )
    json_file = tmp_path / "issuers.json"
    json_file.write_text(json.dumps({"issuers": [{"iss": ISS_FILE, "jwks": _public_jwks_json(keys)}]}))

    assert load_trusted_issuers(yaml_file) == [
        TrustedIssuer(
            iss=ISS, jwks_file=tmp_path / "keys" / "ehr.json", jku_allow=("https://ehr.example.org/jku.json",)
        ),
        TrustedIssuer(iss=ISS_URL, jwks_url="https://ehr-url.example.org/.well-known/jwks.json"),
    ]
    (loaded,) = load_trusted_issuers(json_file)
    assert loaded.iss == ISS_FILE
    assert loaded.jwks == _public_jwks_json(keys)


BAD_CONFIGS = [
    pytest.param("issuers: [", "", id="not-yaml"),
    pytest.param("- just\n- a list\n", "", id="not-a-mapping"),
    pytest.param("issuers: []\n", "issuers", id="no-issuers"),
    pytest.param("issuers: []\nextra: 1\n", "extra", id="unknown-top-level-field"),
    pytest.param("issuers: [{jwks_url: 'https://a/j'}]\n", "issuers[0].iss", id="missing-iss"),
    pytest.param("issuers: [{iss: a}]\n", "issuers[0]", id="no-key-source"),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'https://a/j', jwks_file: x.json}]\n", "issuers[0]", id="two-sources"
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'http://a.example/j'}]\n", "issuers[0].jwks_url", id="http-url"
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_file: missing.json}]\n", "issuers[0].jwks_file", id="missing-jwks-file"
    ),
    pytest.param("issuers: [{iss: a, jwks: {keys: 3}}]\n", "issuers[0].jwks", id="jwks-keys-not-list"),
    pytest.param(
        "issuers: [{iss: a, jwks: {keys: [{kty: oct, kid: s, k: c2VjcmV0}]}}]\n",
        "issuers[0].jwks",
        id="symmetric-key-material",
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'https://a/j', jku_allow: ['ftp://a/j']}]\n",
        "issuers[0].jku_allow[0]",
        id="bad-jku-allow-url",
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'https://a/j', jku_allow: x}]\n",
        "issuers[0].jku_allow",
        id="jku-allow-not-list",
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'https://a/j', colour: red}]\n", "issuers[0].colour", id="unknown-field"
    ),
    pytest.param(
        "issuers: [{iss: a, jwks_url: 'https://a/j'}, {iss: a, jwks_url: 'https://b/j'}]\n",
        "issuers[1].iss",
        id="duplicate-iss",
    ),
]


@pytest.mark.parametrize(("text", "field_name"), BAD_CONFIGS)
def test_load_trusted_issuers_rejects_bad_files(text: str, field_name: str, tmp_path: Path) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_trusted_issuers(path)
    assert caught.value.path == path
    assert caught.value.field == field_name
    assert str(path) in str(caught.value)


def test_load_trusted_issuers_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_trusted_issuers(tmp_path / "nope.yaml")
    assert caught.value.field == ""


# --------------------------------------------------------------------------- one issuer cannot stall the others


class SlowKeys:
    """An injected http_get: fails (or answers `document`) after `release` is set; counts the calls."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document = document
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        with self.lock:
            self.calls += 1
        self.release.wait(timeout=10)
        if self.document is None:
            raise OSError("connection reset")
        return json.dumps(self.document).encode()


def test_a_hanging_key_server_holds_up_only_its_own_issuer(ctx: Ctx, tmp_path: Path) -> None:
    """Concurrent forged tokens naming the hanging issuer share one fetch; other issuers go on meanwhile."""
    hanging = SlowKeys()
    issuers = [
        *_issuers(ctx, tmp_path),
        TrustedIssuer(iss="https://hangs.example", jwks_url="https://hangs.example/k"),
    ]
    verifier = TokenVerifier(
        issuers,
        replay_guard=MemoryReplayGuard(),
        clock=Clock(),
        http_get=lambda url: hanging(url) if "hangs" in url else _jwks_bytes(ctx, url),
    )
    reasons: list[str] = []

    def forged(n: int) -> None:
        token = _sign(ctx.keys.impostor384, "ES384", "k", _claims(iss="https://hangs.example", jti=f"x{n}"))
        try:
            verifier.verify(_bearer(token), audience=AUD)
        except AuthError as error:
            reasons.append(error.reason)

    threads = [threading.Thread(target=forged, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    # While the fetch hangs, each kind of healthy issuer is answered: inline, file and URL keys.
    for n, (key, alg, kid, iss) in enumerate(
        [
            (ctx.keys.ec384, "ES384", "ec384", ISS),
            (ctx.keys.file_rsa, "RS384", "file-rsa", ISS_FILE),
            (ctx.keys.url384, "ES384", "url-ec384", ISS_URL),
        ]
    ):
        token = _sign(key, alg, kid, _claims(iss=iss, jti=f"ok{n}"))
        assert verifier.verify(_bearer(token), audience=AUD).iss == iss
    assert reasons == []  # the forged ones are all still waiting
    hanging.release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert reasons == ["jwks_unavailable"] * 8
    assert hanging.calls == 1  # coalesced: one fetch for eight concurrent tokens


def _jwks_bytes(ctx: Ctx, url: str) -> bytes:
    return httpx.get(url, timeout=5).content


def test_failed_key_fetches_are_remembered_with_back_off(ctx: Ctx) -> None:
    failing = SlowKeys()
    failing.release.set()
    clock = Clock()
    verifier = TokenVerifier(
        [TrustedIssuer(iss=ISS_URL, jwks_url="https://down.example/jwks")],
        replay_guard=MemoryReplayGuard(),
        clock=clock,
        http_get=failing,
        jwks_backoff_seconds=5,
        jwks_max_backoff_seconds=20,
    )

    def attempt(at_seconds: float) -> str:
        clock.at = NOW + timedelta(seconds=at_seconds)
        iat = TS + int(at_seconds)
        token = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, iat=iat, exp=iat + 60))
        with pytest.raises(AuthError) as caught:
            verifier.verify(_bearer(token), audience=AUD)
        return caught.value.reason

    calls = []
    for at in (0, 1, 4.9, 5, 9.9, 15, 34.9, 35, 54.9, 55):
        assert attempt(at) == "jwks_unavailable"
        calls.append(failing.calls)
    # Fetched at 0, then after 5 s, 10 s, 20 s (the cap) and 20 s again; never in between.
    assert calls == [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert verifier.key_loads("https://down.example/jwks") == 5
    # Once the keys are back, the next fetch after the back-off takes them and resets it.
    failing.document = _jwks((ctx.keys.url384, "url-ec384"))
    clock.at = NOW + timedelta(seconds=75)
    token = _sign(ctx.keys.url384, "ES384", "url-ec384", _claims(iss=ISS_URL, iat=TS + 75, exp=TS + 135))
    assert verifier.verify(_bearer(token), audience=AUD).iss == ISS_URL


def test_the_default_key_fetch_gives_up_on_a_silent_server() -> None:
    from cds.security import _default_http_get
    from tests.support.jwks import blackhole

    with blackhole() as hole, pytest.raises(httpx.TimeoutException):
        _default_http_get(hole.url)
    assert hole.accepted == 1


def test_the_default_key_fetch_refuses_a_key_set_over_the_size_limit(ctx: Ctx) -> None:
    from cds.security import _default_http_get

    huge = {"keys": [], "padding": "x" * (1 << 20)}
    url = ctx.server.serve("/huge.json", huge)
    with pytest.raises(ValueError, match="larger than"):
        _default_http_get(url)
