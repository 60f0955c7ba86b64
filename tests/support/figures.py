"""Figures the hardening tests measure (cases generated and run), kept in bench/results/hardening.json.

Each tool writes only its own key, so tests run in any order or subset keep each other's figures;
the read-modify-write holds a lock file, so pytest-xdist workers recording at once lose nothing.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent.parent / "bench" / "results" / "hardening.json"


def record_figures(key: str, figures: dict[str, Any]) -> None:
    """Replace `key` in bench/results/hardening.json (git-ignored), leaving the other keys as they are."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing: dict[str, Any] = {}
        if RESULTS.exists():
            try:
                existing = json.loads(RESULTS.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                existing = {}
        existing[key] = figures
        RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n", encoding="utf-8")
