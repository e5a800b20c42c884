"""Accounts and nodes, on SQLite and PostgreSQL: identities, secrets, statuses, session locks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedhive.core.envelope import Kind, make
from fedhive.core.signing import Verifier, sign
from fedhive.errors import AuthenticationError, StorageError
from fedhive.storage import users_repo as repo
from fedhive.storage.database import AlreadyExists, Database, NotFound
from fedhive.storage.models import ClientStatus, Role
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.storage.sessions_repo import create_session

# Client secrets are sealed in the database with the server's key (storage.secret_box).
BOX = SecretBox(new_key_text(), origin="test key")


def test_users_are_found_by_email_case_insensitively_and_unique(db: Database) -> None:
    with db.session() as s:
        ann = repo.create_user(s, " Ann@Example.org ", "bcrypt-hash", role=Role.ADMIN)
    with db.session(read_only=True) as s:
        found = repo.get_user_by_email(s, "ANN@example.ORG")
        assert found is not None and found.id == ann.id
        assert (found.email, found.role, found.password_hash) == ("ann@example.org", Role.ADMIN, "bcrypt-hash")
        assert repo.get_user(s, ann.id) is not None and repo.get_user_by_email(s, "bob@example.org") is None
    with pytest.raises(AlreadyExists, match=r"ann@example\.org"), db.session() as s:
        repo.create_user(s, "ann@EXAMPLE.org", "other")


def test_client_secret_is_returned_once_and_verifies_signatures(db: Database) -> None:
    with db.session() as s:
        owner = repo.create_user(s, "ann@example.org", "h")
        client_id, secret = repo.create_client(s, "hospital A", box=BOX, owner_id=owner.id)
        other_id, other_secret = repo.create_client(s, "hospital B", box=BOX, client_id="hospital-b")
    assert other_id == "hospital-b" and len(secret) >= 43 and secret != other_secret
    with db.session(read_only=True) as s:
        assert repo.get_client_secret(s, client_id, BOX) == secret.encode()
        assert repo.get_client_secret(s, "nobody", BOX) is None
        assert [c.id for c in repo.list_clients(s, owner.id)] == [client_id]
        assert {c.id for c in repo.list_clients(s, None)} == {client_id, "hospital-b"}
        client = repo.get_client(s, client_id)
        assert client is not None and client.status is ClientStatus.OFFLINE and client.name == "hospital A"

    def secret_of(cid: str) -> bytes | None:
        with db.session(read_only=True) as s:
            return repo.get_client_secret(s, cid, BOX)

    # What the node signs with (the secret it was given) is what the coordinator verifies against.
    verifier = Verifier(secret_of)
    verifier.verify(sign(make(Kind.HEARTBEAT, client_id).envelope, secret.encode()))
    with pytest.raises(AuthenticationError):
        verifier.verify(sign(make(Kind.HEARTBEAT, client_id).envelope, other_secret.encode()))
    with pytest.raises(AlreadyExists), db.session() as s:
        repo.create_client(s, "dup", box=BOX, client_id="hospital-b")


def test_heartbeats_bring_nodes_online_and_record_progress(db: Database) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with db.session() as s:
        a, _ = repo.create_client(s, "a", box=BOX, client_id="a")
        repo.create_client(s, "b", box=BOX, client_id="b")
        assert repo.record_heartbeat(s, a, at=t0, num_examples=120)
        assert not repo.record_heartbeat(s, "ghost")
        repo.update_client_status(s, "b", ClientStatus.TRAINING)
        repo.record_heartbeat(s, "b", at=t0 + timedelta(seconds=30), epoch=2, epochs=5, metrics={"loss": 0.4})
    with db.session(read_only=True) as s:
        online = repo.list_clients(s, None, status=ClientStatus.ONLINE)
        assert [(c.id, c.num_examples) for c in online] == [("a", 120)]
        b = repo.get_client(s, "b")
        assert b is not None and b.status is ClientStatus.TRAINING  # a heartbeat does not end training
        assert (b.epoch, b.epochs, b.metrics) == (2, 5, {"loss": 0.4})
    with db.session() as s:
        assert repo.mark_silent_clients_offline(s, t0 + timedelta(seconds=10)) == ["a"]
        assert repo.mark_silent_clients_offline(s, t0 + timedelta(seconds=10)) == []
    with pytest.raises(NotFound), db.session() as s:
        repo.update_client_status(s, "ghost", ClientStatus.ONLINE)


def online_clients(db: Database, *ids: str) -> None:
    with db.session() as s:
        for cid in ids:
            repo.create_client(s, cid, box=BOX, client_id=cid)
            repo.record_heartbeat(s, cid)


def test_claiming_locks_all_or_nothing_and_release_frees(db: Database) -> None:
    online_clients(db, "p1", "p2", "p3")
    with db.session() as s:
        first = create_session(s, config={}, rounds_total=1).id
        second = create_session(s, config={}, rounds_total=1).id
        assert repo.claim_online_clients(s, first, min_count=2, max_count=2) == ["p1", "p2"]
        # Only p3 is ONLINE now: too few for a second session that needs two, so it gets none.
        assert repo.claim_online_clients(s, second, min_count=2) == []
    with db.session(read_only=True) as s:
        statuses = {c.id: (c.status, c.session_id) for c in repo.list_clients(s, None)}
    assert statuses == {
        "p1": (ClientStatus.TRAINING, first),
        "p2": (ClientStatus.TRAINING, first),
        "p3": (ClientStatus.ONLINE, None),
    }
    with db.session() as s:
        repo.update_client_status(s, "p2", ClientStatus.OFFLINE)  # crashed during training
        assert repo.release_clients(s, first) == ["p1", "p2"]
    with db.session(read_only=True) as s:
        statuses = {c.id: (c.status, c.session_id) for c in repo.list_clients(s, None)}
    assert statuses["p1"] == (ClientStatus.ONLINE, None) and statuses["p2"] == (ClientStatus.OFFLINE, None)


def test_failed_claim_inside_a_larger_unit_leaves_the_rest(db: Database) -> None:
    online_clients(db, "p1")
    with db.session() as s:
        repo.create_user(s, "ann@example.org", "h")
        with pytest.raises(StorageError):  # the session does not exist: the FK check fails
            repo.claim_online_clients(s, "no-such-session", min_count=1)
    with db.session(read_only=True) as s:
        assert repo.get_user_by_email(s, "ann@example.org") is not None
        client = repo.get_client(s, "p1")
        assert client is not None and client.status is ClientStatus.ONLINE and client.session_id is None
