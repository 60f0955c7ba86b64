"""`cds token`: the dev issuer's trusted-issuers entry and JWTs get real calls through a service with auth on."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from cds.cli import main
from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from cds.settings import Settings
from tests.conftest import load_fixture
from tests.support.api import HASH_KEY, free_port, running


def run_token(*args: str) -> str:
    result = CliRunner().invoke(main, ["token", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_tokens_from_cds_token_open_discovery_and_a_hook_call(tmp_path: Path, pack: RulePack) -> None:
    keys = tmp_path / "issuer"
    issuers = tmp_path / "trusted-issuers.yaml"
    issuers.write_text(run_token("--trusted-issuers", "--key-dir", str(keys)), encoding="utf-8")
    assert stat.S_IMODE((keys / "key.pem").stat().st_mode) == 0o600
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        dev=False,
        port=port,
        public_base_url=base,
        database_url=f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        patient_hash_key=HASH_KEY,
        trusted_issuers=issuers,
    )
    with running(settings, evaluator=Evaluator(pack), clock=lambda: datetime.now(UTC)) as api:
        assert api.client.get("/cds-services").status_code == 401
        token = run_token("--aud", f"{base}/cds-services", "--key-dir", str(keys)).strip()
        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["typ"]) == ("ES384", "JWT")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert set(claims) == {"iss", "aud", "iat", "exp", "jti"}
        assert claims["exp"] - claims["iat"] == 300
        discovery = api.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
        assert discovery.status_code == 200
        assert {s["id"] for s in discovery.json()["services"]} == {"cramp-assessment", "calcium-order-check"}
        # Each token once (jti), each for one URL (aud).
        assert (
            api.client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        )
        call = run_token("--aud", f"{base}/cds-services/cramp-assessment", "--key-dir", str(keys)).strip()
        answer = api.client.post(
            "/cds-services/cramp-assessment",
            json=load_fixture("hook-request.json"),
            headers={"Authorization": f"Bearer {call}"},
        )
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.text)["cards"]


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "--aud URL is required"), (("--aud", "cds-services"), "--aud must be the http(s) URL")],
    ids=["no-aud", "not-a-url"],
)
def test_token_needs_the_url_it_is_for(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(main, ["token", "--key-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
