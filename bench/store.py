"""Card records: one commit per hook call against group commit (cds.cardwriter), SQLite and PostgreSQL.

    .venv/bin/python -m bench.store            # prints a Markdown table, writes bench/results/store.json

Each "hook call" is one PendingCards of 7 cards (the 50-resource patient's card count), handed to the
store by `concurrency` client threads, `calls` in all. "per call" writes each call in its own
transaction (the writes of the first hardening round: serialised by a lock on SQLite as before);
"group" hands them to one CardWriter thread, which commits whatever is waiting together. Reported per
run: calls per second, wall and process CPU microseconds per call, commits, calls and rows per commit.
PostgreSQL is measured in a fresh database on 127.0.0.1:5432 (BENCH_PG_HOST / BENCH_PG_PORT) when one
answers, and skipped otherwise.

Knobs: BENCH_STORE_CALLS (2000), BENCH_STORE_CONCURRENCY ("1,8,32"), BENCH_REPEATS (3),
BENCH_STORE_OUT (bench/results/store.json).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.pgdatabase import fresh_postgres
from cds.cardwriter import CardWriter
from cds.store import CardBacklog, IssuedCard, PendingCards, Store

CARDS_PER_CALL = 7
_ids = itertools.count()


@dataclass(frozen=True)
class Run:
    backend: str
    mode: str
    concurrency: int
    calls: int
    seconds: float
    cpu_seconds: float
    commits: int
    rows: int

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def wall_us_per_call(self) -> float:
        return self.seconds / self.calls * 1e6

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6

    @property
    def calls_per_commit(self) -> float:
        return self.calls / self.commits if self.commits else 0.0


def pending_call() -> PendingCards:
    n = next(_ids)
    cards = tuple(
        IssuedCard(
            uuid=f"{n:08d}-{i:04d}-4000-8000-{secrets.token_hex(6)}", topic="magnesium", rule_ids=("r1", "r2")
        )
        for i in range(CARDS_PER_CALL)
    )
    return PendingCards("cramp-assessment", f"hook-{n}", "0" * 64, "bench", cards, datetime.now(UTC))


def _drive(concurrency: int, calls: int, one: Callable[[PendingCards], None]) -> tuple[float, float]:
    work = [pending_call() for _ in range(calls)]
    began, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(one, work):
            pass
    return time.perf_counter() - began, time.process_time() - cpu


def measure(store: Store, backend: str, mode: str, concurrency: int, calls: int) -> Run:
    gate: contextlib.AbstractContextManager[object] = (
        threading.Lock() if backend == "sqlite" else contextlib.nullcontext()
    )
    backlog = CardBacklog(store, gate=lambda: gate)
    if mode == "per call":

        def one(pending: PendingCards) -> None:
            backlog.record(pending)

        seconds, cpu = _drive(concurrency, calls, one)
    else:
        writer = CardWriter(backlog)

        def one(pending: PendingCards) -> None:
            writer.submit(pending).result()

        try:
            seconds, cpu = _drive(concurrency, calls, one)
        finally:
            writer.close()
    assert len(backlog) == 0, "the store refused writes: calls were queued"
    assert backlog.set_aside_total == 0, "the store refused rows: calls were set aside"
    assert backlog.committed_batches == calls
    return Run(backend, mode, concurrency, calls, seconds, cpu, backlog.commits, backlog.committed_rows)


@contextlib.contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        store = Store(f"sqlite:///{Path(directory) / 'bench.sqlite3'}")
        store.migrate()
        try:
            yield store
        finally:
            store.close()


@contextlib.contextmanager
def postgres_store() -> Iterator[Store | None]:
    with fresh_postgres("cds_bench_store") as url:
        if url is None:
            yield None
            return
        store = Store(url)
        try:
            store.migrate()
            yield store
        finally:
            store.close()


def run(calls: int, concurrencies: list[int], repeats: int) -> list[dict[str, Any]]:
    """Every (backend, mode, concurrency), `repeats` times; the median run of each, with its spread."""
    rows: list[dict[str, Any]] = []
    for backend, opener in (("sqlite", sqlite_store), ("postgresql", postgres_store)):
        with opener() as store:
            if store is None:
                print(f"{backend}: not reachable, skipped")
                continue
            for concurrency in concurrencies:
                for mode in ("per call", "group"):
                    runs = [measure(store, backend, mode, concurrency, calls) for _ in range(repeats)]
                    runs.sort(key=lambda r: r.calls_per_second)
                    median = runs[len(runs) // 2]
                    rows.append(
                        asdict(median)
                        | {
                            "calls_per_second": round(median.calls_per_second),
                            "calls_per_second_range": [
                                round(runs[0].calls_per_second),
                                round(runs[-1].calls_per_second),
                            ],
                            "wall_us_per_call": round(median.wall_us_per_call),
                            "cpu_us_per_call": round(median.cpu_us_per_call),
                            "cpu_us_per_call_median": round(
                                statistics.median(r.cpu_us_per_call for r in runs)
                            ),
                            "calls_per_commit": round(median.calls_per_commit, 1),
                            "rows_per_commit": round(median.rows / median.commits, 1)
                            if median.commits
                            else 0,
                            "repeats": repeats,
                        }
                    )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| store | mode | c | calls/s (min–max) | wall µs/call | CPU µs/call | commits | calls/commit | rows/commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["calls_per_second_range"]
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['concurrency']} | {r['calls_per_second']} ({low}–{high}) | "
            f"{r['wall_us_per_call']} | {r['cpu_us_per_call']} | {r['commits']} | {r['calls_per_commit']} | "
            f"{r['rows_per_commit']} |"
        )
    return "\n".join(lines)


def main() -> None:
    calls = int(os.environ.get("BENCH_STORE_CALLS", "2000"))
    concurrencies = [int(c) for c in os.environ.get("BENCH_STORE_CONCURRENCY", "1,8,32").split(",")]
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    out = Path(os.environ.get("BENCH_STORE_OUT", "bench/results/store.json"))
    rows = run(calls, concurrencies, repeats)
    print(f"{calls} calls of {CARDS_PER_CALL} cards per run, median of {repeats} runs (by calls/s)")
    print(table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"calls": calls, "cards_per_call": CARDS_PER_CALL, "runs": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
