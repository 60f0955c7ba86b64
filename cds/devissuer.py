"""A local test issuer for development: a P-384 key kept under var/, its JWK Set, and CDS Hooks JWTs.

`cds token` uses it, so that a developer can call a service that has authentication on (`cds serve`
without --dev) the way an EHR would, without the public sandbox::

    cds token --trusted-issuers > var/dev-issuer/trusted-issuers.yaml   # CDS_TRUSTED_ISSUERS for a test service
    cds token --aud http://127.0.0.1:8000/cds-services                   # a JWT for one call

The tokens carry what CDS Hooks 2.0 defines (iss, aud, exp, iat, jti; header alg ES384, typ JWT, kid),
as the sandbox sends them. Never list this issuer in a real deployment's trusted issuers: its key sits
unencrypted on the developer's disk.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

DEV_ISSUER: Final = "urn:cramp-cds:dev-issuer"
DEV_KID: Final = "cramp-cds-dev-1"
KEY_FILE: Final = "key.pem"


def load_or_create_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's private key from `directory`/key.pem, created (mode 0600) on first use."""
    path = directory / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return key
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return key


def public_jwks(key: ec.EllipticCurvePrivateKey, *, kid: str = DEV_KID) -> dict[str, Any]:
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**public, "kid": kid, "use": "sig", "alg": "ES384"}]}


def trusted_issuers_entry(key: ec.EllipticCurvePrivateKey, *, iss: str = DEV_ISSUER) -> dict[str, Any]:
    """A trusted-issuers document (deploy/trusted-issuers.yaml shape) naming only this issuer."""
    return {"issuers": [{"iss": iss, "jwks": public_jwks(key)}]}


def mint(
    key: ec.EllipticCurvePrivateKey,
    *,
    aud: str,
    now: datetime,
    iss: str = DEV_ISSUER,
    lifetime: timedelta = timedelta(minutes=5),
    tenant: str | None = None,
) -> str:
    """A CDS Hooks 2.0 JWT for one call: `aud` is the exact URL to be called."""
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": DEV_KID, "typ": "JWT"})
