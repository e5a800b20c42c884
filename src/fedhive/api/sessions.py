"""A user's training sessions: list, read, follow, cancel, delete (starting: ``session_start``).

Everything is read from the metadata store, which the coordinator's persistence observer keeps
current; only ``cancel`` goes through the launcher. Another user's session answers 404 exactly
like a missing one, so a guessed id reveals nothing.

Delete semantics: only an ended session (COMPLETED, FAILED, CANCELLED) can be deleted; a PENDING
or RUNNING one answers 409 "cancel it first". Deleting a live session would pull its rows from
under a coordinator still recording rounds, and an explicit cancel keeps "stop training" and
"forget the results" two separate decisions. Rounds, per-peer results and checkpoints go with
the session; model versions it produced stay in the registry. When the platform tracks sessions in
MLflow, the session's runs are marked deleted too (restorable in MLflow until its garbage
collection); an MLflow server that does not answer leaves them, with a warning in the log, and
never fails the delete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from sqlalchemy.orm import Session

from fedhive.api.deps import ServicesDep, UserDep
from fedhive.api.schemas import (
    ID_PATTERN,
    ClientResultOut,
    ModelRef,
    PeerOut,
    RoundOut,
    SessionOut,
    TrainingStatus,
)
from fedhive.service.services import Services
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.models import TERMINAL_STATUSES, ModelRow, ModelVersionRow, SessionRow, SessionStatus

log = logging.getLogger("fedhive.api")
# A delete waits this long for MLflow to mark the session's runs deleted, then answers anyway.
MLFLOW_DELETE_WAIT_S = 30.0
SessionId = Annotated[str, Path(pattern=ID_PATTERN, description="the session's id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such session (or not yours)"}}


def owned_session(s: Session, session_id: str, owner_id: int) -> SessionRow:
    row = sessions_repo.get_session(s, session_id, owner_id=owner_id)
    if row is None:
        raise HTTPException(404, f"no session {session_id!r}")
    return row


def session_view(s: Session, row: SessionRow) -> SessionOut:
    """The session with its final model named as the registry names it (name and version)."""
    final = None
    if row.final_model_version_id is not None:
        version = s.get(ModelVersionRow, row.final_model_version_id)
        model = s.get(ModelRow, version.model_id) if version is not None else None
        if version is not None and model is not None:
            final = ModelRef(name=model.name, version=version.version)
    return SessionOut.from_row(row, final)


def read_session(services: Services, session_id: str, owner_id: int) -> SessionOut:
    with services.db.session(read_only=True) as s:
        return session_view(s, owned_session(s, session_id, owner_id))


async def list_sessions(
    services: ServicesDep,
    user: UserDep,
    status: SessionStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[SessionOut]:
    def read() -> list[SessionOut]:
        with services.db.session(read_only=True) as s:
            rows = sessions_repo.list_sessions(s, user.user_id, status=status, limit=limit)
            return [session_view(s, row) for row in rows]

    return await asyncio.to_thread(read)


async def get_session(services: ServicesDep, user: UserDep, session_id: SessionId) -> SessionOut:
    return await asyncio.to_thread(read_session, services, session_id, user.user_id)


async def training_status(services: ServicesDep, user: UserDep, session_id: SessionId) -> TrainingStatus:
    def read() -> TrainingStatus:
        with services.db.session(read_only=True) as s:
            row = owned_session(s, session_id, user.user_id)
            # Peers are released when a session ends; then last_results tells how each one did.
            held = [c for c in users_repo.list_clients(s, None) if c.session_id == session_id]
            rounds = sessions_repo.list_rounds(s, session_id)
            last = rounds[-1] if rounds else None
            results = sessions_repo.client_results(s, session_id, rnd=last.round) if last else []
            return TrainingStatus(
                session_id=row.id,
                status=row.status,
                reason=row.reason,
                round=row.rounds_done,
                rounds_total=row.rounds_total,
                peers=[PeerOut.from_row(c) for c in held],
                last_round=RoundOut.from_row(last) if last else None,
                last_results=[ClientResultOut.from_row(r) for r in results],
            )

    return await asyncio.to_thread(read)


async def list_rounds(services: ServicesDep, user: UserDep, session_id: SessionId) -> list[RoundOut]:
    def read() -> list[RoundOut]:
        with services.db.session(read_only=True) as s:
            owned_session(s, session_id, user.user_id)
            return [RoundOut.from_row(r) for r in sessions_repo.list_rounds(s, session_id)]

    return await asyncio.to_thread(read)


async def cancel_session(services: ServicesDep, user: UserDep, session_id: SessionId) -> SessionOut:
    before = await asyncio.to_thread(read_session, services, session_id, user.user_id)
    if before.status in TERMINAL_STATUSES:
        raise HTTPException(409, f"session {session_id!r} already ended ({before.status.value})")
    # False: the coordinator ended it between our read and the cancel; the 409 says how it ended.
    cancelled = await services.launcher.cancel(session_id)
    after = await asyncio.to_thread(read_session, services, session_id, user.user_id)
    if not cancelled:
        raise HTTPException(409, f"session {session_id!r} already ended ({after.status.value})")
    return after


async def delete_session(services: ServicesDep, user: UserDep, session_id: SessionId) -> Response:
    def delete() -> None:
        with services.db.session() as s:
            row = owned_session(s, session_id, user.user_id)
            # Ended is final (set_session_status never leaves it), so this check cannot go stale.
            if row.status not in TERMINAL_STATUSES:
                raise HTTPException(
                    409, f"session {session_id!r} is {row.status.value}: cancel it first (POST /sessions/{{id}}/cancel)"
                )
            sessions_repo.delete_session(s, session_id, owner_id=user.user_id)

    await asyncio.to_thread(delete)
    uri = services.settings.mlflow_tracking_uri
    if uri is not None:
        await _delete_runs(uri, session_id)
    return Response(status_code=204)


async def _delete_runs(tracking_uri: str, session_id: str) -> None:
    from fedhive.tracking.mlflow_registry import check_reachable, redact
    from fedhive.tracking.session_runs import delete_session_runs

    def delete() -> int:
        check_reachable(tracking_uri)  # one bounded probe, not MLflow's minutes of retries
        return delete_session_runs(tracking_uri, session_id)

    try:
        count = await asyncio.wait_for(asyncio.to_thread(delete), MLFLOW_DELETE_WAIT_S)
    except Exception as exc:  # the session is gone either way; its runs stay in MLflow
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning("session %s deleted, but its MLflow runs in %s were not: %s", session_id, redact(tracking_uri), why)
        return
    log.info("session %s deleted with its %d MLflow run(s)", session_id, count)


def routes() -> APIRouter:
    r = APIRouter(prefix="/sessions", tags=["sessions"])
    r.add_api_route("", list_sessions, methods=["GET"], summary="Your sessions, newest first")
    r.add_api_route("/{session_id}", get_session, methods=["GET"], summary="One session", responses=_NOT_FOUND)
    r.add_api_route(
        "/{session_id}/training-status",
        training_status,
        methods=["GET"],
        summary="Progress: round, each peer's epoch, loss and accuracy, the last round's metrics",
        responses=_NOT_FOUND,
    )
    r.add_api_route(
        "/{session_id}/rounds", list_rounds, methods=["GET"], summary="Finished rounds", responses=_NOT_FOUND
    )
    r.add_api_route(
        "/{session_id}/cancel",
        cancel_session,
        methods=["POST"],
        summary="Stop a PENDING or RUNNING session (its peers are released)",
        responses={**_NOT_FOUND, 409: {"description": "the session already ended"}},
    )
    r.add_api_route(
        "/{session_id}",
        delete_session,
        methods=["DELETE"],
        status_code=204,
        response_class=Response,
        summary="Delete an ended session and its rounds",
        responses={**_NOT_FOUND, 409: {"description": "the session is still PENDING or RUNNING: cancel it first"}},
    )
    return r
