"""`make bench`: every benchmark of issue 4, written to bench/results/latest.md and latest.json.

Environment knobs (defaults are the full run; the test suite runs a smoke version):
  BENCH_DURATION (s per HTTP run, 20)  BENCH_REPEATS (3)  BENCH_RUNS (in-process runs per round, 1000)
  BENCH_MEMORY_CALLS (100000)          BENCH_SIZES ("10,50,250,1000")
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.complexity import SIZES as COMPLEXITY_SIZES
from bench.complexity import bench_complexity
from bench.inprocess import bench_inprocess, bench_inprocess_memory
from bench.load import cds_server, echo_server, free_port, rss_mb, run_hey_csv, send_requests
from bench.patients import as_hook_request, make_patient

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "inprocess_50_median_us": 1500,
    "inprocess_50_p99_us": 4000,
    "inprocess_1000_median_us": 20000,
    "http_50_c8_w2_rps": 600,
    "http_50_c8_w2_p99_ms": 25,
    "http_50_c8_w2_echo_ratio": 0.25,
    "memory_growth_mb": 5,
    "startup_s": 2,
}


def knob(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_http(*, duration: float, repeats: int, workdir: Path) -> list[dict[str, Any]]:
    bodies = {}
    for size in (50, 250):
        path = workdir / f"hook-{size}.json"
        path.write_bytes(orjson.dumps(as_hook_request(make_patient(size))))
        bodies[size] = path
    rows = []
    for workers in (1, 2):
        for target in ("cramp-assessment", "echo"):
            port = free_port()
            server = (
                cds_server(port, workers, workdir / f"bench-{workers}.sqlite3")
                if target == "cramp-assessment"
                else echo_server(port, workers)
            )
            with server as running:
                path = "/cds-services/cramp-assessment" if target == "cramp-assessment" else "/echo"
                for size, body in bodies.items():
                    run_hey_csv(
                        running.base_url + path, body, concurrency=8, duration_s=min(3.0, duration)
                    )  # warm-up
                    for concurrency in (1, 8, 32):
                        runs = [
                            run_hey_csv(
                                running.base_url + path, body, concurrency=concurrency, duration_s=duration
                            )
                            for _ in range(repeats)
                        ]
                        rows.append(
                            {
                                "target": target,
                                "workers": workers,
                                "prefetch_resources": size,
                                "concurrency": concurrency,
                                "duration_s": duration,
                                "repeats": repeats,
                                "rps": summarise([r["rps"] for r in runs]),
                                "p50_ms": summarise([r["latency_ms"]["p50"] for r in runs]),
                                "p99_ms": summarise([r["latency_ms"]["p99"] for r in runs]),
                                "p99.9_ms": summarise([r["latency_ms"]["p99.9"] for r in runs]),
                                "requests": sum(r["requests"] for r in runs),
                                "non_200": sum(c for r in runs for s, c in r["statuses"].items() if s != 200),
                            }
                        )
    return rows


def bench_server_memory(*, calls: int, workdir: Path) -> dict[str, Any]:
    body = workdir / "hook-50.json"
    body.write_bytes(orjson.dumps(as_hook_request(make_patient(50))))
    port = free_port()
    with cds_server(port, 1, workdir / "memory.sqlite3") as running:
        url = running.base_url + "/cds-services/cramp-assessment"
        send_requests(url, body, count=2000)
        pid = running.worker_pids()[0]
        before = rss_mb(pid)
        send_requests(url, body, count=calls)
        after = rss_mb(pid)
    return {
        "calls": calls,
        "rss_after_warmup_mb": before,
        "rss_after_calls_mb": after,
        "growth_mb": after - before,
    }


def bench_startup(*, repeats: int, workdir: Path) -> dict[str, Any]:
    times = []
    for index in range(repeats):
        port = free_port()
        with cds_server(port, 1, workdir / f"startup-{index}.sqlite3") as running:
            times.append(running.started_s)
    return summarise(times)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for package in ("fastapi", "uvicorn", "pydantic", "fhir.resources", "durable-rules", "orjson"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "?"
    hey = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True, text=True, check=False
    ).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "hey": hey or "?",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    duration = knob("BENCH_DURATION", 20)
    repeats = int(knob("BENCH_REPEATS", 3))
    runs = int(knob("BENCH_RUNS", 1000))
    calls = int(knob("BENCH_MEMORY_CALLS", 100_000))
    sizes = tuple(int(s) for s in os.environ.get("BENCH_SIZES", "10,50,250,1000").split(","))
    out = Path(os.environ.get("BENCH_OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        report: dict[str, Any] = {"machine": machine()}
        print("in-process ...", flush=True)
        report["inprocess"] = bench_inprocess(sizes=sizes, runs=runs, repeats=repeats)
        report["inprocess_memory"] = bench_inprocess_memory(evaluations=calls)
        print("start-up ...", flush=True)
        report["startup_s"] = bench_startup(repeats=max(3, repeats), workdir=workdir)
        print("HTTP ...", flush=True)
        report["http"] = bench_http(duration=duration, repeats=repeats, workdir=workdir)
        print("server memory ...", flush=True)
        report["server_memory"] = bench_server_memory(calls=calls, workdir=workdir)
        print("complexity ...", flush=True)
        report["complexity"] = bench_complexity(
            sizes=COMPLEXITY_SIZES if repeats > 1 else (10, 100), repeats=repeats
        )
    report["elapsed_s"] = time.time() - began
    (out / "latest.json").write_text(json.dumps(report, indent=1))
    from bench.report import render

    (out / "latest.md").write_text(render(report, TARGETS))
    print(f"wrote {out / 'latest.md'}")


if __name__ == "__main__":
    main()
