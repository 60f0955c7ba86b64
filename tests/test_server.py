"""`cds serve` as a real process: it starts, prints a curl call that returns cards, and guards --dev."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cds.cli import main

ROOT = Path(__file__).resolve().parent.parent
CDS = Path(sys.executable).parent / "cds"
SERVE_KEYS = (
    "CDS_DEV",
    "CDS_HOST",
    "CDS_PORT",
    "CDS_WORKERS",
    "CDS_PATIENT_HASH_KEY",
    "CDS_TRUSTED_ISSUERS",
    "CDS_PUBLIC_BASE_URL",
    "CDS_TRUSTED_PROXIES",
    "CDS_DEMO_NOW",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"cds serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("cds serve did not become ready")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_dev_prints_a_curl_call_that_returns_cards(tmp_path: Path, workers: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}", "PYTHONUNBUFFERED": "1"}
    command = [str(CDS), "serve", "--dev", "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process)
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner
        curl_line = process.stdout.readline()
        assert curl_line.startswith("try:")
        result = subprocess.run(
            shlex.split(curl_line.removeprefix("try:")),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert '"cards":[{' in result.stdout
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "JWT authentication is OFF" in err
    assert "hook-patient" not in err  # the JSON log names no patient


# `cds serve --dev` in a process whose clock is a year and a half past the fixtures' day (time-machine
# moves datetime.now and time.time for the whole process, uvicorn included).
FUTURE_SERVE = """
import sys, time_machine
time_machine.travel("2027-12-01T09:00:00+00:00", tick=True).start()
from cds.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_make_runs_printed_call_returns_the_documented_cards_a_year_ahead(tmp_path: Path) -> None:
    """The demo never expires: --dev evaluates as of the fixtures' day whatever the machine clock says."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", FUTURE_SERVE, "serve", "--dev", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process)
        assert process.stdout is not None
        process.stdout.readline()  # the banner
        curl_line = process.stdout.readline()
        assert process.stdout.readline().startswith("demo clock: every call is evaluated as of 2026-06-01")
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        result = subprocess.run(
            [*shlex.split(curl_line.removeprefix("try:")), "-D", "-"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    head, _, body = result.stdout.partition("\n\n")  # text mode: CRLF read as LF
    topics = sorted(card["source"]["topic"]["code"] for card in json.loads(body)["cards"])
    documented = {
        item["file"]: item for item in json.loads((ROOT / "fixtures" / "manifest.json").read_text())
    }
    assert topics == documented["hook-request.json"]["expect_topics"]
    assert "cds-demo-now: 2026-06-01T23:59:59.999999+00:00" in head
    assert "date: Wed, 01 Dec 2027" in head  # the server's own clock is in December 2027
    assert health.headers["cds-demo-now"] == "2026-06-01T23:59:59.999999+00:00"
    assert '"demoNow":"2026-06-01T23:59:59.999999+00:00"' in err
    # The process really lived in December 2027: its own log lines are stamped so.
    assert '"time":"2027-12-01T' in err


@pytest.mark.usefixtures("clean_env")
def test_serve_now_is_for_dev_only() -> None:
    result = CliRunner().invoke(main, ["serve", "--now", "2026-06-01"])
    assert result.exit_code == 2
    assert "--now is for --dev only" in result.output


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """cds serve exports its options for the workers; make sure the test process gets them back."""
    for key in SERVE_KEYS:
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
def test_serve_dev_refuses_a_public_host() -> None:
    result = CliRunner().invoke(main, ["serve", "--dev", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "127.0.0.1 only" in result.output


@pytest.mark.usefixtures("clean_env")
def test_serve_without_dev_needs_the_secrets() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "CDS_PATIENT_HASH_KEY" in result.output


@pytest.mark.usefixtures("clean_env")
def test_cds_dev_in_the_environment_alone_does_not_turn_auth_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DEV", "true")
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "CDS_PATIENT_HASH_KEY" in result.output


def test_serve_on_a_busy_port_fails_before_printing_the_call() -> None:
    """`make run` on a busy port: one clear line naming the port and the PORT= option, no curl call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(CDS), "serve", "--dev", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stdout == ""  # neither the URL nor the curl call
    assert f"port {port}: Address already in use" in done.stderr
    assert f"make run PORT={port + 1}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_port_and_host_to_cds_serve() -> None:
    done = subprocess.run(
        ["make", "-n", "run", "PORT=8123", "HOST=127.0.0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "bin/cds serve --dev --host 127.0.0.1 --port 8123" in done.stdout


@pytest.mark.usefixtures("clean_env")
def test_serve_without_dev_needs_its_public_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 9 class 5: outside --dev the JWT audience comes from configuration, never from Host."""
    monkeypatch.setenv("CDS_PATIENT_HASH_KEY", "a-real-secret")
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text("issuers: [{iss: https://ehr.example.org, jwks: {keys: []}}]\n")
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", str(trusted))
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "CDS_PUBLIC_BASE_URL must be set outside --dev" in result.output
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "cds.example.org/no-scheme")
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "absolute http(s) URL" in result.output
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "https://cds.example.org")
    monkeypatch.setenv("CDS_TRUSTED_PROXIES", '["not-an-ip"]')
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "'not-an-ip' is not an IP address or network" in result.output
