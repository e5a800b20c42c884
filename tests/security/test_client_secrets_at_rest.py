"""A stolen copy of the platform database: the clients table holds no usable signing secret.
Secrets are sealed with the server's key (kept outside the database), a sealed value does not
open on another client's row or with another key, and rows written before sealing existed are
sealed when the service starts, with the nodes' secrets unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from guarded_app import PASSWORD, GuardedFactory, make_settings

from fedhive.api.auth import create_admin
from fedhive.api.security import issue_token
from fedhive.errors import ConfigError, StorageError
from fedhive.service.services import open_stores
from fedhive.storage import users_repo
from fedhive.storage.secret_box import SecretBox, new_key_text


def raw_secrets(engine: sa.Engine) -> dict[str, str]:
    """What anyone holding the database file sees, without fedhive."""
    with engine.connect() as conn:
        return {row.id: row.secret for row in conn.execute(sa.text("SELECT id, secret FROM clients"))}


def sqlite_bytes(path: Path) -> bytes:
    """The database file and its write-ahead log, as a copy of them would hold them."""
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


async def test_a_registered_peers_secret_is_not_in_the_database(guarded: GuardedFactory) -> None:
    async with guarded() as g:
        admin = create_admin(g.services, "root@example.org", PASSWORD)
        token = issue_token(str(admin.id), "admin", secret=g.services.settings.jwt_secret.get_secret_value())
        async with g.client() as http:
            response = await http.post(
                "/peers", json={"name": "hospital-a", "id": "hospital-a"}, headers={"Authorization": f"Bearer {token}"}
            )
        assert response.status_code == 201, response.text
        secret = response.json()["secret"]
        stored = raw_secrets(g.services.db.engine)["hospital-a"]
        database_files = await asyncio.to_thread(sqlite_bytes, Path(g.services.db.url.database or ""))
        box = g.services.settings.secret_box()
        with g.services.db.session(read_only=True) as s:
            assert users_repo.get_client_secret(s, "hospital-a", box) == secret.encode()
    assert secret not in stored and stored.startswith("aesgcm:")
    assert secret.encode() not in database_files  # nor anywhere in the files, the write-ahead log included
    assert not (g.services.settings.home / "secrets-key").stat().st_mode & 0o077


def test_a_sealed_secret_opens_only_on_its_own_row_and_with_the_servers_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db, _ = open_stores(settings)
    box = settings.secret_box()
    try:
        with db.session() as s:
            users_repo.create_client(s, "a", box=box, client_id="a")
            users_repo.create_client(s, "b", box=box, client_id="b")
        stored = raw_secrets(db.engine)
        with db.engine.begin() as conn:  # someone with write access copies a's value onto b's row
            conn.execute(sa.text("UPDATE clients SET secret = :v WHERE id = 'b'"), {"v": stored["a"]})
        with db.session(read_only=True) as s:
            with pytest.raises(StorageError, match="does not open with this server's secrets key"):
                users_repo.get_client_secret(s, "b", box)
            other_key = SecretBox(new_key_text(), origin="another server")
            with pytest.raises(StorageError, match="client 'a'"):
                users_repo.get_client_secret(s, "a", other_key)
    finally:
        db.dispose()


def test_rows_written_before_sealing_are_sealed_at_start_and_keep_working(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    db, _ = open_stores(settings)
    legacy = {"old-1": "x" * 43, "old-2": "y" * 43}
    with db.engine.begin() as conn:  # as an earlier fedhive wrote them: the secret in plain text
        for client_id, secret in legacy.items():
            conn.execute(
                sa.text(
                    "INSERT INTO clients (id, name, secret, status, num_examples, created_at) "
                    "VALUES (:id, :id, :secret, 'OFFLINE', 0, CURRENT_TIMESTAMP)"
                ),
                {"id": client_id, "secret": secret},
            )
    db.dispose()
    db, _ = open_stores(settings)  # the service starts again, upgraded
    try:
        stored = raw_secrets(db.engine)
        assert all(v.startswith("aesgcm:") and legacy[k] not in v for k, v in stored.items())
        with db.session(read_only=True) as s:
            for client_id, secret in legacy.items():
                assert users_repo.get_client_secret(s, client_id, settings.secret_box()) == secret.encode()
        with db.session() as s:
            assert users_repo.seal_plaintext_client_secrets(s, settings.secret_box()) == 0  # nothing left
    finally:
        db.dispose()


def test_a_wrong_secrets_key_is_one_line_naming_where_it_came_from(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, secrets_key="not a key")
    with pytest.raises(ConfigError, match=r"^FEDHIVE_SECRETS_KEY: not a secrets key \(32 bytes"):
        settings.secret_box()
