"""A small HTTP/1.1 load generator that cycles through many distinct bodies (`hey` sends one body only).

Run in its own process so that it does not share an interpreter with the server:
`python -m bench.loadgen URL BODIES.jsonl CONCURRENCY (--duration S | --count N)`; prints one JSON
object: requests, rps, latency percentiles (ms), statuses. Each of the CONCURRENCY connections is kept
alive and takes the next body of the population in turn, so a run of N requests sends
min(N, population) distinct bodies.

JWT on (`--jwt-key PEM --jwt-iss ISS --jwt-kid KID`): every request carries its own ES384 token (a new
jti each: the service refuses a replayed one), as a CDS client signs them, with `aud` the URL. The
tokens are signed before the clock starts (`--tokens`, enough for the run), so the load tool's signing
does not take CPU from the server during the measured window; more are signed inline if they run out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def read_bodies(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    return status


def token_signer(pem: bytes, iss: str, kid: str, audience: str) -> Callable[[], str]:
    """A function giving a fresh ES384 client JWT for `audience` on every call (CDS Hooks 2.0 claims)."""
    import jwt  # PyJWT, a dependency of the service
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)

    def sign() -> str:
        now = int(time.time())
        claims = {"iss": iss, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, key, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})  # type: ignore[arg-type]

    return sign


async def run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    *,
    duration: float | None,
    count: int | None,
    sign: Callable[[], str] | None = None,
    tokens: int = 0,
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        for body in bodies
    ]
    signed = [sign() for _ in range(tokens)] if sign is not None else []
    signed.reverse()

    def request_for(index: int) -> bytes:
        if sign is None:
            return heads[index] + b"\r\n" + bodies[index]
        token = signed.pop() if signed else sign()
        return heads[index] + f"Authorization: Bearer {token}\r\n\r\n".encode() + bodies[index]

    order = itertools.cycle(range(len(heads)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    began = time.perf_counter()
    deadline = began + duration if duration is not None else None

    def more() -> bool:
        if count is not None:
            return sent < count
        return deadline is not None and time.perf_counter() < deadline

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        try:
            while more():
                sent += 1
                request = request_for(next(order))
                start = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(latencies),
        "distinct_bodies": min(len(latencies), len(bodies)),
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "p99.9": pct(0.999)},
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path, help="one JSON body per line")
    parser.add_argument("concurrency", type=int)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--duration", type=float)
    group.add_argument("--count", type=int)
    parser.add_argument("--jwt-key", type=Path, help="PEM file of the client's EC P-384 private key")
    parser.add_argument("--jwt-iss", default="https://bench-ehr.example.org")
    parser.add_argument("--jwt-kid", default="bench-key-1")
    parser.add_argument("--tokens", type=int, default=0, help="tokens signed before the clock starts")
    args = parser.parse_args(argv)
    sign = (
        token_signer(args.jwt_key.read_bytes(), args.jwt_iss, args.jwt_kid, args.url)
        if args.jwt_key is not None
        else None
    )
    result = asyncio.run(
        run(
            args.url,
            read_bodies(args.bodies),
            args.concurrency,
            duration=args.duration,
            count=args.count,
            sign=sign,
            tokens=args.tokens,
        )
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
