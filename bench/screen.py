"""`make bench` (screening part): `cds screen` throughput, CPU and memory against population size.

For each N in SCREEN_SIZES a population is generated with `cds synth` (Synthea templates when
../shared/fhir-examples is present, SCREEN_BACKGROUND background resources per patient), then screened
by the local engine with 1 worker and with every core, and once by the Spark engine in local mode
(when pyspark and Java are present and N <= SCREEN_SPARK_MAX). Each run is a real `cds screen`
process; its CPU seconds (its own and its workers') come from getrusage, its memory from sampling
/proc every 50 ms: the main process (partition and merge) and the largest worker (evaluation).
Writes bench/results/screen.json and screen.md, including the projection to one million patients.

Environment knobs: SCREEN_SIZES ("1000,10000"), SCREEN_BACKGROUND (60), SCREEN_REPEATS (1),
SCREEN_SPARK_MAX (1000; 0 turns Spark off), BENCH_OUT (bench/results), SCREEN_WORK (a folder to
keep the generated exports in and reuse: an `export-N` holding a manifest.json is not generated again).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CDS = Path(sys.executable).parent / "cds"
NOW = "2026-06-01"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * PAGE_KB / 1024


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


class Sampler(threading.Thread):
    """Peak RSS of a process and, separately, of the largest of its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.main_peak = 0.0
        self.worker_peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.main_peak = max(self.main_peak, rss_mb(self.pid))
            stack = children(self.pid)
            while stack:
                child = stack.pop()
                self.worker_peak = max(self.worker_peak, rss_mb(child))
                stack.extend(children(child))
            time.sleep(0.05)


def timed(command: list[str]) -> dict[str, Any]:
    """Run a command; wall seconds, CPU seconds of it and everything it waited for, peak memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.done.set()
    sampler.join()
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "main_peak_rss_mb": sampler.main_peak,
        "worker_peak_rss_mb": sampler.worker_peak,
        "stderr": stderr,
        "stdout": stdout,
    }


def spark_available() -> bool:
    return importlib.util.find_spec("pyspark") is not None and shutil.which("java") is not None


def bench_size(patients: int, *, background: int, repeats: int, spark_max: int, work: Path) -> dict[str, Any]:
    export = work / f"export-{patients}"
    synth: dict[str, Any] = {"wall_s": None, "cpu_s": None, "main_peak_rss_mb": None}
    if not (export / "manifest.json").exists():  # SCREEN_WORK may hold the exports of an earlier run
        synth = timed(
            [str(CDS), "synth", "--patients", str(patients), "--seed", "1", "--background", str(background),
             str(export)]
        )  # fmt: skip
    files = [p for p in export.iterdir() if p.suffix == ".ndjson"]
    lines = 0
    for path in files:
        with path.open("rb") as handle:
            lines += sum(1 for _ in handle)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    cores = os.cpu_count() or 1
    runs: list[dict[str, Any]] = []
    for workers in sorted({1, cores}):
        measured = []
        for _ in range(repeats):
            out = work / f"w-{patients}-{workers}.csv"
            result = timed(
                [str(CDS), "screen", str(export), "--now", NOW, "--out", str(out), "--workers", str(workers),
                 "--no-progress", "--keep-work"]
            )  # fmt: skip
            summary = json.loads((work / f"w-{patients}-{workers}.csv.work" / "summary.json").read_text())
            shutil.rmtree(work / f"w-{patients}-{workers}.csv.work")
            result.update(summary=summary)
            measured.append(result)
        runs.append(_row("local", workers, patients, measured))
    if spark_max and patients <= spark_max and spark_available():
        out = work / f"s-{patients}.csv"
        result = timed(
            [str(CDS), "screen", str(export), "--now", NOW, "--out", str(out), "--engine", "spark",
             "--spark-master", f"local[{cores}]"]
        )  # fmt: skip
        result["summary"] = None
        runs.append(_row("spark-local", cores, patients, [result]))
        local = (work / f"w-{patients}-{cores}.csv").read_bytes()
        runs[-1]["same_worklist_as_local"] = out.read_bytes() == local
    return {
        "patients": patients,
        "background_per_patient": background,
        "lines": lines,
        "export_mb": size_mb,
        "synth": {k: synth[k] for k in ("wall_s", "cpu_s", "main_peak_rss_mb")},
        "runs": runs,
    }


def _row(engine: str, workers: int, patients: int, measured: list[dict[str, Any]]) -> dict[str, Any]:
    wall = statistics.median(m["wall_s"] for m in measured)
    cpu = statistics.median(m["cpu_s"] for m in measured)
    row: dict[str, Any] = {
        "engine": engine,
        "workers": workers,
        "repeats": len(measured),
        "wall_s": wall,
        "wall_s_all": [m["wall_s"] for m in measured],
        "cpu_s": cpu,
        "patients_per_s": patients / wall,
        "patients_per_cpu_s": patients / cpu,
        "main_peak_rss_mb": max(m["main_peak_rss_mb"] for m in measured),
        "worker_peak_rss_mb": max(m["worker_peak_rss_mb"] for m in measured),
    }
    summary = measured[0].get("summary")
    if summary:
        row["steps_s"] = summary["seconds"]
        row["buckets"] = summary["buckets"]
        row["with_cards"] = summary["withCards"]
        row["errors"] = summary["errors"]
    return row


def projection(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """One million patients, from the largest local run: CPU per patient scales linearly."""
    largest = max(sizes, key=lambda s: s["patients"])
    single = next(r for r in largest["runs"] if r["engine"] == "local" and r["workers"] == 1)
    cpu_per_patient = single["cpu_s"] / largest["patients"]
    return {
        "from_patients": largest["patients"],
        "cpu_s_per_patient": cpu_per_patient,
        "core_minutes_per_million": cpu_per_patient * 1e6 / 60,
        "hours_on_2_cores": cpu_per_patient * 1e6 / 2 / 3600,
        "hours_on_32_cores": cpu_per_patient * 1e6 / 32 / 3600,
        "export_gb_per_million": largest["export_mb"] / largest["patients"] * 1e6 / 1000,
        "note": "assumes CPU per patient stays flat (measured 1k vs 10k) and memory per worker stays one bucket",
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "# cds screen benchmark",
        "",
        f"Machine: {report['machine']}. {report['note']}",
        "",
        "| N | lines | MB | engine | workers | wall s | CPU s | patients/s | patients/CPU-s | partition s | "
        "evaluate s | main RSS MB | worker RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in report["sizes"]:
        for run in size["runs"]:
            steps = run.get("steps_s", {})
            lines.append(
                f"| {size['patients']} | {size['lines']} | {size['export_mb']:.0f} | {run['engine']} | {run['workers']} "
                f"| {run['wall_s']:.1f} | {run['cpu_s']:.1f} | {run['patients_per_s']:.0f} "
                f"| {run['patients_per_cpu_s']:.0f} | {steps.get('partition', float('nan')):.1f} "
                f"| {steps.get('evaluate', float('nan')):.1f} | {run['main_peak_rss_mb']:.0f} "
                f"| {run['worker_peak_rss_mb']:.0f} |"
            )
    p = report["projection"]
    lines += [
        "",
        f"Projection to one million patients (from N={p['from_patients']}): {p['cpu_s_per_patient'] * 1000:.1f} ms "
        f"CPU per patient, {p['core_minutes_per_million']:.0f} core-minutes, {p['hours_on_2_cores']:.1f} h on 2 "
        f"cores, {p['hours_on_32_cores']:.2f} h on 32; export about {p['export_gb_per_million']:.0f} GB.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    sizes = [int(s) for s in os.environ.get("SCREEN_SIZES", "1000,10000").split(",")]
    background = int(os.environ.get("SCREEN_BACKGROUND", "60"))
    repeats = int(os.environ.get("SCREEN_REPEATS", "1"))
    spark_max = int(os.environ.get("SCREEN_SPARK_MAX", "1000"))
    out = Path(os.environ.get("BENCH_OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    keep = os.environ.get("SCREEN_WORK")
    with tempfile.TemporaryDirectory(prefix="screen-bench-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        results = []
        for patients in sizes:
            print(f"screen bench: {patients} patients ...", flush=True)
            results.append(
                bench_size(patients, background=background, repeats=repeats, spark_max=spark_max, work=work)
            )
    report = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "note": f"Load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (a shared machine: compare CPU seconds, "
        "not only wall time).",
        "sizes": results,
        "projection": projection(results),
    }
    (out / "screen.json").write_text(json.dumps(report, indent=1))
    (out / "screen.md").write_text(render(report))
    print(f"wrote {out / 'screen.md'}")


if __name__ == "__main__":
    main()
