"""Accounts and registered nodes (clients, peers, trainers).

Every function works inside the caller's unit of work (``with db.session() as s``) and does not
commit; multi-step writes run in ``atomic`` so that, on error, none of their steps remain.
``owner_id=None`` in a listing means "every owner" (for admins and the coordinator); the API
passes the signed-in user's id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedhive.storage.database import AlreadyExists, NotFound, atomic
from fedhive.storage.models import ClientRow, ClientStatus, Role, UserRow, json_document, utcnow
from fedhive.storage.secret_box import SEALED_PREFIX, SecretBox

_SECRET_BYTES = 32  # 256-bit HMAC keys, 43 URL-safe characters
# What a node is (``ClientRow.role``): a site trains; a combiner aggregates sites for a session.
SITE, COMBINER = "site", "combiner"
NODE_ROLES = (SITE, COMBINER)


def normalise_email(email: str) -> str:
    """E-mail addresses are compared case-insensitively: ``Ann@X.org`` and ``ann@x.org`` are one user."""
    return email.strip().lower()


def create_user(s: Session, email: str, password_hash: str, *, role: Role = Role.USER) -> UserRow:
    """Add an account; ``password_hash`` is already hashed (bcrypt, by the API). ``AlreadyExists``
    if the e-mail is taken."""
    email = normalise_email(email)
    if get_user_by_email(s, email) is not None:
        raise AlreadyExists(f"a user with e-mail {email} already exists")
    user = UserRow(email=email, password_hash=password_hash, role=role)
    with atomic(s, f"cannot create user {email}"):
        s.add(user)
        s.flush()
    return user


def get_user(s: Session, user_id: int) -> UserRow | None:
    return s.get(UserRow, user_id)


def get_user_by_email(s: Session, email: str) -> UserRow | None:
    return s.scalar(sa.select(UserRow).where(UserRow.email == normalise_email(email)))


def create_client(
    s: Session,
    name: str,
    *,
    box: SecretBox,
    owner_id: int | None = None,
    client_id: str | None = None,
    broker_user: bool = False,
    role: str = "site",
) -> tuple[str, str]:
    """Register a node; returns ``(client_id, secret)``. The secret is shown once to whoever
    registers the node and stored sealed with ``box`` (the server's key, ``storage.secret_box``);
    the node signs with ``secret.encode()``, and so does the coordinator's check
    (``get_client_secret``). ``AlreadyExists`` if ``client_id`` is taken. ``broker_user``: the
    node logs in to the broker as a user of its own, named like it (``site_broker_users``).
    ``role``: ``site`` or ``combiner`` (``NODE_ROLES``)."""
    if role not in NODE_ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(NODE_ROLES)}")
    client_id = client_id or secrets.token_hex(8)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    if s.get(ClientRow, client_id) is not None:
        raise AlreadyExists(f"a client with id {client_id!r} already exists")
    sealed = box.seal(secret, client_id=client_id)
    with atomic(s, f"cannot register client {client_id!r}"):
        login = client_id if broker_user else None
        s.add(ClientRow(id=client_id, name=name, secret=sealed, owner_id=owner_id, broker_user=login, role=role))
        s.flush()
    return client_id, secret


def get_client(s: Session, client_id: str) -> ClientRow | None:
    return s.get(ClientRow, client_id)


def site_broker_users(s: Session) -> dict[str, str]:
    """Node id -> its own broker user, for the nodes that have one."""
    rows = s.execute(sa.select(ClientRow.id, ClientRow.broker_user).where(ClientRow.broker_user.is_not(None)))
    return {cid: user for cid, user in rows if user}


def combiners_with_broker_users(s: Session) -> set[str]:
    """The remote combiners (role ``combiner``) among the nodes with a broker user of their own."""
    rows = s.scalars(sa.select(ClientRow.id).where(ClientRow.broker_user.is_not(None), ClientRow.role == "combiner"))
    return set(rows)


def get_client_secret(s: Session, client_id: str, box: SecretBox) -> bytes | None:
    """The HMAC key of a node, in the form ``core.signing.Verifier`` looks up; None if unknown."""
    stored = s.scalar(sa.select(ClientRow.secret).where(ClientRow.id == client_id))
    return box.open(stored, client_id=client_id).encode() if stored is not None else None


def seal_plaintext_client_secrets(s: Session, box: SecretBox) -> int:
    """Seal the secrets of rows written before secrets were sealed (the service does this when it
    starts, so an upgraded database keeps its nodes); returns how many were sealed."""
    unsealed = sa.not_(ClientRow.secret.startswith(SEALED_PREFIX, autoescape=True))
    plain = s.execute(sa.select(ClientRow.id, ClientRow.secret).where(unsealed).with_for_update()).all()
    with atomic(s, "cannot seal the stored client secrets"):
        for client_id, secret in plain:
            s.execute(
                sa.update(ClientRow)
                .where(ClientRow.id == client_id)
                .values(secret=box.seal(secret, client_id=client_id))
            )
    return len(plain)


def list_clients(s: Session, owner_id: int | None, *, status: ClientStatus | None = None) -> list[ClientRow]:
    query = sa.select(ClientRow).order_by(ClientRow.created_at, ClientRow.id)
    if owner_id is not None:
        query = query.where(ClientRow.owner_id == owner_id)
    if status is not None:
        query = query.where(ClientRow.status == status)
    return list(s.scalars(query))


def update_client_status(s: Session, client_id: str, status: ClientStatus) -> None:
    """Set a node's status; ``NotFound`` if there is no such node."""
    with atomic(s, f"cannot update client {client_id!r}"):
        done = s.execute(sa.update(ClientRow).where(ClientRow.id == client_id).values(status=status))
    if cast(sa.CursorResult[Any], done).rowcount == 0:
        raise NotFound(f"no client with id {client_id!r}")


def record_heartbeat(
    s: Session,
    client_id: str,
    *,
    at: datetime | None = None,
    status: ClientStatus | None = None,
    epoch: int | None = None,
    epochs: int | None = None,
    num_examples: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> bool:
    """A sign of life with the node's progress. Without ``status``, an OFFLINE node becomes ONLINE
    and a TRAINING one stays TRAINING. Returns False for an unknown node (the caller decides
    whether that is an attack or a race with deletion)."""
    document = json_document(metrics, "heartbeat metrics") if metrics is not None else None
    client = s.get(ClientRow, client_id)
    if client is None:
        return False
    with atomic(s, f"cannot record heartbeat of client {client_id!r}"):
        client.last_heartbeat = at or utcnow()
        if status is not None:
            client.status = status
        elif client.status is ClientStatus.OFFLINE:
            client.status = ClientStatus.ONLINE
        if epoch is not None:
            client.epoch = epoch
        if epochs is not None:
            client.epochs = epochs
        if num_examples is not None:
            client.num_examples = num_examples
        if document is not None:
            client.metrics = document
        s.flush()
    return True


def record_site(s: Session, client_id: str, site: Mapping[str, Any]) -> bool:
    """What a site agent announced (agent version, apps, data sets); False for an unknown node."""
    document = json_document(site, "site announcement")
    with atomic(s, f"cannot record the site of client {client_id!r}"):
        done = s.execute(sa.update(ClientRow).where(ClientRow.id == client_id).values(site=document))
    return cast(sa.CursorResult[Any], done).rowcount > 0


def mark_silent_clients_offline(s: Session, silent_since: datetime) -> list[str]:
    """Nodes not heard from since ``silent_since`` become OFFLINE; returns their ids."""
    silent = (ClientRow.status != ClientStatus.OFFLINE) & (
        (ClientRow.last_heartbeat < silent_since) | ClientRow.last_heartbeat.is_(None)
    )
    with atomic(s, "cannot mark silent clients OFFLINE"):
        ids = list(s.scalars(sa.select(ClientRow.id).where(silent).order_by(ClientRow.id).with_for_update()))
        if ids:
            s.execute(sa.update(ClientRow).where(ClientRow.id.in_(ids)).values(status=ClientStatus.OFFLINE))
    return ids


def claim_online_clients(
    s: Session, session_id: str, *, min_count: int, max_count: int | None = None, owner_id: int | None = None
) -> list[str]:
    """Lock ONLINE nodes for a session (status TRAINING, ``session_id`` set): up to ``max_count``
    of them (all when None), or none at all if fewer than ``min_count`` are ONLINE. Returns the
    claimed ids. Two sessions claiming at once never get the same node: on PostgreSQL the rows are
    locked (FOR UPDATE; a claim waits for one that holds a row, then skips the row if it is no
    longer ONLINE), on SQLite the unit of work holds the write lock.

    Not SKIP LOCKED: every heartbeat locks its node's row for a moment, so a claim that skipped
    locked rows missed any ONLINE node whose beat was being written and failed with "not enough
    peers" while all were ONLINE (a CI run under load did). The wait is bounded (``CLAIM_LOCK_WAIT``)."""
    query = sa.select(ClientRow.id).where(ClientRow.status == ClientStatus.ONLINE, ClientRow.role == SITE)
    if owner_id is not None:
        query = query.where(ClientRow.owner_id == owner_id)
    query = query.order_by(ClientRow.id).limit(max_count).with_for_update()
    with atomic(s, f"cannot claim clients for session {session_id!r}"):
        _bound_lock_wait(s)
        ids = list(s.scalars(query))
        if len(ids) < min_count:
            return []
        s.execute(
            sa.update(ClientRow)
            .where(ClientRow.id.in_(ids))
            .values(status=ClientStatus.TRAINING, session_id=session_id, epoch=None, epochs=None)
        )
    return ids


def claim_combiners(s: Session, session_id: str, named: Sequence[str] = ()) -> list[str]:
    """Lock remote combiners for a hierarchical session, as ``claim_online_clients`` does sites:
    those ``named`` (every one must be an ONLINE combiner), or every ONLINE one. Returns the
    claimed ids; ``NotFound`` naming what is missing (nothing claimed)."""
    query = sa.select(ClientRow.id).where(ClientRow.status == ClientStatus.ONLINE, ClientRow.role == COMBINER)
    if named:
        query = query.where(ClientRow.id.in_(list(named)))
    query = query.order_by(ClientRow.id).with_for_update()  # not SKIP LOCKED: see claim_online_clients
    with atomic(s, f"cannot claim combiners for session {session_id!r}"):
        _bound_lock_wait(s)
        ids = list(s.scalars(query))
        missing = sorted(set(named) - set(ids))
        if missing:
            raise NotFound(f"combiners: {', '.join(missing)} not ONLINE combiners (see GET /sites)")
        if not ids:
            raise NotFound("combiners: no remote combiner is ONLINE (fedhive combiner --agent)")
        claimed = sa.update(ClientRow).where(ClientRow.id.in_(ids))
        s.execute(claimed.values(status=ClientStatus.TRAINING, session_id=session_id))
    return ids


CLAIM_LOCK_WAIT = "10s"  # a row's other writers (a heartbeat, a status change) hold it for milliseconds


def _bound_lock_wait(s: Session) -> None:
    """On PostgreSQL, a claim waits at most ``CLAIM_LOCK_WAIT`` for a locked row (then fails in
    one line), for the rest of its transaction; SQLite has no row locks."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(sa.text(f"SET LOCAL lock_timeout = '{CLAIM_LOCK_WAIT}'"))


def release_clients(s: Session, session_id: str) -> list[str]:
    """Free the nodes a session holds: TRAINING ones become ONLINE; OFFLINE ones stay OFFLINE."""
    held = ClientRow.session_id == session_id
    with atomic(s, f"cannot release clients of session {session_id!r}"):
        ids = list(s.scalars(sa.select(ClientRow.id).where(held).order_by(ClientRow.id)))
        s.execute(
            sa.update(ClientRow)
            .where(held, ClientRow.status == ClientStatus.TRAINING)
            .values(status=ClientStatus.ONLINE)
        )
        s.execute(sa.update(ClientRow).where(held).values(session_id=None))
    return ids


def rotate_client_secret(s: Session, client_id: str, *, box: SecretBox) -> str:
    """A new secret for a node (the old one stops working); returns it, to be shown once.
    ``NotFound`` if there is no such node."""
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    with atomic(s, f"cannot rotate the secret of client {client_id!r}"):
        done = s.execute(
            sa.update(ClientRow).where(ClientRow.id == client_id).values(secret=box.seal(secret, client_id=client_id))
        )
    if cast(sa.CursorResult[Any], done).rowcount == 0:
        raise NotFound(f"no client with id {client_id!r}")
    return secret


def delete_client(s: Session, client_id: str) -> None:
    """Remove a node: its messages are rejected from then on. ``NotFound`` if there is no such node."""
    with atomic(s, f"cannot delete client {client_id!r}"):
        done = s.execute(sa.delete(ClientRow).where(ClientRow.id == client_id))
    if cast(sa.CursorResult[Any], done).rowcount == 0:
        raise NotFound(f"no client with id {client_id!r}")
