"""Verification of CDS Hooks 2.0 client JWTs (Bearer tokens) against an allow-list of issuers."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import yaml

from cds.yamltext import load_yaml

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthError",
    "Claims",
    "ConfigError",
    "JtiCache",
    "TokenVerifier",
    "TrustedIssuer",
    "load_trusted_issuers",
    "now_utc",
]

# Asymmetric algorithms named by CDS Hooks 2.0; everything else (none, HS*, PS*, EdDSA...) is refused.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384", "ES256", "RS256")
_KEY_TYPE = {"ES256": "EC", "ES384": "EC", "RS256": "RSA", "RS384": "RSA"}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_MAX_JWKS_BYTES = 1 << 20
# A key fetch gets this long in all (connect, each read and the whole body), then counts as failed.
JWKS_DEADLINE_SECONDS = 3.0
_MAX_ID_LENGTH = 255
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def now_utc() -> datetime:
    """The current time as an aware UTC datetime (the verifier's default clock)."""
    return datetime.now(UTC)


class ConfigError(ValueError):
    """The trusted-issuers file is unusable; names the file and the offending field."""

    def __init__(self, path: Path, field: str, message: str) -> None:
        self.path = path
        self.field = field
        self.message = message
        where = f"{path}: {field}" if field else str(path)
        super().__init__(f"{where}: {message}")


class AuthError(Exception):
    """A token was refused; ``reason`` is a short code for logs and tests, never shown to the client."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class TrustedIssuer:
    """One CDS client we accept tokens from, with exactly one source of its public keys."""

    iss: str
    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jku_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claims:
    """The verified claims of a CDS client token."""

    iss: str
    aud: str
    jti: str
    exp: datetime
    iat: datetime
    tenant: str | None = None
    sub: str | None = None


# --------------------------------------------------------------------------- JWKS parsing


def _parse_jwks(data: object) -> dict[str, dict[str, Any]]:
    """Map kid -> JWK for a JWK Set document; raises ValueError when it is not one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError('a JWK Set must be an object with a "keys" list')
    keys: dict[str, dict[str, Any]] = {}
    for index, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, Mapping):
            raise ValueError(f"keys[{index}] is not an object")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise ValueError(f"keys[{index}] holds private or symmetric key material")
        kid = jwk.get("kid")
        if isinstance(kid, str) and kid:
            keys[kid] = dict(jwk)
    return keys


def _read_jwks_bytes(raw: bytes) -> dict[str, dict[str, Any]]:
    return _parse_jwks(json.loads(raw.decode("utf-8")))


def _check_url(url: object) -> str:
    """https URLs, or http on the loopback interface (tests and local sidecars)."""
    if not isinstance(url, str) or not url:
        raise ValueError("must be a non-empty URL string")
    parts = urlsplit(url)
    if parts.fragment or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute URL without fragment")
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        return url
    raise ValueError(f"{url!r} must use https (plain http only on loopback)")


def _default_http_get(url: str) -> bytes:
    """GET a JWKS: no redirects, at most `_MAX_JWKS_BYTES`, and `JWKS_DEADLINE_SECONDS` in all.

    httpx's timeout bounds each connect and each read; the deadline also bounds a server that
    trickles bytes, checked after every chunk.
    """
    deadline = time.monotonic() + JWKS_DEADLINE_SECONDS
    chunks: list[bytes] = []
    size = 0
    with (
        httpx.Client(timeout=JWKS_DEADLINE_SECONDS, follow_redirects=False, trust_env=False) as client,
        client.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS at {url} is larger than {_MAX_JWKS_BYTES} bytes")
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > _MAX_JWKS_BYTES:
                raise ValueError(f"JWKS at {url} is larger than {_MAX_JWKS_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"JWKS at {url} took longer than {JWKS_DEADLINE_SECONDS} s")
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- configuration

_ISSUER_FIELDS = frozenset({"iss", "jwks", "jwks_file", "jwks_url", "jku_allow"})


def load_trusted_issuers(path: Path) -> list[TrustedIssuer]:
    """Read the trusted-issuers YAML or JSON file; any problem raises ConfigError naming the field."""
    try:
        document = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(path, "", f"cannot read file: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(path, "", f"not valid YAML or JSON: {error}") from error
    if not isinstance(document, Mapping):
        raise ConfigError(path, "", 'must be a mapping with an "issuers" list')
    extra = sorted(str(key) for key in document if key != "issuers")
    if extra:
        raise ConfigError(path, extra[0], "unknown field")
    entries = document.get("issuers")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(path, "issuers", "must be a non-empty list")
    issuers: list[TrustedIssuer] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        issuer = _load_issuer(path, f"issuers[{index}]", entry)
        if issuer.iss in seen:
            raise ConfigError(path, f"issuers[{index}].iss", f"duplicate issuer {issuer.iss!r}")
        seen.add(issuer.iss)
        issuers.append(issuer)
    return issuers


def _load_issuer(path: Path, where: str, entry: object) -> TrustedIssuer:
    if not isinstance(entry, Mapping):
        raise ConfigError(path, where, "must be a mapping")
    unknown = sorted(str(key) for key in entry if key not in _ISSUER_FIELDS)
    if unknown:
        raise ConfigError(path, f"{where}.{unknown[0]}", "unknown field")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss.strip():
        raise ConfigError(path, f"{where}.iss", "must be a non-empty string")
    sources = [name for name in ("jwks", "jwks_file", "jwks_url") if entry.get(name) is not None]
    if len(sources) != 1:
        raise ConfigError(path, where, "needs exactly one of jwks, jwks_file, jwks_url")
    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    source = sources[0]
    try:
        if source == "jwks":
            _parse_jwks(entry["jwks"])
            jwks = dict(entry["jwks"])
        elif source == "jwks_file":
            if not isinstance(entry["jwks_file"], str):
                raise ValueError("must be a path string")
            jwks_file = Path(entry["jwks_file"])
            if not jwks_file.is_absolute():
                jwks_file = path.parent / jwks_file
            _read_jwks_bytes(jwks_file.read_bytes())
        else:
            jwks_url = _check_url(entry["jwks_url"])
    except (OSError, ValueError) as error:
        raise ConfigError(path, f"{where}.{source}", str(error)) from error
    allow = entry.get("jku_allow", [])
    if not isinstance(allow, list):
        raise ConfigError(path, f"{where}.jku_allow", "must be a list of URLs")
    jku_allow: list[str] = []
    for position, url in enumerate(allow):
        try:
            jku_allow.append(_check_url(url))
        except ValueError as error:
            raise ConfigError(path, f"{where}.jku_allow[{position}]", str(error)) from error
    return TrustedIssuer(
        iss=iss, jwks=jwks, jwks_file=jwks_file, jwks_url=jwks_url, jku_allow=tuple(jku_allow)
    )


@dataclass(frozen=True)
class _KeySource:
    kind: str  # "inline", "file" or "url"
    location: str
    inline: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)


class _KeyCache:
    """The keys of one JWKS file or URL: loaded by one caller at a time, failures remembered.

    Each source has its own cache and lock, and the lock is never held while loading, so a key
    server that accepts connections and never answers delays only tokens naming it, and at most
    once per back-off period:

    - concurrent callers that need a load share it (one request to the key server); they wait for
      it only when there is nothing to fall back on (no keys yet, no failure yet) and at most
      `wait_seconds`; otherwise they go on with the keys they have, or fail at once;
    - after a failed load the source is not asked again before `backoff` (doubling from
      `backoff_seconds` up to `max_backoff_seconds` while it keeps failing); keys fetched earlier
      stay in use meanwhile;
    - an unknown kid (a client rotated its keys) reloads at most every `min_refetch`.
    """

    def __init__(
        self,
        source: _KeySource,
        load: Callable[[_KeySource], dict[str, dict[str, Any]]],
        *,
        ttl: timedelta,
        min_refetch: timedelta,
        backoff: timedelta,
        max_backoff: timedelta,
        wait_seconds: float,
    ) -> None:
        self.source = source
        self._load = load
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._wait_seconds = wait_seconds
        self._state = threading.Condition()
        self._loading = False
        self._keys: dict[str, dict[str, Any]] | None = None
        self._fetched_at: datetime | None = None
        self._attempted_at: datetime | None = None
        self._failures = 0
        self._retry_at: datetime | None = None
        self.loads = 0  # how many loads were started (for tests and metrics)

    def _wants_load(self, kid: str, now: datetime) -> bool:
        if self._retry_at is not None and now < self._retry_at:
            return False  # backing off after a failure
        if self._keys is None or self._fetched_at is None or now - self._fetched_at >= self._ttl:
            return True
        return kid not in self._keys and (
            self._attempted_at is None or now - self._attempted_at >= self._min_refetch
        )

    def _answer(self, kid: str) -> dict[str, Any] | None:
        if self._keys is None:
            raise AuthError("jwks_unavailable", self.source.location)
        return self._keys.get(kid)

    def key(self, kid: str, now: datetime) -> dict[str, Any] | None:
        """The JWK named `kid`, None when the source does not have it; AuthError when it cannot be read."""
        with self._state:
            if not self._wants_load(kid, now):
                return self._answer(kid)
            if self._loading:
                if self._keys is not None or self._failures:
                    return self._answer(kid)  # never queue behind a load when there is an answer now
                self._state.wait_for(lambda: not self._loading, timeout=self._wait_seconds)
                return self._answer(kid)
            self._loading = True
            self.loads += 1
        keys: dict[str, dict[str, Any]] | None = None
        try:
            keys = self._load(self.source)
        except Exception:  # any fetch or parse failure is remembered; stale keys stay in use
            keys = None
        finally:
            with self._state:
                self._loading = False
                self._attempted_at = now
                if keys is not None:
                    self._keys, self._fetched_at = keys, now
                    self._failures, self._retry_at = 0, None
                else:
                    self._failures += 1
                    pause = min(self._backoff * 2 ** min(self._failures - 1, 16), self._max_backoff)
                    self._retry_at = now + pause
                self._state.notify_all()
        with self._state:
            return self._answer(kid)


def _source_for(issuer: TrustedIssuer) -> _KeySource:
    given = [s for s in (issuer.jwks, issuer.jwks_file, issuer.jwks_url) if s is not None]
    if len(given) != 1:
        raise ValueError(f"issuer {issuer.iss!r} needs exactly one of jwks, jwks_file, jwks_url")
    if issuer.jwks is not None:
        return _KeySource("inline", issuer.iss, _parse_jwks(issuer.jwks))
    if issuer.jwks_file is not None:
        return _KeySource("file", str(issuer.jwks_file))
    assert issuer.jwks_url is not None
    return _KeySource("url", _check_url(issuer.jwks_url))


def _numeric_date(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    if value is None:
        raise AuthError("missing_claim", name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError("malformed", f"{name} is not a NumericDate")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise AuthError("malformed", f"{name} is out of range") from error


def _required_string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise AuthError("missing_claim", name)
    if not isinstance(value, str) or not value or len(value) > _MAX_ID_LENGTH:
        raise AuthError("malformed", f"{name} must be a non-empty string of at most {_MAX_ID_LENGTH} chars")
    return value


class TokenVerifier:
    """Checks ``Authorization: Bearer <jwt>`` headers sent by CDS clients (CDS Hooks 2.0)."""

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        *,
        replay_guard: Callable[[str, str, datetime], bool],
        leeway_seconds: int = 60,
        max_lifetime_seconds: int = 3600,
        clock: Callable[[], datetime] = now_utc,
        http_get: Callable[[str], bytes] | None = None,
        jwks_ttl_seconds: int = 300,
        jwks_min_refetch_seconds: int = 30,
        jwks_backoff_seconds: float = 5,
        jwks_max_backoff_seconds: float = 300,
        jwks_wait_seconds: float = JWKS_DEADLINE_SECONDS + 1,
    ) -> None:
        if leeway_seconds < 0 or max_lifetime_seconds <= 0 or jwks_ttl_seconds < 0:
            raise ValueError("leeway, lifetime and TTL must be non-negative (lifetime positive)")
        self._issuers: dict[str, TrustedIssuer] = {}
        self._sources: dict[str, _KeySource] = {}
        for issuer in issuers:
            if issuer.iss in self._issuers:
                raise ValueError(f"duplicate trusted issuer {issuer.iss!r}")
            for url in issuer.jku_allow:
                _check_url(url)
            self._issuers[issuer.iss] = issuer
            self._sources[issuer.iss] = _source_for(issuer)
        self._replay_guard = replay_guard
        self._leeway = timedelta(seconds=leeway_seconds)
        self._max_lifetime = timedelta(seconds=max_lifetime_seconds)
        self._clock = clock
        self._http_get = http_get or _default_http_get
        # One cache per key file or URL (configured or allow-listed as a jku), all made up front:
        # nothing a token says can add one, and no lock is shared between them.
        locations = {s for s in self._sources.values() if s.kind != "inline"}
        locations.update(_KeySource("url", url) for i in self._issuers.values() for url in i.jku_allow)
        self._caches: dict[_KeySource, _KeyCache] = {
            source: _KeyCache(
                source,
                self._load,
                ttl=timedelta(seconds=jwks_ttl_seconds),
                min_refetch=timedelta(seconds=jwks_min_refetch_seconds),
                backoff=timedelta(seconds=jwks_backoff_seconds),
                max_backoff=timedelta(seconds=jwks_max_backoff_seconds),
                wait_seconds=jwks_wait_seconds,
            )
            for source in locations
        }

    # ------------------------------------------------------------------ keys

    def _load(self, source: _KeySource) -> dict[str, dict[str, Any]]:
        if source.kind == "file":
            return _read_jwks_bytes(Path(source.location).read_bytes())
        return _read_jwks_bytes(self._http_get(source.location))

    def key_loads(self, url_or_path: str) -> int:
        """How many times the keys at `url_or_path` were (re)loaded: failures are remembered, see _KeyCache."""
        return sum(c.loads for s, c in self._caches.items() if s.location == url_or_path)

    def _lookup(self, source: _KeySource, kid: str) -> dict[str, Any] | None:
        if source.kind == "inline":
            return source.inline.get(kid)
        return self._caches[source].key(kid, self._clock())

    def _find_key(self, issuer: TrustedIssuer, kid: str, jku: object) -> dict[str, Any]:
        """The issuer's configured keys first; an allow-listed `jku` is read only for a kid they lack."""
        if jku is not None and (not isinstance(jku, str) or jku not in issuer.jku_allow):
            raise AuthError("jku_not_allowed", repr(jku))
        configured = self._sources[issuer.iss]
        jwk = self._lookup(configured, kid)
        if jwk is None and isinstance(jku, str) and jku != configured.location:
            jwk = self._lookup(_KeySource("url", jku), kid)
        if jwk is None:
            raise AuthError("unknown_kid", kid)
        return jwk

    @staticmethod
    def _usable_key(jwk: Mapping[str, Any], alg: str) -> jwt.PyJWK:
        if jwk.get("kty") != _KEY_TYPE[alg]:
            raise AuthError("key_mismatch", f"{alg} token but {jwk.get('kty')!r} key")
        if alg in _EC_CURVE and jwk.get("crv") != _EC_CURVE[alg]:
            raise AuthError("key_mismatch", f"{alg} needs curve {_EC_CURVE[alg]}")
        if jwk.get("alg") not in (None, alg):
            raise AuthError("key_mismatch", f"key is for {jwk.get('alg')!r}")
        if jwk.get("use") not in (None, "sig"):
            raise AuthError("key_mismatch", "key is not a signing key")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise AuthError("key_mismatch", "key_ops does not allow verify")
        try:
            return jwt.PyJWK(dict(jwk), algorithm=alg)
        except jwt.PyJWTError as error:
            raise AuthError("bad_key", str(error)) from error

    # ------------------------------------------------------------------ verify

    def verify(self, authorization_header: str | None, *, audience: str) -> Claims:
        """Return the claims of a valid token for ``audience`` (the called endpoint URL) or raise AuthError."""
        token = self._bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise AuthError("malformed", str(error)) from error
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthError("alg_not_allowed", repr(alg))
        if header.get("typ") not in (None, "JWT", "jwt") or "crit" in header:
            raise AuthError("malformed", "unexpected typ or crit header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_kid")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthError("missing_claim" if iss is None else "malformed", "iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthError("unknown_issuer", iss)

        key = self._usable_key(self._find_key(issuer, kid, header.get("jku")), alg)

        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,  # time claims are checked below against the injected clock
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError as error:
            raise AuthError("bad_signature") from error
        except jwt.InvalidAlgorithmError as error:
            raise AuthError("alg_not_allowed", str(error)) from error
        except jwt.InvalidKeyError as error:
            raise AuthError("bad_key", str(error)) from error
        except jwt.PyJWTError as error:
            raise AuthError("malformed", str(error)) from error
        return self._check_claims(claims, iss=iss, audience=audience)

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if authorization_header is None or not authorization_header.strip():
            raise AuthError("missing")
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("not_bearer")
        token = token.strip()
        if not token or " " in token or token.count(".") != 2:
            raise AuthError("malformed", "not a compact JWS")
        return token

    def _check_claims(self, claims: Mapping[str, Any], *, iss: str, audience: str) -> Claims:
        aud = claims.get("aud")
        if aud is None:
            raise AuthError("missing_claim", "aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise AuthError("malformed", "aud")
        if audience not in audiences:
            raise AuthError("bad_audience", f"{aud!r} does not name {audience!r}")

        now = self._clock()
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        # Arithmetic on `now` only, never on the token's dates: exp in year 9999 + leeway overflowed (a 500).
        if now - self._leeway > exp:
            raise AuthError("expired")
        if "nbf" in claims and now + self._leeway < _numeric_date(claims, "nbf"):
            raise AuthError("not_yet_valid")
        if iat > now + self._leeway:
            raise AuthError("iat_in_future")
        if exp - iat > self._max_lifetime:
            raise AuthError("lifetime_too_long")
        # exp is now within max_lifetime of an iat no later than now + leeway: exp + leeway is in range.

        # CDS Hooks 2.0 defines no `sub` (the sandbox sends none): read when present, never required.
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise AuthError("malformed", "sub")
        jti = _required_string(claims, "jti")
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("malformed", "tenant")
        # The guard must remember the jti for as long as the token could still be accepted.
        if not self._replay_guard(iss, jti, exp + self._leeway):
            raise AuthError("replayed", jti)
        return Claims(iss=iss, sub=sub, aud=audience, jti=jti, exp=exp, iat=iat, tenant=tenant)


class JtiCache:
    """JWT ids this worker accepted recently, so replay protection survives a store outage.

    Every id the store accepted is noted here too (`note`, evicting the oldest when full), so a token
    used before an outage is still refused when replayed during it. While the store is down, ids are
    accepted here (`remember`) and kept pending until `drain` hands them to the store, so that every
    worker knows them once it is back.

        cache.remember("https://ehr", "j1", expires, now)   # True: first use (store down)
        cache.remember("https://ehr", "j1", expires, now)   # False: a replay
        cache.drain()                                       # [("https://ehr", "j1", expires)]

    CAUTION: during an outage a replay on another worker is not caught. When `capacity` ids are
    pending, `remember` raises OverflowError (the caller answers 503).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._seen: dict[tuple[str, str], datetime] = {}
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many ids wait to be written to the store."""
        with self._lock:
            return len(self._pending)

    def seen(self, iss: str, jti: str, now: datetime) -> bool:
        """True when (iss, jti) was accepted here and could still be replayed."""
        with self._lock:
            expires_at = self._seen.get((iss, jti))
            return expires_at is not None and expires_at > now

    def _make_room(self, now: datetime) -> None:
        if len(self._seen) < self._capacity:
            return
        self._seen = {k: v for k, v in self._seen.items() if v > now or k in self._pending}
        for key in list(self._seen):  # oldest first; pending ids are never dropped
            if len(self._seen) < self._capacity:
                return
            if key not in self._pending:
                del self._seen[key]
        if len(self._seen) >= self._capacity:
            raise OverflowError("too many JWT ids held while the store is down")

    def note(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> None:
        """Remember an id the store accepted (best effort: the store stays the authority)."""
        with self._lock:
            try:
                self._make_room(now)
            except OverflowError:
                return
            self._seen[(iss, jti)] = expires_at

    def remember(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Accept a first use while the store is down; False when it is a replay."""
        with self._lock:
            known = self._seen.get((iss, jti))
            if known is not None and known > now:
                return False
            self._make_room(now)
            self._seen[(iss, jti)] = expires_at
            self._pending.add((iss, jti))
            return True

    def drain(self) -> list[tuple[str, str, datetime]]:
        """The pending ids, as (iss, jti, expires_at); call `forget` for each once the store has it."""
        with self._lock:
            return [(iss, jti, self._seen[(iss, jti)]) for iss, jti in self._pending]

    def forget(self, iss: str, jti: str) -> None:
        """The store has this id now: no longer pending (still refused here until it expires)."""
        with self._lock:
            self._pending.discard((iss, jti))
