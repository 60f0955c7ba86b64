"""One HTTP round trip with JWT authentication on, for the compatibility subset (`pytest -m compat`).

.ci/run runs the whole suite on the default Python and, on every other supported Python present,
the tests marked `compat`: the engine adapter (tests/test_engine.py), intake (tests/test_intake.py)
and this file: discovery, a patient-view call with cards, and feedback on one of them, each with a
freshly signed ES384 token, against the real app under uvicorn on a loopback port.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.support.api import NOW, Api, Issuer, hook_request, running, secure_settings

pytestmark = pytest.mark.compat

SERVICE = "/cds-services/cramp-assessment"


@pytest.fixture
def api(tmp_path: Path, pack: RulePack) -> Iterator[tuple[Api, Issuer]]:
    issuer = Issuer()
    with running(secure_settings(tmp_path, issuer), evaluator=Evaluator(pack)) as api:
        yield api, issuer


def test_discovery_hook_call_and_feedback_with_jwt(api: tuple[Api, Issuer]) -> None:
    server, issuer = api

    def bearer(path: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.token(server.url(path), now=NOW)}"}

    assert server.client.get("/cds-services").status_code == 401
    discovery = server.client.get("/cds-services", headers=bearer("/cds-services"))
    assert discovery.status_code == 200
    assert {s["id"] for s in discovery.json()["services"]} >= {"cramp-assessment", "calcium-order-check"}

    answer = server.client.post(SERVICE, json=hook_request(), headers=bearer(SERVICE))
    assert answer.status_code == 200, answer.text
    cards = answer.json()["cards"]
    assert cards, f"no cards on Python {sys.version_info[:2]}"
    assert all(card["indicator"] in {"info", "warning", "critical"} for card in cards)

    feedback = {
        "feedback": [{"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW.isoformat()}]
    }
    stored = server.client.post(SERVICE + "/feedback", json=feedback, headers=bearer(SERVICE + "/feedback"))
    assert stored.status_code == 200, stored.text
