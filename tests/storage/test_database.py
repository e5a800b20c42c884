"""Database: migrations that match the models, SQLite settings, units of work, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from fedhive.errors import ConfigError, StorageError
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.database import Database, normalise_url
from fedhive.storage.models import Base, ClientStatus, SessionStatus
from fedhive.storage.secret_box import SecretBox, new_key_text


def schema_diff(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrations_create_exactly_the_models_schema(db: Database) -> None:
    assert db.current_revision() == "0004"
    assert schema_diff(db) == []


def test_upgrade_is_idempotent_and_downgrade_removes_everything(db: Database) -> None:
    db.upgrade()
    assert db.current_revision() == "0004"
    db.downgrade("base")
    assert db.current_revision() is None
    assert set(sa.inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.upgrade()
    assert schema_diff(db) == []


def test_alembic_command_line_style_config_migrates_on_its_own_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/cli.db")
    command.upgrade(db.alembic_config(), "head")  # what a developer's `alembic` call does
    assert db.current_revision() == "0004"
    db.dispose()


def test_sqlite_uses_wal_and_enforces_foreign_keys(tmp_path: Path) -> None:
    db = Database(tmp_path / "nested" / "dir" / "fedhive.db")  # parent directories are created
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with pytest.raises(StorageError, match="FOREIGN KEY"), db.session() as s:
        sessions_repo.record_round(s, "no-such-session", 1, metrics={}, num_updates=0, duration_s=0.0)
    db.dispose()


def test_a_unit_of_work_that_raises_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        users_repo.create_user(s, "ann@example.org", "hash")
        raise RuntimeError("the request handler failed after the insert")
    with db.session(read_only=True) as s:
        assert users_repo.get_user_by_email(s, "ann@example.org") is None


def test_timestamps_are_aware_utc_and_naive_ones_are_refused(db: Database) -> None:
    with db.session() as s:
        client_id, _ = users_repo.create_client(s, "edge-1", box=SecretBox(new_key_text(), origin="test key"))
        users_repo.record_heartbeat(s, client_id, at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
        session_id = sessions_repo.create_session(s, config={}, rounds_total=1).id
    with db.session(read_only=True) as s:
        client = users_repo.get_client(s, client_id)
        assert client is not None and client.last_heartbeat == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        assert client.last_heartbeat.tzinfo is UTC and client.status is ClientStatus.ONLINE
        row = sessions_repo.session_by_id(s, session_id)
        assert row is not None and row.created_at.tzinfo is UTC and row.status is SessionStatus.PENDING
    with pytest.raises(StorageError, match="naive datetime"), db.session() as s:
        users_repo.record_heartbeat(s, client_id, at=datetime(2024, 5, 1, 12, 0))


def test_unreachable_postgres_is_one_line_naming_the_server_without_password(unused_port: int) -> None:
    port = unused_port
    db = Database(f"postgresql://fedhive:hunter2@127.0.0.1:{port}/fedhive")
    for call in (db.ping, db.upgrade):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"cannot connect to database postgresql+psycopg://fedhive:***@127.0.0.1:{port}/")
        assert "refused" in message.lower() and "hunter2" not in message and "\n" not in message
    with pytest.raises(StorageError) as info, db.session() as s:
        sessions_repo.create_session(s, config={}, rounds_total=1, session_id="s1")
    assert str(info.value).startswith("cannot create session 's1': cannot connect to database postgresql+psycopg://")
    assert "hunter2" not in str(info.value)


def test_unwritable_sqlite_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot create the directory"):
        Database(blocker / "sub" / "fedhive.db")


def test_urls_are_normalised() -> None:
    assert normalise_url("/var/lib/fedhive/fedhive.db").render_as_string() == "sqlite:////var/lib/fedhive/fedhive.db"
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(ConfigError, match="unsupported database"):
        normalise_url("mysql://u@h/db")
