"""Mirrors the hub's view of its peers into the metadata store, for ``GET /peers``, ``GET /sites``
and the dashboard: statuses on every change, heartbeats (epoch, loss, accuracy) at most once a
second per peer so that a thousand chatty peers cannot saturate the database, and what a site
agent announces when it is new or changed (the hub passes on nothing else; ``service.sites``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fedhive.errors import StorageError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.service.sites import site_record
from fedhive.storage import users_repo
from fedhive.storage.database import Database
from fedhive.storage.models import ClientStatus
from fedhive.storage.secret_box import SecretBox

log = logging.getLogger("fedhive.peers")
_MIN_INTERVAL_S = 1.0


class PeerStatusRecorder:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last: dict[str, float] = {}

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.ClientStatusChanged, self._on_status)
        bus.on(ev.HeartbeatReceived, self._on_heartbeat)
        bus.on(ev.SiteAnnounced, self._on_site)

    async def _on_status(self, e: ev.ClientStatusChanged) -> None:
        def write() -> None:
            with self.db.session() as s:
                users_repo.record_heartbeat(s, e.client_id, status=ClientStatus(str(e.status)))

        await self._guard(write)

    async def _on_heartbeat(self, e: ev.HeartbeatReceived) -> None:
        now = time.monotonic()
        if now - self._last.get(e.client_id, -_MIN_INTERVAL_S) < _MIN_INTERVAL_S:
            return
        self._last[e.client_id] = now
        metrics = {k: v for k, v in (("loss", e.loss), ("accuracy", e.accuracy)) if v is not None}

        def write() -> None:
            with self.db.session() as s:
                users_repo.record_heartbeat(s, e.client_id, epoch=e.epoch, epochs=e.epochs, metrics=metrics or None)

        await self._guard(write)

    async def _on_site(self, e: ev.SiteAnnounced) -> None:
        record = site_record(e.site)

        def write() -> None:
            with self.db.session() as s:
                if users_repo.record_site(s, e.client_id, record):
                    users_repo.record_heartbeat(s, e.client_id, num_examples=e.num_examples)

        await self._guard(write)

    async def _guard(self, write: Callable[[], None]) -> None:
        try:
            await asyncio.to_thread(write)
        except StorageError as exc:  # the federation goes on; the dashboard is a little stale
            log.warning("could not record peer status: %s", exc)


class SecretCache:
    """Client secrets for signature checks, read from the database once per client.

    Verification runs on the event loop for every message; a database round trip there would
    stall the loop, so a secret is fetched on first use and kept for ``ttl_s``: a site revoked or
    given a new secret (``fedhive admin site revoke|rotate``, while the server runs) is refused
    with its old secret within that time."""

    def __init__(self, db: Database, box: SecretBox, *, ttl_s: float = 30.0) -> None:
        self.db = db
        self.box = box  # the secrets are sealed in the database (storage.secret_box)
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[bytes, float]] = {}

    def __call__(self, client_id: str) -> bytes | None:
        known = self._known.get(client_id)
        if known is not None and time.monotonic() - known[1] < self.ttl_s:
            return known[0]
        with self.db.session(read_only=True) as s:
            secret = users_repo.get_client_secret(s, client_id, self.box)
        if secret is None:
            self._known.pop(client_id, None)
        else:
            self._known[client_id] = (secret, time.monotonic())
        return secret
