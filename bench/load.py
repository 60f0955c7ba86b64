"""HTTP benchmark pieces: start a server, wait for readiness, drive it with `hey`, read RSS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    started_s: float

    def worker_pids(self) -> list[int]:
        """uvicorn's worker processes (children of the supervisor), or the server itself with one worker."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        # multiprocessing's resource tracker is a child too, but it serves no requests.
        pids = [p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        return pids or [self.process.pid]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


@contextmanager
def serve(
    command: Sequence[str], port: int, ready_path: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    began = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready_path)
        yield Server(process=process, base_url=base, started_s=time.perf_counter() - began)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cds_server(port: int, workers: int, db: Path) -> Any:
    return serve(
        [str(BIN / "cds"), "serve", "--dev", "--port", str(port), "--workers", str(workers)],
        port,
        "/readyz",
        env={"CDS_DATABASE_URL": f"sqlite:///{db}", "CDS_LOG_LEVEL": "WARNING"},
    )


def echo_server(port: int, workers: int) -> Any:
    return serve(
        [
            str(BIN / "uvicorn"),
            "bench.echo_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        port,
        "/docs",
    )


def hey_path() -> str:
    found = shutil.which("hey")
    if found is None:
        raise RuntimeError("the load tool `hey` is not installed: apt-get install hey")
    return found


def hey_command(body: Path, concurrency: int) -> list[str]:
    return [hey_path(), "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body)]


def send_requests(url: str, body: Path, *, count: int, concurrency: int = 8) -> None:
    """Fire `count` requests and wait for them (warm-up and memory runs; no figures kept)."""
    subprocess.run([*hey_command(body, concurrency), "-n", str(count), url], capture_output=True, check=True)


def run_hey_csv(url: str, body: Path, *, concurrency: int, duration_s: float) -> dict[str, Any]:
    """One timed `hey` run, read from its per-request CSV so that p99.9 and non-200 counts are exact."""
    command = [*hey_command(body, concurrency), "-z", f"{duration_s}s", "-o", "csv", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in output.splitlines()[1:] if line]
    latencies = sorted(float(r[0]) * 1000 for r in rows)
    statuses: dict[int, int] = {}
    for row in rows:
        statuses[int(row[6])] = statuses.get(int(row[6]), 0) + 1
    offsets = [float(r[7]) for r in rows]
    span = (max(offsets) - min(offsets) + latencies[-1] / 1000) if offsets else 0.0

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(rows),
        "rps": len(rows) / span if span else 0.0,
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "p99.9": pct(0.999)},
        "statuses": statuses,
    }
