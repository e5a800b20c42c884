"""``RecordingLauncher``: a real ``SessionLauncher`` over the storage repositories that runs no
training. It does what the launcher contract asks of ``start`` and ``cancel`` in the metadata
store (session row and peer claim in one unit of work, ``NotEnoughPeers`` leaving nothing
behind; cancel ends the session and releases its peers) and records each request, so API tests
can assert what the API handed over. Training itself is the coordinator's, tested end to end
with the real launcher elsewhere.
"""

from __future__ import annotations

import asyncio

from fedhive.service.launcher import NotEnoughPeers, SessionRequest
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.database import Database
from fedhive.storage.models import ClientStatus, SessionStatus


class RecordingLauncher:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.started: list[SessionRequest] = []
        self.cancelled: list[str] = []
        self.fail_with: Exception | None = None  # raised by the next start (error-path tests)

    async def start(self, request: SessionRequest) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        session_id = await asyncio.to_thread(self._start, request)
        self.started.append(request)
        return session_id

    def _start(self, request: SessionRequest) -> str:
        config = request.config
        with self.db.session() as s:
            row = sessions_repo.create_session(
                s,
                config=config.model_dump(mode="json"),
                rounds_total=config.rounds,
                owner_id=int(request.owner_id),
                dataset_id=request.dataset_id,
                session_id=config.session_id,
            )
            claimed = users_repo.claim_online_clients(
                s, row.id, min_count=request.min_peers, max_count=request.min_peers
            )
            if not claimed:
                online = len(users_repo.list_clients(s, None, status=ClientStatus.ONLINE))
                # Raising inside the unit of work rolls back the session row with it.
                raise NotEnoughPeers(online, request.min_peers)
            return row.id

    async def cancel(self, session_id: str) -> bool:
        def cancel() -> bool:
            with self.db.session() as s:
                changed = sessions_repo.set_session_status(
                    s, session_id, SessionStatus.CANCELLED, reason="cancelled by its owner"
                )
                if changed:
                    users_repo.release_clients(s, session_id)
                return changed

        changed = await asyncio.to_thread(cancel)
        self.cancelled.append(session_id)
        return changed
