"""Every stage stays linear in the size of the request: guards that count work (comparisons, slices,
Python calls), never time, so that a quadratic path cannot come back unnoticed.

The example that prompted them: card rendering de-duplicated evidence with list membership tests and
re-joined the summary's labels once per candidate length, so 20,000 Conditions took minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from bench.complexity import active_conditions
from cds import cards
from cds.cards import render_cards
from cds.evaluation import Evaluator
from tests.conftest import FROZEN_NOW
from tests.support.api import hook_request

PATIENT = "hook-patient"


def request_with_conditions(count: int) -> dict[str, Any]:
    """The fixture request with `count` active Conditions that the rules read (cramp and varicose veins)."""
    request = hook_request()
    request["prefetch"]["conditions"] = active_conditions(PATIENT, count)
    return request


class CountingStr(str):
    """A str that counts the equality tests made on it (a list membership test makes one per item)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingStr.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def comparisons_to_render(evaluator: Evaluator, count: int) -> int:
    evaluation = evaluator.evaluate_document(request_with_conditions(count), now=FROZEN_NOW)
    facts = evaluation.facts
    facts.evidence = {key: tuple(CountingStr(r) for r in refs) for key, refs in facts.evidence.items()}
    CountingStr.comparisons = 0
    rendered = render_cards(
        evaluation.outcome, facts, evaluation.record, evaluator.pack, new_id=evaluator.new_id
    )
    assert rendered  # the conditions make cramp context and a poor-circulation card
    return CountingStr.comparisons


def test_rendering_compares_evidence_a_bounded_number_of_times_per_resource(evaluator: Evaluator) -> None:
    small, large = comparisons_to_render(evaluator, 200), comparisons_to_render(evaluator, 800)
    # Quadratic de-duplication made ~n²/2 comparisons (320,000 at 800); a set or dict makes none for
    # distinct references.
    assert large <= 4 * 800, (small, large)


class CountingLabels(tuple[str, ...]):
    """A tuple that counts the items handed out by slicing (`labels[:keep]`)."""

    items_sliced = 0

    def __getitem__(self, index: Any) -> Any:
        result = tuple.__getitem__(self, index)
        if isinstance(index, slice):
            CountingLabels.items_sliced += len(result)
        return result


@pytest.mark.parametrize("count", [10, 1000, 100_000])
def test_the_summary_slices_a_bounded_number_of_labels(count: int) -> None:
    labels = CountingLabels(f"finding {i}" for i in range(count))
    CountingLabels.items_sliced = 0
    summary = cards._summary("Cramps with {evidence}; consider {orders}", labels, ["Order TSH"])
    assert len(summary) <= cards.SUMMARY_LIMIT
    # Bounded by the summary's length, not by the number of labels (it was ~count²/2).
    assert CountingLabels.items_sliced <= cards.SUMMARY_LIMIT**2


@contextmanager
def python_calls() -> Iterator[list[int]]:
    """Count Python function calls and C function calls made while the block runs (this thread)."""
    counter = [0]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counter[0] += 1

    sys.setprofile(profile)
    try:
        yield counter
    finally:
        sys.setprofile(None)


def calls_to_evaluate(evaluator: Evaluator, count: int) -> int:
    request = request_with_conditions(count)
    evaluator.evaluate_document(request, now=FROZEN_NOW)  # warm: memos and lazy imports
    with python_calls() as counter:
        evaluator.evaluate_document(request, now=FROZEN_NOW)
    return counter[0]


def test_calls_per_resource_stay_flat_from_intake_to_cards(evaluator: Evaluator) -> None:
    """Four times the Conditions cost at most about four times the calls, through every stage."""
    small, large = calls_to_evaluate(evaluator, 100), calls_to_evaluate(evaluator, 400)
    assert large <= 4.4 * small, (small, large, large / small)
