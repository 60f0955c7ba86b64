"""In-process evaluation benchmark: parse + normalise + engine + cards per patient, on one core."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.patients import NOW, make_patient
from cds.evaluation import Evaluator
from cds.intake import load_json
from cds.rulepack import load_rule_pack

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = (
    ROOT.parent
    / "shared"
    / "fhir-examples"
    / "bundles"
    / "Almeda_Conn_67e13ece-8aed-46fa-ab6c-673137d5460e.json"
)
# Stage -> the function whose cumulative profile time is that stage.
STAGES = {
    "parse": ("cds/intake.py", "load_json"),
    "intake+validate": ("cds/intake.py", "validate_entries"),
    "normalise": ("cds/record/__init__.py", "build_record"),
    "facts": ("cds/facts.py", "build_facts"),
    "engine": ("cds/engine.py", "evaluate"),
    "cards": ("cds/cards.py", "render_cards"),
}


def patients(sizes: tuple[int, ...]) -> dict[str, bytes]:
    found = {f"generated-{n}": orjson.dumps(make_patient(n)) for n in sizes}
    if SYNTHEA.is_file():
        found["synthea-almeda-conn"] = SYNTHEA.read_bytes()
    return found


def time_runs(run: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def stage_shares(run: Callable[[], Any], count: int) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for name, (suffix, func) in STAGES.items():
        cumulative[name] = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func)
    total = sum(cumulative.values()) or 1.0
    return {name: value / total for name, value in cumulative.items()}


def bench_inprocess(
    *, sizes: tuple[int, ...] = (10, 50, 250, 1000), runs: int = 1000, repeats: int = 3
) -> list[dict[str, Any]]:
    evaluator = Evaluator(load_rule_pack(ROOT / "rules"))
    results = []
    for name, raw in patients(sizes).items():
        resources = len(orjson.loads(raw).get("entry", []))

        def run(raw: bytes = raw) -> Any:
            return evaluator.evaluate_document(load_json(raw), now=NOW)

        count = max(20, runs if resources <= 250 else runs // 5)
        time_runs(run, max(5, count // 10))  # warm-up
        rounds = [time_runs(run, count) for _ in range(repeats)]
        medians = [statistics.median(r) * 1e6 for r in rounds]
        p99s = [percentile(r, 0.99) * 1e6 for r in rounds]
        results.append(
            {
                "patient": name,
                "resources": resources,
                "bytes": len(raw),
                "runs_per_round": count,
                "rounds": repeats,
                "median_us": statistics.median(medians),
                "median_us_spread": [min(medians), max(medians)],
                "p99_us": statistics.median(p99s),
                "p99_us_spread": [min(p99s), max(p99s)],
                "patients_per_s": 1e6 / statistics.median(medians),
                "stage_share": stage_shares(run, max(10, count // 5)),
            }
        )
    return results


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_inprocess_memory(*, evaluations: int = 100_000, size: int = 50) -> dict[str, Any]:
    evaluator = Evaluator(load_rule_pack(ROOT / "rules"))
    raw = orjson.dumps(make_patient(size))
    for _ in range(1000):
        evaluator.evaluate_document(orjson.loads(raw), now=NOW)
    before = rss_mb()
    for _ in range(evaluations):
        evaluator.evaluate_document(orjson.loads(raw), now=NOW)
    after = rss_mb()
    return {
        "evaluations": evaluations,
        "resources": size,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "growth_mb": after - before,
        "live_sessions": evaluator.engine.live_sessions,
    }
