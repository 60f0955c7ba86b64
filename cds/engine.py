"""The only module that imports durable_rules: facts in, derived facts and rule firings out.

The rest of the package calls `RuleEngine.evaluate(facts)` and never sees the engine. durable-rules
2.0.28 (C core, 2020) has hazards that were measured on this machine; each is guarded here and each
guard has a test in tests/test_engine.py:

- a plain `Host()` starts two timer threads that read freed memory -> `_QuietHost` never starts them;
- `delete_state` segfaults on a session in which no action ran -> every session gets a sentinel fact
  that fires a no-op rule;
- sessions are keyed by a 32-bit FNV-1a hash of the session id, so two ids can collide and share
  facts -> each new id is checked against the live ones;
- `assert_facts` raises if any fact of a batch matches no rule, before the matched actions run ->
  facts are first matched against the rules' patterns here, and only facts some pattern reads go
  into the one batch; the others are reported as unread, not raised;
- exceptions inside actions are swallowed into the session state -> the adapter runs the actions
  itself (`_assert_batch`, on the C interface; durable's Python dispatch never runs), abandons the
  action that raised and raises the error from `evaluate` as an EngineError;
- `none(...)` fires when the fact arrives later in the same batch -> the rule language has no
  negation (see cds/rulepack.py); absence is an explicit fact;
- registration mutates the dict it is given (it deletes `run`) -> a deep copy is registered;
- at most 1,024 live sessions per ruleset -> one evaluation at a time per engine, state deleted in
  a `finally`;
- loose type coercion (`'abc' >= 0.3` matches) -> every fact is type-checked before it is asserted;
- its JSON reader misreads a number with an exponent but no decimal point (`3e-05`, `1e+16`, which is
  how Python writes floats below 1e-4 or from 1e16 up): such a fact silently matched nothing, and a
  pregnant patient lost her seek-care card -> the adapter writes the facts' JSON itself
  (`encode_facts`: every float with a decimal point, measured in tests/test_engine.py), sends only
  the fields the rules read, and after every session checks that the engine fired exactly the rules
  the facts satisfy (`expected_firings`, the same patterns evaluated in Python); a difference is an
  EngineError naming the rules and facts, never a silently different answer (the check is a
  worklist over precomputed pattern numbers: about 0.2 ms for a 50-resource patient);
- on Python 3.12+ durable's Python dispatch calls `datetime.utcfromtimestamp`, deprecated there, for
  every action, so each warns -> that dispatch never runs (see above); no warning is filtered, and
  one raised in our own actions goes through.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine
import orjson
from durable import engine as durable_engine

from cds.errors import EngineError
from cds.facttypes import Fact, Scalar, check_fact
from cds.rulepack import CompiledRule

SENTINEL_RULE = "engine.sentinel"
MAX_LIVE_SESSIONS = 1024


class _QuietHost(durable_engine.Host):  # type: ignore[misc]
    """A Host without the background dispatch threads (they read freed memory); we dispatch inline."""

    def _run(self) -> None:
        return None


def session_hash(sid: str) -> int:
    """The engine's own key for a session id: 32-bit FNV-1a over its bytes (rules/state.c)."""
    value = 0x811C9DC5
    for byte in sid.encode("utf-8"):
        value ^= byte
        value = (value * 16777619) & 0xFFFFFFFF
    return value


@dataclass(frozen=True)
class Firing:
    """One rule firing: which rule, on which fact ids, and the id of the fact it produced or confirmed."""

    rule: str
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class Outcome:
    derived: tuple[Fact, ...]
    firings: tuple[Firing, ...]
    # Input fact ids that no rule reads (kept so that nothing is dropped unannounced).
    unread: tuple[str, ...]


@dataclass
class _Run:
    sid: str
    derived: dict[tuple[str, str], Fact] = field(default_factory=dict)
    firings: list[Firing] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)


class RuleEngine:
    """Compiled rules registered once; `evaluate` runs one isolated session per call."""

    def __init__(self, rules: Sequence[CompiledRule], *, name: str = "cramp") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._live: dict[int, str] = {}
        self._sids = itertools.count(1)
        # Actions are run by `_assert_batch`, never by durable's Python host: it is given no-op callables.
        self._actions: dict[str, Callable[[Any, _Run], None]] = {SENTINEL_RULE: _no_action}
        definition: dict[str, Any] = {
            SENTINEL_RULE: {"all": [{"m0": {"type": "sentinel"}}], "run": _unused_action},
        }
        for rule in rules:
            self._actions[rule.id] = self._make_action(rule)
            definition[rule.id] = {
                "all": [{f"m{i}": pattern} for i, pattern in enumerate(rule.patterns)],
                "run": _unused_action,
            }
        self.definition = definition
        # Every pattern of every rule gets a number; a rule is its patterns' numbers.
        self._patterns_by_type: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._fields_by_type: dict[str, tuple[str, ...]] = {}
        self._rule_patterns: dict[str, tuple[int, ...]] = {}
        self._match_memo: dict[tuple[Any, ...], frozenset[int]] = {}
        number = itertools.count()
        for rule in rules:
            indexes: list[int] = []
            for pattern in rule.patterns:
                index = next(number)
                indexes.append(index)
                kind = str(pattern["$and"][0]["type"])
                self._patterns_by_type.setdefault(kind, []).append((index, pattern))
                named = set(self._fields_by_type.get(kind, ())) | _fields_of(pattern)
                self._fields_by_type[kind] = tuple(sorted(named))
            self._rule_patterns[rule.id] = tuple(indexes)
        self._max_patterns = max((len(r.patterns) for r in rules), default=1)
        # For `expected_firings`: which rules read each pattern, which rules have two patterns of one
        # fact type (only those need a matching), and which patterns each rule's derived fact matches
        # (None for a cause: the engine never re-asserts it).
        self._rules_by_pattern: dict[int, tuple[CompiledRule, ...]] = {
            index: tuple(r for r in rules if index in self._rule_patterns[r.id])
            for indexes in self._rule_patterns.values()
            for index in indexes
        }
        self._pattern_counts = {rule_id: len(indexes) for rule_id, indexes in self._rule_patterns.items()}
        self._needs_matching = frozenset(
            r.id for r in rules if len({str(p["$and"][0]["type"]) for p in r.patterns}) < len(r.patterns)
        )
        self._derived_matches: dict[str, tuple[tuple[str, str], frozenset[int] | None]] = {}
        for rule in rules:
            key = _derived_key(rule.produces)
            terminal = rule.produces["type"] == "cause"
            self._derived_matches[rule.id] = (
                key,
                None if terminal else self._matched({**rule.produces, "id": "d", "label": key[1]}),
            )
        self._host = _QuietHost()
        # Registration deletes each rule's `run`: give it a copy and keep ours intact.
        self._host.set_rulesets({name: _copy_definition(definition)})
        self._handle = self._host.get_ruleset(name)._handle

    @property
    def live_sessions(self) -> int:
        return len(self._live)

    def evaluate(self, facts: Sequence[Fact]) -> Outcome:
        """Assert `facts` in a fresh session, let the rules chain, and return what they derived."""
        for fact in facts:
            try:
                check_fact(fact)
            except TypeError as exc:
                raise EngineError(f"fact {fact.get('id')!r} refused: {exc}") from None
        with self._lock:
            sid = self._new_session_id()
            run = _Run(sid=sid)
            self._live[session_hash(sid)] = sid
            batch: list[dict[str, Scalar]] = [
                {"type": "sentinel", "id": "sentinel", "label": "sentinel", "sid": sid}
            ]
            unread: list[str] = []
            read: list[Fact] = []
            for fact in facts:
                if self._is_read(fact):
                    read.append(fact)
                    batch.append({**self._engine_view(fact), "sid": sid})
                else:
                    unread.append(str(fact["id"]))
            try:
                self._assert_batch(batch, run)
            finally:
                try:
                    self._host.delete_state(self._name, sid)
                finally:
                    del self._live[session_hash(sid)]
            if run.errors:
                raise EngineError(f"a rule action failed: {run.errors[0]!r}") from run.errors[0]
            self._check_firings(read, run)
            return Outcome(
                derived=tuple(run.derived.values()), firings=tuple(run.firings), unread=tuple(unread)
            )

    def _new_session_id(self) -> str:
        if len(self._live) >= MAX_LIVE_SESSIONS:
            raise EngineError("too many live engine sessions")
        while True:
            sid = f"s{next(self._sids)}"
            if session_hash(sid) not in self._live:
                return sid

    def _matched(self, fact: Fact) -> frozenset[int]:
        """The numbers of the patterns that match this fact on its own.

        The answer depends only on the fields the patterns name, so it is remembered per combination
        (with each value's type: 1, 1.0 and True are equal keys in Python but not to the rules).
        """
        kind = str(fact["type"])
        key = (kind, *((type(v), v) for v in (fact.get(n) for n in self._fields_by_type.get(kind, ()))))
        known = self._match_memo.get(key)
        if known is None:
            known = frozenset(i for i, p in self._patterns_by_type.get(kind, ()) if matches(p, fact))
            if len(self._match_memo) > 4096:
                self._match_memo.clear()
            self._match_memo[key] = known
        return known

    def _is_read(self, fact: Fact) -> bool:
        """Does some rule pattern match this fact on its own? (The engine raises for a fact none reads.)"""
        return bool(self._matched(fact))

    def _engine_view(self, fact: Fact) -> dict[str, Scalar]:
        """What the engine needs of a fact: its id and the fields the patterns read (no free text)."""
        wanted = self._fields_by_type.get(str(fact["type"]), ())
        return {"id": fact["id"], **{n: fact[n] for n in ("type", *wanted) if n in fact}}

    def _assert_batch(self, batch: list[dict[str, Scalar]], run: _Run) -> None:
        """Assert the batch and run the actions it triggers, on the engine's C interface directly.

        durable's Python host does the same steps (assert, start an action, run it, hand the state back,
        complete and start the next) but wraps every message in objects and round-trips the state and
        each message through the stdlib json module, and its timing code warns on Python 3.12+. Here
        the batch is written once (`encode_facts`), each message is read with orjson, the session state
        goes back as the very text the engine gave (our actions never change it), and an action's
        exception abandons the action and is raised (durable would swallow it).
        """
        result = durable_rules_engine.assert_facts(self._handle, encode_facts(batch))
        if result[0] != 0:
            raise EngineError(f"the rules engine refused the batch (code {result[0]})")
        state_handle = result[1]
        started = durable_rules_engine.start_action_for_state(self._handle, state_handle)
        if not started:
            return
        state, messages = started[0], started[1]
        while messages:
            message = orjson.loads(messages)
            ((rule_id, matched),) = message.items()
            try:
                self._actions[rule_id](_Match(matched, self), run)
            except Exception as exc:
                durable_rules_engine.abandon_action(self._handle, state_handle)
                run.errors.append(exc)
                return
            durable_rules_engine.update_state(self._handle, state)
            messages = durable_rules_engine.complete_and_start_action(self._handle, state_handle)

    def _assert_derived(self, fact: Mapping[str, Scalar]) -> None:
        """Assert a fact an action derived; one that no pattern reads (a leaf) is fine."""
        result = durable_rules_engine.assert_fact(self._handle, encode_facts([fact])[1:-1])
        if result[0] not in (0, 1):
            raise EngineError(f"the rules engine refused derived fact {fact.get('id')!r} (code {result[0]})")

    def expected_firings(self, facts: Sequence[Fact]) -> set[str]:
        """The rules that must fire for `facts` (read facts only), evaluated in Python: a rule fires
        when its patterns can each be matched by a different fact, given or derived (as durable
        does: one fact never fills two patterns of a rule; patterns never join on values).

        Counting, so that the cost follows the patterns the facts match, not the size of the pack: a
        rule is tried once every one of its patterns has a candidate, and again only when a derived
        fact gives one of its patterns another. A rule whose patterns name different fact types needs
        no matching (no fact has two types); the others go through `_distinct`.
        """
        cap = self._max_patterns  # enough candidates per pattern to find distinct ones (Hall)
        pool: dict[int, list[str]] = {}
        empty = self._pattern_counts.copy()  # rule id -> its patterns still without a candidate
        ready: list[CompiledRule] = []
        fired: set[str] = set()

        def add(fact_id: str, matched: frozenset[int]) -> None:
            for index in matched:
                ids = pool.get(index)
                if ids is None:
                    pool[index] = [fact_id]
                    for rule in self._rules_by_pattern[index]:
                        empty[rule.id] -= 1
                        if not empty[rule.id]:
                            ready.append(rule)
                elif len(ids) < cap:
                    ids.append(fact_id)
                    ready.extend(
                        r
                        for r in self._rules_by_pattern[index]
                        if not empty[r.id] and r.id in self._needs_matching and r.id not in fired
                    )

        for fact in facts:
            add(str(fact["id"]), self._matched(fact))
        produced: set[tuple[str, str]] = set()
        while ready:
            rule = ready.pop()
            if rule.id in fired:
                continue
            if rule.id in self._needs_matching and not _distinct(
                pool[i] for i in self._rule_patterns[rule.id]
            ):
                continue
            fired.add(rule.id)
            key, matched = self._derived_matches[rule.id]
            if key not in produced and matched is not None:
                produced.add(key)
                add(f"derived:{key[0]}:{key[1]}", matched)
        return fired

    def _check_firings(self, read: Sequence[Fact], run: _Run) -> None:
        """A fact the engine did not read as sent is an error, never a silently different answer."""
        fired = {firing.rule for firing in run.firings}
        expected = self.expected_firings(read)
        if fired == expected:
            return
        missed, extra = sorted(expected - fired), sorted(fired - expected)
        involved = sorted(
            {
                str(fact["id"])
                for fact in read
                for rule in missed + extra
                if self._matched(fact) & set(self._rule_patterns[rule])
            }
        )
        raise EngineError(
            f"the rules engine did not read facts {', '.join(involved) or '(none)'} as sent: rules "
            f"{', '.join(missed) or '(none)'} should have fired and {', '.join(extra) or '(none)'} "
            "should not"
        )

    def _make_action(self, rule: CompiledRule) -> Callable[[Any, _Run], None]:
        names = [f"m{i}" for i in range(len(rule.patterns))]
        produces = rule.produces
        key = _derived_key(produces)
        terminal = produces["type"] == "cause"

        def action(c: Any, run: _Run) -> None:
            inputs = tuple(str(getattr(c, name)["id"]) for name in names)
            existing = run.derived.get(key)
            if existing is not None:
                run.firings.append(Firing(rule=rule.id, inputs=inputs, output=str(existing["id"])))
                return
            fact: dict[str, Scalar] = {**produces, "id": f"d{next(run.counter)}", "label": key[1]}
            run.derived[key] = fact
            run.firings.append(Firing(rule=rule.id, inputs=inputs, output=str(fact["id"])))
            if not terminal:
                c.assert_fact({**fact, "sid": run.sid})

        return action


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$neq": lambda a, b: a != b,
}


def matches(pattern: Mapping[str, Any], fact: Fact) -> bool:
    """Evaluate one compiled pattern (`$and` of equalities, `$or` lists and comparisons) on a fact.

    The facts are type-checked first, so a comparison never meets a value of the wrong type.
    """
    for term in pattern["$and"]:
        ((key, operand),) = term.items()
        if key == "$or":
            if not any(fact.get(f) == v for alternative in operand for f, v in alternative.items()):
                return False
        elif key in _COMPARE:
            ((name, bound),) = operand.items()
            value = fact.get(name)
            if value is None or isinstance(value, bool) or not _COMPARE[key](value, bound):
                return False
        elif fact.get(key) != operand or isinstance(fact.get(key), bool) != isinstance(operand, bool):
            return False
    return True


def _distinct(candidates: Iterable[list[str]]) -> bool:
    """Can each pattern take a different one of its candidate facts? (Augmenting paths; a rule has a
    handful of patterns.)

        >>> _distinct([["f1"], ["f1", "f2"]]), _distinct([["f1"], ["f1"]]), _distinct([[], ["f1"]])
        (True, False, False)
    """
    lists = list(candidates)
    owner: dict[str, int] = {}

    def place(pattern: int, seen: set[str]) -> bool:
        for fact in lists[pattern]:
            if fact in seen:
                continue
            seen.add(fact)
            if fact not in owner or place(owner[fact], seen):
                owner[fact] = pattern
                return True
        return False

    return all(place(pattern, set()) for pattern in range(len(lists)))


def encode_scalar(value: Scalar) -> str:
    """One fact value as JSON the engine reads back exactly.

    durable's reader takes `3e-05` and `1e+16` for something else (a fact then matches nothing), but
    reads `3.0e-05` and `1.0e+16` right, so a float's mantissa always gets a decimal point:

        >>> [encode_scalar(v) for v in (3e-05, 1e16, 0.25, -1e-07, 2**70, True)]
        ['3.0e-05', '1.0e+16', '0.25', '-1.0e-07', '1180591620717411303424', 'true']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EngineError(f"the rules engine cannot take the number {value!r}")
        text = repr(value)
        mantissa, exponent, power = text.partition("e")
        if exponent and "." not in mantissa:
            text = f"{mantissa}.0e{power}"
        return text
    return json.dumps(value, ensure_ascii=False)


# Where orjson writes a number in exponent form it writes a digit, `e` and a sign (`1e-7`, `1e+16`).
_EXPONENT = re.compile(rb"\de[+-]")


def encode_facts(facts: Sequence[Mapping[str, Scalar]]) -> str:
    """A batch of flat facts as the JSON text the engine is given (see `encode_scalar`).

    orjson writes the batch when its text holds no number in exponent form and no `null` (orjson's
    NaN): then it is the text `encode_scalar` would give, up to the escaping of strings. Otherwise
    (or if a string merely looks like one) each value goes through `encode_scalar`.

        >>> encode_facts([{"type": "lab", "value": 0.25}]), encode_facts([{"type": "lab", "value": 1e-07}])
        ('[{"type":"lab","value":0.25}]', '[{"type":"lab","value":1.0e-07}]')
    """
    try:
        text = orjson.dumps(facts)
    except TypeError:  # an int beyond 64 bits
        text = b"null"
    if b"null" not in text and _EXPONENT.search(text) is None:
        return text.decode()
    return (
        "["
        + ",".join(
            "{" + ",".join(f"{json.dumps(k)}:{encode_scalar(v)}" for k, v in fact.items()) + "}"
            for fact in facts
        )
        + "]"
    )


def _fields_of(pattern: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for term in pattern["$and"]:
        ((key, operand),) = term.items()
        if key == "$or":
            names.update(f for alternative in operand for f in alternative)
        elif key in _COMPARE:
            names.update(operand)
        else:
            names.add(key)
    return names


def _derived_key(produces: Mapping[str, Any]) -> tuple[str, str]:
    """What a rule's derived fact is known by: one fact per (type, name), however many rules derive it."""
    return str(produces["type"]), str(produces.get("name") or produces.get("rule"))


def _no_action(c: Any, run: _Run) -> None:
    return None


def _unused_action(c: Any) -> None:
    """What durable's host registers for every rule; `_assert_batch` runs our actions instead."""
    raise EngineError("durable's own action dispatch ran; the adapter dispatches actions itself")


class _Match:
    """What an action is given for one firing: the facts that filled the rule's patterns (`m0`, `m1`,
    ... as dicts) and `assert_fact` for the fact it derives."""

    __slots__ = ("_engine", "_matched")

    def __init__(self, matched: Mapping[str, Any], engine: RuleEngine) -> None:
        self._matched = matched
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        try:
            return self._matched[name]
        except KeyError:
            raise AttributeError(name) from None

    def assert_fact(self, fact: Mapping[str, Scalar]) -> None:
        self._engine._assert_derived(fact)


def _copy_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """Deep-copy patterns but keep the action callables themselves."""
    return {
        name: {"all": copy.deepcopy(body["all"]), "run": body["run"]} for name, body in definition.items()
    }
