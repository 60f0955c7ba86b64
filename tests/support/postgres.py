"""Session fixture giving tests a private PostgreSQL database on 127.0.0.1:5432, or skipping."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"
ADMIN_DATABASE = "test"


def _admin_conninfo(dbname: str = ADMIN_DATABASE) -> str:
    return f"host={HOST} port={PORT} user={USER} dbname={dbname} connect_timeout=3"


def sqlalchemy_url(dbname: str) -> str:
    """SQLAlchemy URL (psycopg 3 driver) for a database on the test server."""
    return f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{dbname}"


def _reachable() -> bool:
    try:
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _port_open() -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, PORT), timeout=1):
        return True
    return False


def _try_start_cluster() -> None:
    """Best effort: start the local Debian cluster; any failure is ignored (the caller skips)."""
    ctl = shutil.which("pg_ctlcluster")
    versions = (
        sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    )
    if ctl is None or not versions:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [ctl, "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _port_open():
        time.sleep(0.2)


def create_database(prefix: str = "cds_test") -> str:
    """Create an empty database with a random name and return that name."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    """Drop a database made by ``create_database``, closing any connection still using it."""
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_database(prefix: str = "cds_test") -> Iterator[str]:
    """Yield the SQLAlchemy URL of a brand-new database, dropped afterwards."""
    name = create_database(prefix)
    try:
        yield sqlalchemy_url(name)
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a database created for this test run (dropped at the end); skips without PostgreSQL."""
    if not _reachable():
        _try_start_cluster()
        if not _reachable():
            pytest.skip("no PostgreSQL reachable")
    with fresh_database() as url:
        yield url
