"""The conformance matrix (tests/conformance.csv) covers every CDS Hooks 2.0 service requirement.

Each requirement ID of ../shared/reference/cds-hooks-2.0-service-requirements.csv has one row: the
pytest node ids that check it, or `n/a: <reason>`. A node id must name a test function that exists.
"""

from __future__ import annotations

import ast
import csv
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "tests" / "conformance.csv"
REQUIREMENTS = ROOT.parent / "shared" / "reference" / "cds-hooks-2.0-service-requirements.csv"


def matrix() -> dict[str, str]:
    with MATRIX.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert set(rows[0]) == {"id", "tests"}
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "an ID appears twice in tests/conformance.csv"
    return {row["id"]: row["tests"].strip() for row in rows}


def requirement_ids() -> list[str]:
    if not REQUIREMENTS.is_file():
        pytest.skip("../shared/reference/cds-hooks-2.0-service-requirements.csv is not present")
    with REQUIREMENTS.open(encoding="utf-8", newline="") as handle:
        return [row["ID"] for row in csv.DictReader(handle) if "Service" in row["Actors"]]


@cache
def defined_tests(path: str) -> frozenset[str]:
    """Names of the module-level test functions defined in a test file."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


def node_problem(node_id: str) -> str | None:
    """Why `node_id` does not name an existing test, or None when it does."""
    path, sep, name = node_id.partition("::")
    name = name.split("[", 1)[0]
    if not sep or not path.startswith("tests/") or not path.endswith(".py") or "::" in name:
        return "is not of the form tests/<file>.py::<test function>"
    if not (ROOT / path).is_file():
        return f"{path} does not exist"
    if name not in defined_tests(path):
        return f"{path} defines no test function {name}"
    return None


def test_every_service_requirement_has_a_row() -> None:
    missing = [rid for rid in requirement_ids() if rid not in matrix()]
    assert missing == [], f"requirement IDs without a row in tests/conformance.csv: {missing}"


def test_no_row_names_an_unknown_requirement() -> None:
    unknown = sorted(set(matrix()) - set(requirement_ids()), key=int)
    assert unknown == []


def test_every_row_names_tests_that_exist_or_a_reason() -> None:
    problems = []
    for rid, tests in matrix().items():
        if tests.startswith("n/a:"):
            if len(tests.removeprefix("n/a:").strip()) < 10 or "\n" in tests:
                problems.append(f"{rid}: the n/a reason must be one readable line")
            continue
        if not tests:
            problems.append(f"{rid}: no tests and no n/a reason")
        for node_id in tests.split():
            problem = node_problem(node_id)
            if problem:
                problems.append(f"{rid}: {node_id} {problem}")
    assert problems == []


@pytest.mark.parametrize(
    ("node_id", "ok"),
    [
        ("tests/test_conformance.py::test_every_service_requirement_has_a_row", True),
        ("tests/test_conformance.py::test_every_service_requirement_has_a_row[param]", True),
        ("tests/test_conformance.py::test_no_such_test", False),
        ("tests/test_no_such_file.py::test_x", False),
        ("tests/test_conformance.py", False),
        ("../etc/passwd.py::test_x", False),
    ],
    ids=["exists", "parametrized", "unknown-function", "unknown-file", "no-function", "outside-tests"],
)
def test_node_ids_are_checked(node_id: str, ok: bool) -> None:
    assert (node_problem(node_id) is None) is ok
