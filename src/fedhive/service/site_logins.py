"""The broker users of the sites, for the hub's transport (docs/security.md, "Broker isolation").

A site created with ``fedhive admin site create --broker-user`` logs in to RabbitMQ as a user of
its own, named like it, that may configure nothing but its peers' queues: the hub (the
coordinator of ``fedhive serve``) declares the site's queue and binds it, and refuses a message
signed as the site but published by another login (``broker_users.SenderLogins``). A remote
combiner created with ``--role combiner --broker-user`` is one of them, and a relay too
(``combiners``): the hub binds its queue to the up exchange as well, for its sites' messages.

The transport asks for the mapping on the event loop, for every message and every topology
check, so it is never read from the database there: ``load`` runs in a worker thread before the
hub starts, and a call that finds the mapping older than ``ttl_s`` starts a refresh in a worker
thread and answers with what it has. A site created while the server runs is served within that
time (its agent waits for its queue much longer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from fedhive.errors import StorageError
from fedhive.storage import users_repo
from fedhive.storage.database import Database

log = logging.getLogger("fedhive.sites")


class SiteLogins:
    def __init__(self, db: Database, *, ttl_s: float = 10.0) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._logins: dict[str, str] = {}
        self._combiners: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Read the mapping from the database (blocking: call it in a worker thread)."""
        with self._db.session(read_only=True) as s:
            logins = users_repo.site_broker_users(s)
            combiners = frozenset(users_repo.combiners_with_broker_users(s))
        self._combiners = combiners
        self._loaded_at = time.monotonic()
        if logins != self._logins:  # a new object only when it changed: SenderLogins caches by identity
            self._logins = logins

    def __call__(self) -> Mapping[str, str]:
        """Site id -> its broker user, for the sites that have one (on the event loop)."""
        if time.monotonic() - self._loaded_at > self._ttl_s and self._refreshing is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop: read it now
                self.load()
            else:
                self._refreshing = loop.create_task(self._refresh(), name="site-logins")
        return self._logins

    def combiners(self) -> frozenset[str]:
        """The remote combiners among them (refreshed with the mapping)."""
        self()
        return self._combiners

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except StorageError as exc:  # the hub goes on with what it knew
            log.warning("could not read the sites' broker users: %s", exc)
            self._loaded_at = time.monotonic()
        finally:
            self._refreshing = None
