"""The durable_rules adapter: each measured engine hazard, shown on the raw engine, and its guard.

Part of the compatibility subset that .ci/run runs on every supported Python (marker `compat`).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import textwrap
import threading
import tomllib
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from cds import engine as engine_module
from cds.engine import MAX_LIVE_SESSIONS, RuleEngine, _Run, encode_facts, encode_scalar, session_hash
from cds.errors import EngineError
from cds.facttypes import Fact
from cds.rulepack import CompiledRule, RulePack
from tests.conftest import ROOT

pytestmark = pytest.mark.compat

# Two session ids with the same 32-bit FNV-1a hash (found by brute force over "c<n>").
COLLIDING = ("c693596", "c1170850")

RAW_HOST = """
from durable import engine
class Host(engine.Host):
    def _run(self):
        pass
"""


def run_raw(body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a snippet against the raw engine in a child process (some hazards kill the process)."""
    code = RAW_HOST + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | env if env else None,
    )


def rule(rule_id: str, *patterns: dict[str, Any], finding: str | None = None) -> CompiledRule:
    produces: dict[str, Any] = (
        {"type": "finding", "name": finding} if finding else {"type": "cause", "topic": "t", "rule": rule_id}
    )
    return CompiledRule(id=rule_id, patterns=tuple(patterns), produces=produces)


def answer(fact_id: str, number: Any) -> Fact:
    return {"type": "answer", "id": fact_id, "label": fact_id, "item": "cramp-frequency", "number": number}


def test_requires_python_is_the_pythons_the_makefile_builds() -> None:
    """pyproject's requires-python admits exactly SUPPORTED_PYTHONS of the Makefile (3.11 to 3.13)."""
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("SUPPORTED_PYTHONS"))
    supported = line.split(":=")[1].split()
    assert supported == ["3.11", "3.12", "3.13"]
    assert all(f"{version}.0" in spec for version in supported)
    assert "3.10.12" not in spec
    assert "3.14.0" not in spec
    assert "{}.{}.{}".format(*sys.version_info[:3]) in spec


def test_engine_starts_no_background_threads(pack: RulePack) -> None:
    before = {t.ident for t in threading.enumerate()}
    engine = RuleEngine(pack.compiled)
    engine.evaluate([answer("f1", 3)])
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert started == []


# glibc fills freed memory with this byte (MALLOC_PERTURB_), so a read of freed memory crashes at once.
PERTURBED = {"MALLOC_PERTURB_": "165"}
GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("perturbed", [False, True], ids=["plain", "malloc-perturbed"])
def test_raw_engine_reads_freed_memory_deleting_a_session_where_no_action_ran(perturbed: bool) -> None:
    """The hazard: `delete_state` of a session in which no action ran reads freed memory.

    How that shows depends on the build. Plain: Python 3.11 dies of SIGSEGV, 3.12 of SIGABRT (glibc's
    heap check), and on 3.13 (durable-rules compiled by the Makefile with the PyEval_CallObject macro)
    the freed memory happens to be intact and the process runs on. With glibc's MALLOC_PERTURB_ the
    freed memory is overwritten, and the read kills the process on every version.
    """
    if perturbed and not GLIBC:
        pytest.skip("MALLOC_PERTURB_ is a glibc feature")
    if not perturbed and sys.version_info >= (3, 13):
        pytest.skip(
            "on the 3.13 build the freed memory is still intact when read, so the plain run does not crash; "
            "the malloc-perturbed case shows the hazard there"
        )
    result = run_raw(
        """
        h = Host({"r": {"j": {"all": [{"a": {"type": "x"}}, {"b": {"type": "y"}}], "run": lambda c: None}}})
        h.assert_fact("r", {"sid": "s1", "type": "x"})
        h.delete_state("r", "s1")
        """,
        env=PERTURBED if perturbed else None,
    )
    assert result.returncode < 0  # killed by a signal (SIGSEGV or SIGABRT)


def test_sentinel_lets_state_be_deleted_when_no_rule_fires() -> None:
    """The same half-matched join as above, through the adapter, 50 times, with freed memory overwritten
    (where glibc allows): the sentinel action makes the deletion safe on every Python version."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                from cds.engine import RuleEngine
                from cds.rulepack import CompiledRule
                rule = CompiledRule(id="j", patterns=({"$and": [{"type": "answer"}]}, {"$and": [{"type": "finding"}]}),
                                    produces={"type": "cause", "topic": "t", "rule": "j"})
                engine = RuleEngine([rule])
                for _ in range(50):
                    out = engine.evaluate([{"type": "answer", "id": "f1", "label": "x", "item": "i", "number": 1}])
                print(len(out.firings), engine.live_sessions)
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=os.environ | PERTURBED if GLIBC else None,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]


def test_session_hash_is_the_engines_own_key() -> None:
    """Facts asserted under one id are visible under a colliding id: our hash predicts the engine's."""
    assert session_hash(COLLIDING[0]) == session_hash(COLLIDING[1])
    result = run_raw(
        f"""
        h = Host({{"r": {{"j": {{"all": [{{"a": {{"type": "x"}}}}], "run": lambda c: None}}}}}})
        h.assert_fact("r", {{"sid": "{COLLIDING[0]}", "type": "x", "n": 1}})
        print(len(h.get_facts("r", "{COLLIDING[1]}")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_new_session_id_skips_a_hash_that_is_live(pack: RulePack) -> None:
    engine = RuleEngine(pack.compiled)
    upcoming = f"s{next(engine._sids)}"
    nxt = f"s{int(upcoming[1:]) + 1}"
    engine._sids = iter(range(int(upcoming[1:]), 10**9))  # type: ignore[assignment]
    engine._live[session_hash(upcoming)] = "someone-else"
    assert engine._new_session_id() == nxt


def test_raw_batch_with_an_unread_fact_raises_before_actions_run() -> None:
    result = run_raw(
        """
        from durable.engine import MessageNotHandledException
        fired = []
        h = Host({"r": {"j": {"all": [{"a": {"type": "x"}}], "run": lambda c: fired.append(1)}}})
        try:
            h.assert_facts("r", [{"sid": "s1", "type": "x"}, {"sid": "s1", "type": "nobody-reads-this"}])
        except MessageNotHandledException:
            print("raised", len(fired))
        """
    )
    assert result.stdout.strip() == "raised 0"


def test_unread_facts_are_reported_and_do_not_stop_the_others(pack: RulePack) -> None:
    engine = RuleEngine([rule("only-answers", {"$and": [{"type": "answer"}]})])
    condition: Fact = {"type": "condition", "id": "f2", "label": "c", "group": "cramp"}
    outcome = engine.evaluate([answer("f1", 2), condition])
    assert [f.rule for f in outcome.firings] == ["only-answers"]
    assert outcome.unread == ("f2",)


def test_raw_engine_swallows_exceptions_in_actions() -> None:
    result = run_raw(
        """
        h = Host({"r": {"j": {"all": [{"a": {"type": "x"}}], "run": lambda c: 1 / 0}}})
        h.assert_fact("r", {"sid": "s1", "type": "x"})
        print("no exception reached the caller")
        """
    )
    assert result.stdout.strip() == "no exception reached the caller"


class FailingEngine(RuleEngine):
    def _make_action(self, rule: CompiledRule) -> Any:
        def action(c: Any, run: _Run) -> None:
            raise RuntimeError(f"action of {rule.id} failed")

        return action


def test_an_exception_in_an_action_is_raised_from_evaluate() -> None:
    engine = FailingEngine([rule("boom", {"$and": [{"type": "answer"}]})])
    with pytest.raises(EngineError, match="action of boom failed"):
        engine.evaluate([answer("f1", 2)])
    assert engine.live_sessions == 0


def test_raw_engine_warns_utcfromtimestamp_from_python_3_12() -> None:
    """Why the adapter runs actions itself: durable_rules' own dispatch (`_unix_now`) calls
    datetime.utcfromtimestamp for each action, deprecated since 3.12 (under `-W error` the API answered
    500)."""
    result = run_raw(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h = Host({"r": {"j": {"all": [{"a": {"type": "x"}}], "run": lambda c: None}}})
            h.assert_fact("r", {"sid": "s1", "type": "x"})
        print(sorted({f"{w.category.__name__}: {str(w.message).partition(' and ')[0]}" for w in caught}))
        """
    )
    assert result.returncode == 0, result.stderr
    expected = ["DeprecationWarning: datetime.datetime.utcfromtimestamp() is deprecated"]
    assert result.stdout.strip() == (repr(expected) if sys.version_info >= (3, 12) else "[]")


def test_the_adapter_hides_that_warning_and_no_other(pack: RulePack) -> None:
    """No warning reaches the caller from a whole evaluation (which chains through many actions)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = RuleEngine(pack.compiled).evaluate([answer("f1", 3), answer("f2", 2)])
    assert outcome.firings
    assert [str(w.message) for w in caught] == []


class WarningEngine(RuleEngine):
    """An action of ours that raises the very same DeprecationWarning text: not durable's, so not hidden."""

    def _make_action(self, rule: CompiledRule) -> Any:
        def action(c: Any, run: _Run) -> None:
            warnings.warn(
                "datetime.datetime.utcfromtimestamp() is deprecated (from an action)",
                DeprecationWarning,
                stacklevel=1,
            )

        return action


def test_a_warning_from_our_own_action_still_surfaces() -> None:
    """The suite turns warnings into errors; the engine filter is scoped to durable.engine's module."""
    engine = WarningEngine([rule("warns", {"$and": [{"type": "answer"}]})])
    with pytest.raises(EngineError, match="from an action"):
        engine.evaluate([answer("f1", 2)])
    assert engine.live_sessions == 0


def test_raw_none_fires_when_the_excluded_fact_comes_later_in_the_batch() -> None:
    result = run_raw(
        """
        fired = []
        h = Host({"r": {"j": {"all": [{"a": {"type": "x"}}, {"b$not": {"type": "y"}}], "run": lambda c: fired.append(1)}}})
        h.assert_facts("r", [{"sid": "s1", "type": "x"}, {"sid": "s1", "type": "y"}])
        print(len(fired))
        """
    )
    assert result.stdout.strip() == "1"


def test_absence_is_an_explicit_fact_not_a_negation(pack: RulePack) -> None:
    """No compiled rule uses negation; 'no recent result' is matched as a lab fact with band none."""
    assert not [r.id for r in pack.compiled for p in r.patterns if any(k.endswith("$not") for k in p)]
    untested = next(r for r in pack.compiled if r.id == "workup.tsh-untested")
    assert {"band": "none"} in untested.patterns[1]["$and"]


def test_raw_registration_mutates_the_definition() -> None:
    result = run_raw(
        """
        definition = {"r": {"j": {"all": [{"a": {"type": "x"}}], "run": lambda c: None}}}
        Host(definition)
        print("run" in definition["r"]["j"])
        """
    )
    assert result.stdout.strip() == "False"


def test_registration_leaves_our_definition_intact(pack: RulePack) -> None:
    engine = RuleEngine(pack.compiled)
    assert all("run" in body for body in engine.definition.values())
    again = RuleEngine(pack.compiled)  # the compiled pack can be registered again
    assert len(again.definition) == len(engine.definition)


def test_live_sessions_are_deleted_after_each_evaluation(pack: RulePack) -> None:
    engine = RuleEngine(pack.compiled)
    for _ in range(MAX_LIVE_SESSIONS + 10):
        engine.evaluate([answer("f1", 2)])
    assert engine.live_sessions == 0


def test_session_limit_is_refused_not_overrun(pack: RulePack) -> None:
    engine = RuleEngine(pack.compiled)
    engine._live.update({i: f"x{i}" for i in range(MAX_LIVE_SESSIONS)})
    with pytest.raises(EngineError, match="too many live engine sessions"):
        engine.evaluate([answer("f1", 2)])


def test_raw_engine_coerces_types_loosely() -> None:
    result = run_raw(
        """
        fired = []
        h = Host({"r": {"j": {"all": [{"a": {"$gte": {"v": 0.3}}}], "run": lambda c: fired.append(1)}}})
        h.assert_fact("r", {"sid": "s1", "v": "abc"})
        print(len(fired))
        """
    )
    assert result.stdout.strip() == "1"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(answer("f1", "abc"), id="string-for-number"),
        pytest.param(answer("f1", True), id="bool-for-number"),
        pytest.param(answer("f1", float("nan")), id="nan"),
        pytest.param(
            {
                "type": "lab",
                "id": "f1",
                "label": "x",
                "analyte": "tsh",
                "band": "high",
                "value": float("inf"),
            },
            id="infinite-value",
        ),
        pytest.param({"type": "mystery", "id": "f1", "label": "x"}, id="unknown-type"),
        pytest.param({"type": "answer", "id": "f1", "label": "x", "colour": "red"}, id="unknown-field"),
    ],
)
def test_facts_are_type_checked_before_they_reach_the_engine(pack: RulePack, bad: Fact) -> None:
    engine = RuleEngine(pack.compiled)
    with pytest.raises(EngineError, match="refused"):
        engine.evaluate([bad])
    assert engine.live_sessions == 0


def test_chaining_reaches_three_levels(pack: RulePack) -> None:
    """answer -> finding (recurrent, older-adult) -> cause (seek-care), with each firing's inputs recorded."""
    engine = RuleEngine(pack.compiled)
    patient: Fact = {"type": "patient", "id": "f2", "label": "age 60", "age": 60}
    outcome = engine.evaluate([answer("f1", 3), patient])
    fired = {f.rule: f for f in outcome.firings}
    seek = fired["seek-care.recurrent-older-adult"]
    derived = {str(f["id"]): f for f in outcome.derived}
    assert [derived[i]["name"] for i in seek.inputs] == ["cramp-context", "recurrent", "older-adult"]
    assert fired["finding.older-adult"].inputs == ("f2",)


# --------------------------------------------------------------------------- numbers the engine misreads

# Measured on the raw engine (issue 9 class 6): a number with an exponent and no decimal point is
# misread, the same value with one is read right. Python writes floats below 1e-4 and from 1e16 up
# this way (`repr(3e-05) == '3e-05'`), and durable hands the engine json.dumps' text.
RAW_NUMBERS = {
    "3e-05": False,
    "3.0e-05": True,
    "0.00003": True,
    "1e-300": False,
    "1.0e-300": True,
    "-1e-07": False,
    "-1.0e-07": True,
    "5e-324": False,
    "5.0e-324": True,
    "2.2250738585072014e-308": True,
    "-0.0": True,
    "25": True,
    "-18446744073709551621": True,
}


def test_raw_engine_misreads_an_exponent_without_a_decimal_point() -> None:
    """What `encode_scalar` guards: each text is compared with `< 30` by the raw engine."""
    result = run_raw(
        """
        import json, os
        import durable_rules_engine as dre
        texts = json.loads(os.environ["RAW_NUMBERS"])
        fired = []
        h = Host({"r": {
            "lt": {"all": [{"m": {"$and": [{"t": "x"}, {"$lt": {"v": 30}}]}}], "run": lambda c: fired.append(c.m["id"])},
            "s": {"all": [{"m": {"t": "s"}}], "run": lambda c: None},
        }})
        rules = h.get_ruleset("r")
        seen = {}
        for n, text in enumerate(texts):
            fired.clear()
            doc = '[{"t":"s","id":"s","sid":"s' + str(n) + '"},{"t":"x","id":"x","v":' + text + ',"sid":"s' + str(n) + '"}]'
            h._handle_function(rules, lambda f: rules._handle_result(dre.assert_facts(rules._handle, doc), f), [], None)
            h.delete_state("r", "s" + str(n))
            seen[text] = "x" in fired
        print(json.dumps(seen))
        """,
        env={"RAW_NUMBERS": json.dumps(list(RAW_NUMBERS))},
    )
    assert json.loads(result.stdout) == RAW_NUMBERS, result.stderr


def lab(value: Any, fact_id: str = "f1") -> Fact:
    return {"type": "lab", "id": fact_id, "label": "egfr", "analyte": "egfr", "band": "low", "value": value}


LOW_EGFR = rule("egfr-low", {"$and": [{"type": "lab"}, {"analyte": "egfr"}, {"$lt": {"value": 30}}]})
HIGH_EGFR = rule("egfr-high", {"$and": [{"type": "lab"}, {"analyte": "egfr"}, {"$gt": {"value": 100}}]})


@pytest.mark.parametrize(
    "value", [3e-05, 1e-300, 5e-324, -1e-07, -0.0, 29.999999999999996, 30.000000000000004, 1e16, 1e308, 2**70]
)
def test_the_adapter_gives_the_engine_every_number_as_python_reads_it(value: float) -> None:
    engine = RuleEngine([LOW_EGFR, HIGH_EGFR])
    fired = {f.rule for f in engine.evaluate([lab(value)]).firings}
    assert fired == {r for r, hit in (("egfr-low", value < 30), ("egfr-high", value > 100)) if hit}


def test_encode_scalar_writes_a_decimal_point_in_every_float_mantissa() -> None:
    assert encode_scalar(3e-05) == "3.0e-05"
    assert encode_scalar(1e16) == "1.0e+16"
    assert encode_scalar(-0.0) == "-0.0"
    assert json.loads(encode_facts([{"a": 1e-300, "b": 'q"\\\x00é', "c": False, "d": 2**80}])) == [
        {"a": 1e-300, "b": 'q"\\\x00é', "c": False, "d": 2**80}
    ]
    with pytest.raises(EngineError, match="cannot take the number"):
        encode_scalar(float("inf"))


scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(
        ["1e-7", "x9e+2", "none-low", "null"]
    ),  # strings that look like what the fast path avoids
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(["id", "type", "value", "band", "age"]), scalars), max_size=5)
)
def test_encode_facts_writes_every_value_as_it_is_and_every_exponent_with_a_decimal_point(
    batch: list[dict[str, Any]],
) -> None:
    """Whichever way encode_facts takes (orjson, or value by value), the text reads back as the batch and
    holds no number durable misreads (an exponent after a mantissa without a decimal point)."""
    numbers: list[str] = []
    text = encode_facts(batch)
    assert json.loads(text, parse_float=lambda t: numbers.append(t) or float(t)) == batch
    assert [t for t in numbers if "e" in t.lower() and "." not in t.lower().partition("e")[0]] == []


def test_a_fact_the_engine_misreads_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: were the engine to misread a fact again, evaluate raises instead of answering less."""
    # durable's own writing (json.dumps), which puts 3e-05 as the engine misreads it
    monkeypatch.setattr(engine_module, "encode_facts", lambda facts: json.dumps(list(facts)))
    engine = RuleEngine([LOW_EGFR])
    with pytest.raises(EngineError, match=r"did not read facts f1 as sent: rules egfr-low should have fired"):
        engine.evaluate([lab(3e-05)])


def test_the_engine_sees_no_free_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels and units never reach the engine: only the fields the rules read, and the fact id."""
    sent: list[str] = []
    real = engine_module.encode_facts
    monkeypatch.setattr(engine_module, "encode_facts", lambda facts: sent.append(real(facts)) or real(facts))
    fact = {**lab(12.0), "label": 'free "text" \x00 é', "unit": "mL/min"}
    RuleEngine([LOW_EGFR]).evaluate([fact])
    (batch,) = [json.loads(text) for text in sent]
    assert batch[1] == {"id": "f1", "type": "lab", "analyte": "egfr", "value": 12.0, "sid": batch[1]["sid"]}


finite = st.floats(allow_nan=False, allow_infinity=False)
extreme_ints = st.integers(min_value=-(2**80), max_value=2**80)
text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@st.composite
def fact_sets(draw: st.DrawFn, analytes: list[str], groups: list[str], items: list[str]) -> list[Fact]:
    facts: list[Fact] = [
        {"type": "patient", "label": draw(text), "age": draw(extreme_ints), "age_known": True}
    ]
    for analyte in draw(st.lists(st.sampled_from(analytes), max_size=6)):
        band = draw(st.sampled_from(["low", "normal", "high", "none"]))
        facts.append(
            {"type": "lab", "label": draw(text), "analyte": analyte, "band": band, "value": draw(finite)}
        )
    for group in draw(st.lists(st.sampled_from(groups), max_size=4)):
        facts.append(
            {"type": "condition", "label": draw(text), "group": group, "onset_months": draw(extreme_ints)}
        )
    for item in draw(st.lists(st.sampled_from(items), max_size=4)):
        facts.append({"type": "answer", "label": draw(text), "item": item, "number": draw(extreme_ints)})
    for n, fact in enumerate(facts):
        fact["id"] = f"f{n + 1}"
    return facts


def _pack_values(pack: RulePack, kind: str, name: str) -> list[str]:
    found = {
        str(term[name])
        for r in pack.compiled
        for p in r.patterns
        if p["$and"][0]["type"] == kind
        for term in p["$and"]
        if name in term
    }
    return sorted(found) or ["none"]


@pytest.fixture(scope="module")
def pack_engine(pack: RulePack) -> RuleEngine:
    return RuleEngine(pack.compiled)


def test_every_extreme_value_reaches_the_engine_as_sent(pack: RulePack, pack_engine: RuleEngine) -> None:
    """Hypothesis over every numeric field (floats down to subnormals and up to 1.8e308, integers to
    2**80) and any text in labels: the engine fires exactly the rules Python says the facts satisfy
    (evaluate checks that itself and raises otherwise)."""
    strategy = fact_sets(
        _pack_values(pack, "lab", "analyte"),
        _pack_values(pack, "condition", "group"),
        _pack_values(pack, "answer", "item"),
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategy)
    def check(facts: list[Fact]) -> None:
        outcome = pack_engine.evaluate(facts)
        read = [f for f in facts if str(f["id"]) not in outcome.unread]
        assert {f.rule for f in outcome.firings} == pack_engine.expected_firings(read)

    check()


OVERLAPPING = [
    rule(
        "two-overlapping",
        {"$and": [{"type": "lab"}, {"analyte": "x"}]},
        {"$and": [{"type": "lab"}, {"band": "low"}]},
    ),
    rule(
        "three-labs",
        {"$and": [{"type": "lab"}, {"band": "low"}]},
        {"$and": [{"type": "lab"}, {"band": "low"}]},
        {"$and": [{"type": "lab"}, {"analyte": "y"}]},
    ),
]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["x", "y", "z"]), st.sampled_from(["low", "normal"])),
        min_size=1,
        max_size=4,
    )
)
def test_one_fact_never_fills_two_patterns_of_a_rule_in_the_engine_or_the_check(
    labs: list[tuple[str, str]],
) -> None:
    """durable binds a different fact to each pattern of a rule; the adapter's check expects the same
    (otherwise a rule whose patterns overlap would be reported as misread)."""
    facts: list[Fact] = [
        {"type": "lab", "id": f"f{n}", "label": "l", "analyte": analyte, "band": band}
        for n, (analyte, band) in enumerate(labs)
    ]
    engine = RuleEngine(OVERLAPPING)
    fired = {f.rule for f in engine.evaluate(facts).firings}  # raises if the check disagrees
    pairs = itertools.permutations(labs, 2)
    triples = itertools.permutations(labs, 3)
    assert ("two-overlapping" in fired) == any(a[0] == "x" and b[1] == "low" for a, b in pairs)
    assert ("three-labs" in fired) == any(
        a[1] == "low" and b[1] == "low" and c[0] == "y" for a, b, c in triples
    )
