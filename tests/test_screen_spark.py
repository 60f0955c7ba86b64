"""`cds screen --engine spark` in local mode gives the very worklist of the local engine, errors included.

Skipped cleanly without PySpark (the optional extra: `make spark-test` installs it) or without Java."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cds.rulepack import load_rule_pack
from cds.synth import load_templates, write_export
from tests.conftest import FIXTURES, ROOT, RULES
from tests.support.cli import CDS

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("pyspark") is None, reason="pyspark not installed (make spark-test)"
    ),
    pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime for Spark"),
    pytest.mark.slow,
]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not CDS.exists():
        pytest.skip("the console script is not installed in .venv (run make install)")
    # Spark in local mode starts in 20-60 s on a busy 2-core machine; the job itself is small.
    done = subprocess.run(
        [str(CDS), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
    )
    assert "Traceback" not in done.stderr.split("patients read:")[-1]
    return done


def test_spark_and_local_engines_write_the_same_worklist(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_export(
        export,
        patients=60,
        seed=31,
        pack=load_rule_pack(RULES),
        templates=load_templates(FIXTURES),
        source="fixtures",
        background=3,
    )
    (export / "manifest.json").unlink()
    with (export / "Extra.ndjson").open("w") as handle:
        handle.write("{not json\n")
        cramp = {"coding": [{"system": "http://snomed.info/sct", "code": "55300003"}]}
        handle.write(json.dumps({"resourceType": "Condition", "id": "orphan", "code": cramp}) + "\n")
    local = run(
        "screen",
        export,
        "--now",
        "2026-06-01",
        "--out",
        tmp_path / "local.ndjson",
        "--out",
        tmp_path / "local.csv",
        "--workers",
        "1",
        "--buckets",
        "4",
    )
    assert local.returncode == 0, local.stderr
    spark = run(
        "screen",
        export,
        "--now",
        "2026-06-01",
        "--out",
        tmp_path / "spark.ndjson",
        "--out",
        tmp_path / "spark.csv",
        "--engine",
        "spark",
        "--spark-master",
        "local[2]",
        "--buckets",
        "4",
    )
    assert spark.returncode == 0, spark.stderr[-3000:]
    assert (tmp_path / "spark.ndjson").read_bytes() == (tmp_path / "local.ndjson").read_bytes()
    assert (tmp_path / "spark.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    summary = local.stderr[local.stderr.index("patients read:") :]
    assert summary in spark.stderr
    assert "errors: 2" in summary
