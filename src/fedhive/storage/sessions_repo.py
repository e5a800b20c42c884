"""Training sessions and what they leave behind: rounds, per-client results, checkpoints.

Two kinds of readers: the API, which only ever sees a user's own sessions (``get_session`` with
``owner_id`` returns None for anyone else's, so a guessed id reveals nothing), and the coordinator,
which reads any session by id (``session_by_id``, ``running_sessions`` to resume after a crash).

Rounds, client results and checkpoints are written "upsert" style: a coordinator that crashed
after recording round r but before checkpointing it resumes from r-1 and records r again, and
that second attempt replaces the first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedhive.storage.database import NotFound, atomic
from fedhive.storage.models import (
    TERMINAL_STATUSES,
    CheckpointRow,
    ClientResultRow,
    ResultStatus,
    RoundRow,
    SessionRow,
    SessionStatus,
    UTCDateTime,
    json_document,
    utcnow,
)


def create_session(
    s: Session,
    *,
    config: Mapping[str, Any],
    rounds_total: int,
    owner_id: int | None = None,
    dataset_id: str | None = None,
    session_id: str | None = None,
    name: str | None = None,
) -> SessionRow:
    """A PENDING session; ``config`` is the JSON form of the session configuration."""
    row = SessionRow(
        id=session_id or uuid.uuid4().hex,
        owner_id=owner_id,
        name=name,
        config=json_document(config, "session config"),
        rounds_total=rounds_total,
        dataset_id=dataset_id,
        status=SessionStatus.PENDING,
    )
    with atomic(s, f"cannot create session {row.id!r}"):
        s.add(row)
        s.flush()
    return row


def get_session(s: Session, session_id: str, *, owner_id: int) -> SessionRow | None:
    """The session if ``owner_id`` owns it, else None (as if it did not exist)."""
    return s.scalar(sa.select(SessionRow).where(SessionRow.id == session_id, SessionRow.owner_id == owner_id))


def session_by_id(s: Session, session_id: str) -> SessionRow | None:
    """Any session, whoever owns it: for the coordinator and admins, never for a user's request."""
    return s.get(SessionRow, session_id)


def list_sessions(
    s: Session, owner_id: int | None, *, status: SessionStatus | None = None, limit: int = 100
) -> list[SessionRow]:
    """Newest first; ``owner_id=None`` lists every user's sessions."""
    query = sa.select(SessionRow).order_by(SessionRow.created_at.desc(), SessionRow.id).limit(limit)
    if owner_id is not None:
        query = query.where(SessionRow.owner_id == owner_id)
    if status is not None:
        query = query.where(SessionRow.status == status)
    return list(s.scalars(query))


def running_sessions(s: Session) -> list[SessionRow]:
    """Sessions a restarted coordinator must resume, oldest first."""
    query = sa.select(SessionRow).where(SessionRow.status == SessionStatus.RUNNING)
    return list(s.scalars(query.order_by(SessionRow.created_at, SessionRow.id)))


def set_session_status(s: Session, session_id: str, status: SessionStatus, *, reason: str | None = None) -> bool:
    """Move a session to ``status``; returns False (and changes nothing) if it had already ended.

    Ended is final: one conditional UPDATE decides, so when a user cancels while the coordinator
    completes, whichever commits first wins and the other learns it lost. RUNNING sets
    ``started_at`` (once); an ending status sets ``finished_at`` and ``reason``."""
    now = utcnow()
    values: dict[str, Any] = {"status": status}
    if status is SessionStatus.RUNNING:
        values["started_at"] = sa.func.coalesce(SessionRow.started_at, sa.literal(now, UTCDateTime()))
    if status in TERMINAL_STATUSES:
        values.update(finished_at=now, reason=reason)
    elif reason is not None:
        values["reason"] = reason
    with atomic(s, f"cannot set status of session {session_id!r}"):
        update = (
            sa.update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.status.not_in(TERMINAL_STATUSES))
            .values(**values)
            .execution_options(synchronize_session="fetch")
        )
        changed = cast(sa.CursorResult[Any], s.execute(update)).rowcount
    if changed == 0 and s.get(SessionRow, session_id) is None:
        raise NotFound(f"no session with id {session_id!r}")
    return changed > 0


def set_final_model(s: Session, session_id: str, model_version_id: int) -> None:
    with atomic(s, f"cannot set the final model of session {session_id!r}"):
        done = s.execute(
            sa.update(SessionRow).where(SessionRow.id == session_id).values(final_model_version_id=model_version_id)
        )
    if cast(sa.CursorResult[Any], done).rowcount == 0:
        raise NotFound(f"no session with id {session_id!r}")


def delete_session(s: Session, session_id: str, *, owner_id: int) -> bool:
    """Delete a user's session with its rounds, results and checkpoints (the database cascades);
    model versions it produced stay, without the link. False if the user has no such session."""
    row = get_session(s, session_id, owner_id=owner_id)
    if row is None:
        return False
    with atomic(s, f"cannot delete session {session_id!r}"):
        s.delete(row)
        s.flush()
    return True


def record_round(
    s: Session, session_id: str, rnd: int, *, metrics: Mapping[str, Any], num_updates: int, duration_s: float
) -> RoundRow:
    """Store a finished round and advance the session's ``rounds_done``, together."""
    document = json_document(metrics, "round metrics")
    with atomic(s, f"cannot record round {rnd} of session {session_id!r}"):
        row = s.scalar(sa.select(RoundRow).where(RoundRow.session_id == session_id, RoundRow.round == rnd))
        if row is None:
            row = RoundRow(session_id=session_id, round=rnd)
            s.add(row)
        row.metrics = document
        row.num_updates, row.duration_s, row.created_at = num_updates, duration_s, utcnow()
        s.flush()
        s.execute(
            sa.update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.rounds_done < rnd)
            .values(rounds_done=rnd)
            .execution_options(synchronize_session="fetch")
        )
    return row


def list_rounds(s: Session, session_id: str) -> list[RoundRow]:
    return list(s.scalars(sa.select(RoundRow).where(RoundRow.session_id == session_id).order_by(RoundRow.round)))


def record_client_result(
    s: Session,
    session_id: str,
    rnd: int,
    client_id: str,
    *,
    status: ResultStatus,
    num_examples: int = 0,
    metrics: Mapping[str, Any] | None = None,
    reason: str | None = None,
    via: str | None = None,
) -> ClientResultRow:
    """One client's outcome in one round (``via``: the combiner that carried its update)."""
    key = (
        ClientResultRow.session_id == session_id,
        ClientResultRow.round == rnd,
        ClientResultRow.client_id == client_id,
    )
    document = json_document(metrics or {}, "client metrics")
    with atomic(s, f"cannot record the result of client {client_id!r} in round {rnd} of session {session_id!r}"):
        row = s.scalar(sa.select(ClientResultRow).where(*key))
        if row is None:
            row = ClientResultRow(session_id=session_id, round=rnd, client_id=client_id)
            s.add(row)
        row.metrics = document
        row.status, row.num_examples, row.reason, row.via = status, num_examples, reason, via
        row.created_at = utcnow()
        s.flush()
    return row


def client_results(s: Session, session_id: str, *, rnd: int | None = None) -> list[ClientResultRow]:
    query = sa.select(ClientResultRow).where(ClientResultRow.session_id == session_id)
    if rnd is not None:
        query = query.where(ClientResultRow.round == rnd)
    return list(s.scalars(query.order_by(ClientResultRow.round, ClientResultRow.client_id)))


def save_checkpoint(
    s: Session, session_id: str, rnd: int, params_ref: str, state_ref: str | None = None
) -> CheckpointRow:
    """Record where the session can resume after ``rnd``; the artifacts must already be stored."""
    with atomic(s, f"cannot save checkpoint {rnd} of session {session_id!r}"):
        row = s.scalar(
            sa.select(CheckpointRow).where(CheckpointRow.session_id == session_id, CheckpointRow.round == rnd)
        )
        if row is None:
            row = CheckpointRow(session_id=session_id, round=rnd)
            s.add(row)
        row.params_ref, row.state_ref, row.created_at = params_ref, state_ref, utcnow()
        s.flush()
    return row


def latest_checkpoint(s: Session, session_id: str) -> CheckpointRow | None:
    query = sa.select(CheckpointRow).where(CheckpointRow.session_id == session_id)
    return s.scalar(query.order_by(CheckpointRow.round.desc()).limit(1))
