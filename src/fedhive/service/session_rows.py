"""The session manager's units of work on the metadata store: one method, one transaction.

Each method is blocking (SQLAlchemy sessions); the manager calls them through
``asyncio.to_thread`` so the event loop that runs the coordinators never waits on the database.
Keeping each step one transaction is what makes starting all-or-nothing: the session row and the
peers it claims are written together (``create_and_claim``), and a start that fails later leaves
nothing behind (``discard``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from fedhive.errors import ConfigError
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.launcher import NotEnoughPeers, SessionRequest
from fedhive.service.reported_sessions import is_reported
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.database import Database, NotFound
from fedhive.storage.models import ClientRow, ClientStatus, SessionStatus

# A session left behind (RUNNING or PENDING) by a server that stopped: (id, owner id, stored config).
Unfinished = tuple[str, int | None, dict[str, Any]]


class SessionRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create_and_claim(self, request: SessionRequest) -> list[str]:
        """Write the session row and lock its peers (and named remote combiners) in one unit: the
        claimed site ids, or ``NotEnoughPeers``/``ConfigError`` with nothing written."""
        config = request.config
        with self.db.session() as s:
            sessions_repo.create_session(
                s,
                config=config.model_dump(mode="json"),
                rounds_total=config.rounds,
                owner_id=int(request.owner_id),
                dataset_id=request.dataset_id,
                session_id=config.session_id,
                name=request.name,
            )
            peers = users_repo.claim_online_clients(
                s, config.session_id, min_count=request.min_peers, max_count=config.max_clients
            )
            if not peers:
                online = len(users_repo.list_clients(s, None, status=ClientStatus.ONLINE))
                # Raising rolls the whole unit back: no session row is left behind.
                raise NotEnoughPeers(online, request.min_peers)
            if request.remote_combiners is not None:
                try:
                    users_repo.claim_combiners(s, config.session_id, request.remote_combiners)
                except NotFound as exc:
                    raise ConfigError(str(exc)) from None
        return peers

    def store_config(self, config: SessionConfig) -> None:
        """Keep the session's final config (its data plan, topology keys, app digest) on its row."""
        with self.db.session() as s:
            row = sessions_repo.session_by_id(s, config.session_id)
            if row is not None:
                row.config = config.model_dump(mode="json")

    def discard(self, session_id: str, owner_id: int) -> None:
        """Undo a start that failed after its row was written: peers go free, the row goes."""
        with self.db.session() as s:
            users_repo.release_clients(s, session_id)
            sessions_repo.set_session_status(s, session_id, SessionStatus.CANCELLED, reason="start failed")
            sessions_repo.delete_session(s, session_id, owner_id=owner_id)

    def cancel(self, session_id: str, reason: str) -> bool:
        """Mark the session CANCELLED and free its peers; False if it had already ended."""
        with self.db.session() as s:
            changed = sessions_repo.set_session_status(s, session_id, SessionStatus.CANCELLED, reason=reason)
            users_repo.release_clients(s, session_id)
            return changed

    def fail(self, session_id: str, reason: str) -> None:
        """Mark the session FAILED (a resume that cannot go on) and free its peers."""
        with self.db.session() as s:
            sessions_repo.set_session_status(s, session_id, SessionStatus.FAILED, reason=reason[:2000])
            users_repo.release_clients(s, session_id)

    def peers_of(self, session_id: str, role: str = users_repo.SITE) -> list[str]:
        """The ids the session holds in ``role`` (its sites by default), sorted."""
        held = (ClientRow.session_id == session_id) & (ClientRow.role == role)
        with self.db.session(read_only=True) as s:
            return list(s.scalars(sa.select(ClientRow.id).where(held).order_by(ClientRow.id)))

    def combiners_of(self, session_id: str) -> list[str]:
        """The remote combiners the session holds."""
        return self.peers_of(session_id, users_repo.COMBINER)

    def unfinished(self) -> list[Unfinished]:
        """The sessions this server ran and did not see end: what a restart resumes."""
        with self.db.session(read_only=True) as s:
            rows = sessions_repo.list_sessions(s, None, status=SessionStatus.RUNNING)
            rows += sessions_repo.list_sessions(s, None, status=SessionStatus.PENDING)
            # A reported session runs elsewhere (``fedhive coordinator --report-to``): not ours to resume.
            return [(r.id, r.owner_id, dict(r.config)) for r in rows if not is_reported(r.config)]
