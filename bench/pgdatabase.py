"""A throw-away PostgreSQL database for a benchmark: created on BENCH_PG_HOST:BENCH_PG_PORT (127.0.0.1:5432,
user postgres), dropped afterwards; None when no server can be reached, so the caller skips PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator


@contextlib.contextmanager
def fresh_postgres(prefix: str) -> Iterator[str | None]:
    """Yield the SQLAlchemy URL of a new database named `prefix_<random>`, or None without a server."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        yield None
        return
    host, port = os.environ.get("BENCH_PG_HOST", "127.0.0.1"), os.environ.get("BENCH_PG_PORT", "5432")
    admin = f"host={host} port={port} user=postgres dbname=postgres connect_timeout=3"
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error:
        yield None
        return
    try:
        yield f"postgresql+psycopg://postgres@{host}:{port}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
