"""A small HTTP/1.1 load generator that cycles through many distinct bodies (`hey` sends one body only).

Run in its own process so that it does not share an interpreter with the server:
`python -m bench.loadgen URL BODIES.jsonl CONCURRENCY (--duration S | --count N)`; prints one JSON
object: requests, rps, latency percentiles (ms), statuses. Each of the CONCURRENCY connections is kept
alive and takes the next body of the population in turn, so a run of N requests sends
min(N, population) distinct bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
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


async def run(
    url: str, bodies: list[bytes], concurrency: int, *, duration: float | None, count: int | None
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
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
                request = heads[next(order)]
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
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.url, read_bodies(args.bodies), args.concurrency, duration=args.duration, count=args.count)
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
