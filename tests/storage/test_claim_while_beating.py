"""Claiming peers for a session while their heartbeats are being written (PostgreSQL row locks).

A heartbeat locks its node's row until its unit of work commits. A claim that skipped locked rows
(SKIP LOCKED) missed that node and answered "not enough peers" while every node was ONLINE: a CI
run under load failed a session start so. A claim now waits for the row, boundedly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from fedhive.errors import StorageError
from fedhive.storage import users_repo as repo
from fedhive.storage.database import Database
from fedhive.storage.models import Base, ClientStatus
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.storage.sessions_repo import create_session

pytestmark = pytest.mark.postgres

BOX = SecretBox(new_key_text(), origin="test key")
SITES = ["p1", "p2", "p3"]
WAIT_S = 60.0  # for a claim to block on the held row or to return: generous for a loaded machine


@pytest.fixture
def pg(pg_database: str) -> Iterator[Database]:
    database = Database(pg_database)
    database.upgrade()
    try:
        with database.session() as s:
            for cid in SITES:
                repo.create_client(s, cid, box=BOX, client_id=cid)
                repo.record_heartbeat(s, cid)
        yield database
    finally:
        with database.engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        database.dispose()


LOCK_WAITERS = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def blocked_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as conn:
        return bool(conn.execute(LOCK_WAITERS).scalar_one())


def wait_until_blocked_or_done(db: Database, thread: threading.Thread) -> None:
    """Until the claim ends (its thread's join returns at once then) or waits on a row lock (only
    PostgreSQL's activity view tells: looked at between joins), within ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while thread.is_alive() and not blocked_on_a_lock(db):
        assert time.monotonic() < deadline, "neither blocked nor done in time"
        thread.join(0.01)


def claim_in_thread(db: Database, out: dict[str, object]) -> threading.Thread:
    def claim() -> None:
        try:
            with db.session() as s:
                sid = create_session(s, config={}, rounds_total=1).id
                out["claimed"] = repo.claim_online_clients(s, sid, min_count=len(SITES))
        except StorageError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=claim, daemon=True)
    thread.start()
    return thread


def test_a_claim_waits_for_a_heartbeat_being_written_and_gets_every_online_site(pg: Database) -> None:
    out: dict[str, object] = {}
    with pg.session() as beat:
        repo.record_heartbeat(beat, "p2")  # p2's row stays locked until this unit commits
        thread = claim_in_thread(pg, out)
        wait_until_blocked_or_done(pg, thread)
    thread.join(WAIT_S)
    assert out == {"claimed": SITES}
    with pg.session(read_only=True) as s:
        assert {c.id: c.status for c in repo.list_clients(s, None)} == dict.fromkeys(SITES, ClientStatus.TRAINING)


def test_a_claim_waits_for_a_locked_row_only_so_long(pg: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repo, "CLAIM_LOCK_WAIT", "300ms")
    out: dict[str, object] = {}
    with pg.session() as beat:
        repo.record_heartbeat(beat, "p2")
        thread = claim_in_thread(pg, out)
        thread.join(WAIT_S)  # the claim gives up while the row is still held
        assert not thread.is_alive()
    assert "cannot claim clients" in str(out.get("error")) and "\n" not in str(out["error"]), out
    with pg.session(read_only=True) as s:  # nothing claimed, nothing left locked
        assert {c.id: c.status for c in repo.list_clients(s, None)} == dict.fromkeys(SITES, ClientStatus.ONLINE)
