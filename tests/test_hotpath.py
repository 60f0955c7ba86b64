"""The hook path hops to no thread it does not need, and start-up's objects are kept out of full collections."""

from __future__ import annotations

import gc
import inspect
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from cds.api import services
from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.support.api import dev_settings, hook_request, running


def _calls(dependant: Dependant) -> list[object]:
    found: list[object] = []
    for sub in dependant.dependencies:
        found.append(sub.call)
        found.extend(_calls(sub))
    return found


def test_no_dependency_of_the_hook_path_runs_in_the_thread_pool() -> None:
    """FastAPI runs a plain `def` dependency in the thread pool: each one is a hop per call."""
    route = next(r for r in services.router.routes if isinstance(r, APIRoute))
    assert route.path == "/cds-services/{service_id}"
    calls = _calls(route.dependant)
    assert len(calls) >= 4  # runtime, client, service, body
    sync = [getattr(call, "__name__", repr(call)) for call in calls if not inspect.iscoroutinefunction(call)]
    assert sync == []


def test_start_up_objects_are_frozen_while_serving_and_released_after(tmp_path: Path, pack: RulePack) -> None:
    with running(dev_settings(tmp_path), evaluator=Evaluator(pack)) as api:
        assert gc.get_freeze_count() > 1000
        response = api.client.post("/cds-services/cramp-assessment", json=hook_request())
        assert response.status_code == 200
    assert gc.get_freeze_count() == 0
