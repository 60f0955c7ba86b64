"""Run the installed `cds` console script as a user would, and refuse any traceback on stderr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CDS = ROOT / ".venv" / "bin" / "cds"


def cds(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if not CDS.exists():
        pytest.skip("the console script is not installed in .venv (run make install)")
    done = subprocess.run(
        [str(CDS), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert "Traceback" not in done.stderr
    return done
