"""Smoke versions of every benchmark (seconds, not minutes), so the harness cannot rot. No timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from bench import run as bench_run
from bench.inprocess import bench_inprocess, bench_inprocess_memory
from bench.patients import as_hook_request, make_patient
from bench.report import measured, render
from cds.evaluation import Evaluator
from cds.intake import load_json
from tests.conftest import ROOT


@pytest.mark.parametrize("size", [4, 10, 50, 250])
def test_generated_patient_has_exactly_that_many_resources_and_evaluates(
    evaluator: Evaluator, size: int
) -> None:
    bundle = make_patient(size)
    assert len(bundle["entry"]) == size
    assert make_patient(size) == bundle  # deterministic
    result = evaluator.evaluate_document(
        load_json(orjson.dumps(bundle)), now=bench_run.datetime(2026, 6, 1, tzinfo=bench_run.UTC)
    )
    assert "lifestyle" in {c["source"]["topic"]["code"] for c in result.cards}


def test_hook_request_form_carries_every_prefetch_key(evaluator: Evaluator) -> None:
    request = as_hook_request(make_patient(50))
    assert set(request["prefetch"]) == {
        "patient",
        "observations",
        "conditions",
        "medicationRequests",
        "medicationStatements",
        "questionnaireResponses",
    }
    result = evaluator.evaluate_document(request, now=bench_run.datetime(2026, 6, 1, tzinfo=bench_run.UTC))
    assert result.cards


def test_inprocess_smoke() -> None:
    rows = bench_inprocess(sizes=(10,), runs=20, repeats=2)
    generated = next(r for r in rows if r["patient"] == "generated-10")
    assert generated["resources"] == 10
    assert generated["runs_per_round"] == 20
    assert generated["median_us"] > 0
    assert generated["p99_us"] >= generated["median_us"]
    assert set(generated["stage_share"]) == {
        "parse",
        "intake+validate",
        "normalise",
        "facts",
        "engine",
        "cards",
    }
    assert sum(generated["stage_share"].values()) == pytest.approx(1.0)


def test_inprocess_memory_smoke() -> None:
    result = bench_inprocess_memory(evaluations=50, size=10)
    assert result["evaluations"] == 50
    assert result["live_sessions"] == 0
    assert result["rss_after_mb"] > 0


def test_whole_bench_smoke_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full `make bench` path with tiny durations: servers start (JWT off and on), bench.loadgen
    drives them, the report is written."""
    for name, value in {
        "BENCH_DURATION": "0.5",
        "BENCH_REPEATS": "1",
        "BENCH_RUNS": "10",
        "BENCH_MEMORY_CALLS": "200",
        "BENCH_SIZES": "10,50",
        "BENCH_PATIENTS": "20",
        "BENCH_WORKERS": "1",
        "BENCH_CONCURRENCY": "8",
        "BENCH_DATABASES": "sqlite",
        "BENCH_OUT": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    bench_run.main()
    report = json.loads((tmp_path / "latest.json").read_text())
    assert {r["target"] for r in report["http"]} == {"cramp-assessment", "echo"}
    # JWT on (the default BENCH_AUTH runs both): every signed request was accepted, none was a 401.
    assert {r["auth"] for r in report["http"] if r["target"] != "echo"} == {"off", "jwt"}
    assert all(r["non_200"] == 0 and r["requests"] > 0 for r in report["http"])
    assert all(r["patients"] == 20 and r["cpu_ms_per_request"]["median"] > 0 for r in report["http"])
    assert report["startup_s"]["median"] > 0
    got = measured(report)
    assert all(
        value is not None
        for name, value in got.items()
        if name not in {"inprocess_1000_median_us", "http_50_c8_w1_postgresql_vs_sqlite"}
    )
    markdown = (tmp_path / "latest.md").read_text()
    assert "## Summary against the targets" in markdown
    assert "cramp-assessment" in markdown
    assert render(report, bench_run.TARGETS) == markdown


def test_complexity_smoke_reports_a_cost_per_resource_for_each_shape() -> None:
    from bench.complexity import SHAPES, bench_complexity, growth, render_complexity

    rows = bench_complexity(sizes=(10, 100, 1000), repeats=1)
    assert {r["shape"] for r in rows} == set(SHAPES)
    assert all(r["us_per_resource"] > 0 and r["resources"] in (10, 100, 1000) for r in rows)
    assert all(growth(rows, shape) is not None for shape in SHAPES)
    markdown = "\n".join(render_complexity(rows))
    assert "µs per resource" in markdown


def test_loadgen_cycles_every_body_of_the_population(tmp_path: Path) -> None:
    """bench.loadgen sends each distinct body in turn (hey could send only one), against the echo server."""
    from bench.load import drive, echo_server, free_port

    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(10)))
    port = free_port()
    with echo_server(port, 1) as running:
        result = drive(running.base_url + "/echo", bodies, concurrency=3, count=25)
    assert result["requests"] == 25
    assert result["distinct_bodies"] == 10
    assert result["statuses"] == {"200": 25}
