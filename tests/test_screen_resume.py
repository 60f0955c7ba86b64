"""`cds screen` as a real process: killed mid-way (SIGKILL, SIGINT) and resumed gives the same
worklist as an uninterrupted run; a progress bar on a terminal, none when stderr is not one."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cds.rulepack import load_rule_pack
from cds.synth import load_templates, write_export
from tests.conftest import FIXTURES, ROOT, RULES
from tests.support.cli import CDS, cds

NOW = "2026-06-01"
BUCKETS = 40


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    write_export(
        folder,
        patients=160,
        seed=21,
        pack=load_rule_pack(RULES),
        templates=load_templates(FIXTURES),
        source="fixtures",
        background=5,
    )
    return folder


@pytest.fixture(scope="module")
def uninterrupted(export: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("whole") / "w.csv"
    done = cds("screen", export, "--now", NOW, "--out", out, "--workers", "1", "--buckets", str(BUCKETS))
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def start(export: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    if not CDS.exists():
        pytest.skip("the console script is not installed in .venv (run make install)")
    return subprocess.Popen(
        [str(CDS), "screen", str(export), "--now", NOW, "--out", str(out), "--buckets", str(BUCKETS), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_some_buckets(process: subprocess.Popen[str], results: Path, at_least: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = len(list(results.glob("*.json"))) if results.is_dir() else 0
        if done >= at_least:
            return done
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    raise AssertionError("no bucket finished in time")


@pytest.mark.parametrize(
    ("sig", "workers"), [(signal.SIGKILL, "1"), (signal.SIGINT, "2")], ids=["sigkill", "sigint"]
)
def test_an_interrupted_run_resumes_to_the_same_worklist(
    export: Path, uninterrupted: bytes, tmp_path: Path, sig: signal.Signals, workers: str
) -> None:
    out = tmp_path / "w.csv"
    results = tmp_path / "w.csv.work" / "results"
    process = start(export, out, "--workers", workers)
    wait_for_some_buckets(process, results, 3)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert "interrupted; run the same command with --resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    finished = len(list(results.glob("*.json")))
    assert 0 < finished < BUCKETS, "the run was stopped mid-way"
    assert not out.exists() or out.read_bytes() != uninterrupted
    done = cds(
        "screen",
        export,
        "--now",
        NOW,
        "--out",
        out,
        "--workers",
        workers,
        "--buckets",
        str(BUCKETS),
        "--resume",
    )
    assert done.returncode == 0, done.stderr
    assert f"resuming: {finished}" in done.stderr or "resuming:" in done.stderr
    assert out.read_bytes() == uninterrupted


def test_resume_refuses_another_now(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.csv"
    done = cds(
        "screen", export, "--now", NOW, "--out", out, "--workers", "1", "--buckets", "4", "--keep-work"
    )
    assert done.returncode == 0
    done = cds(
        "screen", export, "--now", "2026-07-01", "--out", out, "--workers", "1", "--buckets", "4", "--resume"
    )
    assert done.returncode == 2
    assert "cannot resume" in done.stderr
    assert "now" in done.stderr


def test_a_progress_bar_on_a_terminal_and_none_otherwise(export: Path, tmp_path: Path) -> None:
    if not CDS.exists():
        pytest.skip("the console script is not installed in .venv (run make install)")
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen(
        [str(CDS), "screen", str(export), "--now", NOW, "--out", str(tmp_path / "a.csv"), "--workers", "1"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child_fd,
    )
    os.close(child_fd)
    seen = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert process.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "evaluate" in text
    assert "patient/s" in text
    assert "160/160" in text
    assert "patients read: 160" in text
    piped = cds("screen", export, "--now", NOW, "--out", tmp_path / "b.csv", "--workers", "1")
    assert piped.returncode == 0
    assert "patient/s" not in piped.stderr
    assert "patients read: 160" in piped.stderr
