"""Garbage-collection pauses during in-process evaluation, with and without `gc.freeze()` after start-up.

`python -m bench.gcpause [calls] [freeze|nofreeze]` evaluates `calls` hook requests cycled over 200
distinct generated 50-resource patients and times every collection with `gc.callbacks`. Without an
argument it runs both modes, each in a fresh process, and prints one JSON line per mode.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.patients import NOW, as_hook_request, make_patient

ROOT = Path(__file__).resolve().parent.parent


def measure(calls: int, *, freeze: bool, population: int = 200) -> dict[str, Any]:
    from cds.evaluation import Evaluator
    from cds.intake import load_json
    from cds.rulepack import load_rule_pack

    evaluator = Evaluator(load_rule_pack(ROOT / "rules"))
    bodies = [orjson.dumps(as_hook_request(make_patient(50, seed=i))) for i in range(population)]
    for body in bodies[:20]:
        evaluator.evaluate_document(load_json(body), now=NOW)
    if freeze:
        gc.collect()
        gc.freeze()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses[info["generation"]].append((time.perf_counter() - started.pop()) * 1000)

    gc.callbacks.append(callback)
    per_call = []
    try:
        for index in range(calls):
            begin = time.perf_counter()
            evaluator.evaluate_document(load_json(bodies[index % population]), now=NOW)
            per_call.append((time.perf_counter() - begin) * 1000)
    finally:
        gc.callbacks.remove(callback)
    per_call.sort()

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] if values else 0.0

    return {
        "mode": "freeze" if freeze else "nofreeze",
        "calls": calls,
        "frozen_objects": gc.get_freeze_count(),
        "per_generation": {
            str(gen): {
                "count": len(values),
                "median_ms": statistics.median(values) if values else 0.0,
                "max_ms": max(values, default=0.0),
                "total_ms": sum(values),
            }
            for gen, values in pauses.items()
        },
        "call_ms": {"p50": pct(per_call, 0.5), "p99": pct(per_call, 0.99), "p99.9": pct(per_call, 0.999)},
    }


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    if len(sys.argv) > 2:
        print(json.dumps(measure(calls, freeze=sys.argv[2] == "freeze")))
        return
    for mode in ("nofreeze", "freeze"):
        subprocess.run([sys.executable, "-m", "bench.gcpause", str(calls), mode], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
