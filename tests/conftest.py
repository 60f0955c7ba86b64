"""Shared fixtures: the rule pack, a pinned-id evaluator, frozen time in a non-UTC zone, shared FHIR data."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from cds.evaluation import Evaluator
from cds.rulepack import RulePack, load_rule_pack

pytest_plugins = ["tests.support.postgres", "tests.support.browser"]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
FIXTURES = ROOT / "fixtures"
SHARED_EXAMPLES = ROOT.parent / "shared" / "fhir-examples"
# Evaluation time used across the suite: the fixtures' own "now", seen from a zone far from UTC.
FROZEN_NOW = datetime(2026, 6, 1, 21, 30, tzinfo=ZoneInfo("Pacific/Auckland"))

# The test files that take longest (`--durations` of a fresh-clone `make test`, 2026-12-01), run first:
# with pytest-xdist each file stays on one worker (--dist loadfile, in this order with
# --no-loadscope-reorder), so no worker is left alone with one of them at the end of the run.
SLOW_FILES_FIRST = (
    "test_schemathesis.py",  # ~1,500 real HTTP requests with signed JWTs
    "test_properties.py",  # thousands of generated documents through the whole pipeline
    "test_cli.py",  # the `cds` console script as a new process per test
    "test_security_http.py",  # real `cds serve` processes, pip-audit
    "test_faults.py",  # private PostgreSQL cluster, SIGKILLed workers
    "test_screen.py",
    "test_soak.py",
    "test_bench.py",
    "test_server.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files first (stable: the order inside each file, and of the other files, is kept)."""
    rank = {name: position for position, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def pack() -> RulePack:
    return load_rule_pack(RULES)


@pytest.fixture
def new_id() -> Any:
    """Pinned ids: card and suggestion uuids are predictable within a test."""
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(counter):012d}"


@pytest.fixture
def evaluator(pack: RulePack, new_id: Any) -> Evaluator:
    return Evaluator(pack, new_id=new_id)


@pytest.fixture
def frozen_time() -> Iterator[datetime]:
    with time_machine.travel(FROZEN_NOW, tick=False):
        yield FROZEN_NOW


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def shared_examples() -> Path:
    if not SHARED_EXAMPLES.is_dir():
        pytest.skip("../shared/fhir-examples is not present")
    return SHARED_EXAMPLES
