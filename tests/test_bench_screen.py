"""Smoke run of the screening benchmark (bench/screen.py): tiny sizes, no Spark, no timing asserts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import screen as bench_screen
from tests.conftest import ROOT


def test_screen_bench_smoke_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not bench_screen.CDS.exists():
        pytest.skip("the console script is not installed in .venv (run make install)")
    for name, value in {
        "SCREEN_SIZES": "20,40",
        "SCREEN_BACKGROUND": "0",
        "SCREEN_SPARK_MAX": "0",
        "BENCH_OUT": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    bench_screen.main()
    report = json.loads((tmp_path / "screen.json").read_text())
    assert [s["patients"] for s in report["sizes"]] == [20, 40]
    for size in report["sizes"]:
        engines = {(r["engine"], r["workers"]) for r in size["runs"]}
        assert ("local", 1) in engines
        for run in size["runs"]:
            assert run["cpu_s"] > 0
            assert run["main_peak_rss_mb"] > 0
            assert set(run["steps_s"]) == {"partition", "evaluate", "write"}
    assert report["projection"]["from_patients"] == 40
    assert report["projection"]["core_minutes_per_million"] > 0
    assert "Projection to one million patients" in (tmp_path / "screen.md").read_text()
