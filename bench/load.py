"""HTTP benchmark pieces: start a server, wait for readiness, drive it with bench.loadgen, read RSS and CPU."""

from __future__ import annotations

import json
import os
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


@dataclass(frozen=True)
class ClientKey:
    """A benchmark CDS client: its ES384 key (PEM) and the trusted-issuers file that makes the service
    accept its tokens (bench.loadgen signs a fresh JWT for every request with it)."""

    pem: Path
    trusted_issuers: Path
    iss: str = "https://bench-ehr.example.org"
    kid: str = "bench-key-1"

    @classmethod
    def create(cls, folder: Path) -> ClientKey:
        import jwt
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1())
        pem = folder / "bench-client.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        made = cls(pem=pem, trusted_issuers=folder / "bench-trusted-issuers.json")
        public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwks = {"keys": [{**public, "kid": made.kid, "use": "sig", "alg": "ES384"}]}
        made.trusted_issuers.write_text(json.dumps({"issuers": [{"iss": made.iss, "jwks": jwks}]}))
        return made

    def loadgen_args(self, tokens: int) -> list[str]:
        return [
            "--jwt-key",
            str(self.pem),
            "--jwt-iss",
            self.iss,
            "--jwt-kid",
            self.kid,
            "--tokens",
            str(tokens),
        ]


def cds_server(port: int, workers: int, db: Path | str, client: ClientKey | None = None) -> Any:
    """`cds serve --dev` (no authentication), or with `client` the real service with JWT on (on the
    machine clock: --dev's fixed evaluation day is for --dev only); `db` is a SQLite file or a URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    env = {"CDS_DATABASE_URL": url, "CDS_LOG_LEVEL": "WARNING"}
    command = [str(BIN / "cds"), "serve", "--port", str(port), "--workers", str(workers)]
    if client is None:
        command.append("--dev")
    else:
        env |= {
            "CDS_TRUSTED_ISSUERS": str(client.trusted_issuers),
            "CDS_PATIENT_HASH_KEY": "bench-" + "0" * 32,
            "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        }
    return serve(command, port, "/readyz", env=env)


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


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes have used so far (steadier than req/s on a shared machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


# Tokens signed ahead per second of a JWT run: above any rate one worker pair reached here (echo aside).
TOKENS_PER_SECOND = 600


def drive(
    url: str,
    bodies: Path,
    *,
    concurrency: int,
    duration_s: float | None = None,
    count: int | None = None,
    client: ClientKey | None = None,
) -> dict[str, Any]:
    """One run of bench.loadgen in its own process, cycling through every body in `bodies` (JSON lines);
    with `client`, every request signed (tokens signed before the measured window)."""
    limit = ["--duration", str(duration_s)] if duration_s is not None else ["--count", str(count)]
    command = [sys.executable, "-m", "bench.loadgen", url, str(bodies), str(concurrency), *limit]
    if client is not None:
        tokens = count if count is not None else int((duration_s or 0) * TOKENS_PER_SECOND) + 100
        command += client.loadgen_args(tokens)
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])
