"""Storage fixtures: a real S3 server (moto_server, started here) and a migrated database on
SQLite and on PostgreSQL (a fresh database per test module, dropped afterwards)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from fedhive.storage.database import Database
from fedhive.storage.models import Base

REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
S3_START_TIMEOUT_S = 30.0


def _unavailable(msg: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{msg} and FEDHIVE_REQUIRE_SERVICES=1: real-service tests are required here")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """The endpoint URL of a moto S3 server that lives for the test session."""
    if not MOTO_SERVER.exists():
        _unavailable(f"moto_server is not installed at {MOTO_SERVER} (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while not _port_open(port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                _unavailable(f"moto_server exited with {proc.returncode}: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                _unavailable(f"moto_server did not open port {port} within {S3_START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def unused_port() -> int:
    """A local TCP port nothing listens on (to reach a server that is down)."""
    return free_port()


@pytest.fixture(scope="module")
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test module."""
    base = sa.make_url(postgres_url)
    admin = base.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    name = f"fedhive_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: a new SQLite file per test, or the module's PostgreSQL
    database emptied after each test."""
    if request.param == "sqlite":
        database = Database(tmp_path / "fedhive.db")
    else:
        database = Database(request.getfixturevalue("pg_database"))
    database.upgrade()
    try:
        yield database
    finally:
        if not database.is_sqlite:
            with database.engine.begin() as conn:  # DELETE: much faster than TRUNCATE on tiny tables
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(table.delete())
        database.dispose()
