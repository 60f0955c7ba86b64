"""A bounded run of the atheris target (tests/fuzz/fuzz_request.py) in a subprocess: no crash in ~10 s.

`make fuzz` runs the same target for FUZZ_SECONDS (default 600). Skipped where atheris is not installed
(it ships wheels for Linux x86-64 only).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.figures import record_figures

HERE = Path(__file__).resolve().parent
TARGET = HERE / "fuzz_request.py"
SECONDS = 10


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_the_request_parser_survives_a_bounded_fuzz_run(tmp_path: Path) -> None:
    found = tmp_path / "corpus"  # new inputs go here, never into the checked-in seed corpus
    found.mkdir()
    command = [
        sys.executable,
        str(TARGET),
        str(found),
        str(HERE / "corpus"),
        f"-dict={HERE / 'fhir.dict'}",
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    # Generous timeout: only there so that a hang fails the test instead of the CI job.
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120, check=False)
    log = result.stderr
    crash = [p.name for p in tmp_path.glob("crash-*")]
    assert result.returncode == 0, f"fuzz target crashed ({crash}):\n{log[-4000:]}"
    stats = dict(re.findall(r"stat::(\w+):\s*(\d+)", log))
    runs = int(stats.get("number_of_executed_units", 0))
    print(f"atheris: {runs} inputs run in {SECONDS} s, {stats.get('new_units_added', 0)} new coverage inputs")
    record_figures(
        "atheris", {"seconds": SECONDS, "runs": runs, "new_units": int(stats.get("new_units_added", 0))}
    )
    assert runs > 0
