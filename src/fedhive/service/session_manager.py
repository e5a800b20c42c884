"""Starts, cancels and resumes sessions on the hub: the platform's ``SessionLauncher``.

Starting is one transaction (session row + peers locked TRAINING, or nothing at all:
``session_rows``), then the data plan and the initial model (``session_inputs``), then the run:
a ``Coordinator`` on a hub port with the persistence observer attached, or what the session's
topology asks for (``running_sessions``). A start that fails after its row was written discards
the row and frees the peers, so the caller's error is all that is left of it. A coordinator
process that was killed and started again calls ``resume_running`` (``session_resume``): every
RUNNING session continues from its last checkpoint with the peers it held, so no round is skipped
or run twice.

A cancelled session's coordinator is stopped mid-round, so it never says how the session ended:
the manager says it for it, dispatching ``SessionCancelled`` on that bus once the database holds
CANCELLED (the live feed then shows it, a tracker ends its runs KILLED).

The manager only orders the steps; each part it composes is usable (and tested) on its own, and
every blocking step runs in a worker thread so the event loop running coordinators never waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from fedhive.app.loader import BUILTIN
from fedhive.core.bodies import StopBody
from fedhive.core.envelope import Kind, make
from fedhive.core.params import Params
from fedhive.errors import ConfigError, FedhiveError
from fedhive.learning.models import parse_model_spec
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import DECENTRALISED, Hub
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import session_with_app
from fedhive.service.apps import InstalledApps
from fedhive.service.hierarchical_sessions import HierarchicalSession
from fedhive.service.launcher import SessionRequest
from fedhive.service.running_sessions import RunningSessions, SessionObserver
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.session_inputs import SessionInputs
from fedhive.service.session_resume import SessionResumer
from fedhive.service.session_rows import SessionRows
from fedhive.service.topology import topology_data
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database
from fedhive.strategies.registry import parse_strategy

__all__ = ["CANCELLED_REASON", "SessionManager", "SessionObserver"]

CANCELLED_REASON = "cancelled by its owner"


class SessionManager:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        hub: Hub,
        *,
        observers: Sequence[SessionObserver] = (),
        apps: InstalledApps | None = None,
        nodes: ServiceNodes | None = None,
    ) -> None:
        self.db = db
        self.nodes = nodes  # what hierarchical and decentralised sessions need (None: star sessions only)
        self.apps = apps if apps is not None else InstalledApps.load()
        self.artifacts = artifacts
        self.hub = hub
        self._rows = SessionRows(db)
        self._inputs = SessionInputs(db, artifacts, self.apps)
        # Extra observers (the dashboard's live feed, a tracker): called with (session id, bus,
        # tags) for every session started or resumed, after the persistence observer.
        self._runs = RunningSessions(db, artifacts, hub, self._inputs, observers=observers, nodes=nodes)
        self._resumer = SessionResumer(db, artifacts, self.apps, self._rows, self._inputs, self._runs)

    # -- SessionLauncher ---------------------------------------------------------------------
    async def start(self, request: SessionRequest) -> str:
        # The session names its app and the digest of its code (ConfigError before anything is written).
        config = session_with_app(request.config, self.apps.named(request.config.app))
        if config.app == BUILTIN:
            parse_model_spec(config.model)
        elif request.dataset_id is not None or request.initial_model is not None:
            # Weights of its own (initial_params) it may start from: they are checked against its init's.
            raise ConfigError(f"app {config.app!r} reads its own data at each site: no data set or model spec applies")
        parse_strategy(config.strategy)
        topology = topology_data(request, runs_nodes=self.nodes is not None)
        request = dataclasses.replace(request, config=config)
        peers = await asyncio.to_thread(self._rows.create_and_claim, request)
        try:
            if len(peers) < max(request.combiners, 2 if request.topology == DECENTRALISED else 1):
                raise ConfigError(f"a {request.topology} session needs more sites than the {len(peers)} claimed")
            plan = await asyncio.to_thread(self._inputs.plan, config, peers, request.dataset_id, request.owner_id)
            data = {**plan.data, **topology}
            if request.remote_combiners is not None:  # claimed with the sites (create_and_claim)
                remote = await asyncio.to_thread(self._rows.combiners_of, config.session_id)
                data.update(combiners=len(remote), remote_combiners=remote)
            if request.topology == DECENTRALISED:  # kept: a restarted server watches the same peers
                data["peer_ids"] = {p: new_peer_id() for p in sorted(peers)}
            config = config.model_copy(update={"data": data, "min_clients": min(request.min_peers, len(peers))})
            if request.topology == DECENTRALISED:  # the peers make the seed model themselves
                initial = Params({})
            else:
                initial = await asyncio.to_thread(self._inputs.initial_params, request, config, plan)
            await asyncio.to_thread(self._rows.store_config, config)
        except FedhiveError:
            # The caller gets the error; no half-created session stays behind, peers go free.
            await asyncio.to_thread(self._rows.discard, config.session_id, int(request.owner_id))
            raise
        tags = dict(request.tags)
        self._runs.launch(config, peers, plan, initial, owner_id=int(request.owner_id), checkpoint=None, tags=tags)
        return config.session_id

    async def cancel(self, session_id: str) -> bool:
        bus = await self._runs.stop(session_id)
        peers = await asyncio.to_thread(self._rows.peers_of, session_id)
        peers += await asyncio.to_thread(self._rows.combiners_of, session_id)  # remote ones go idle at once
        cancelled = StopBody.model_construct(reason="cancelled").to_body()
        stop = make(Kind.STOP, COORDINATOR_ID, session_id=session_id, body=cancelled)
        await self.hub.transport.send_many([(p, stop) for p in peers])
        self.hub.release(session_id)
        changed = await asyncio.to_thread(self._rows.cancel, session_id, CANCELLED_REASON)
        if changed and bus is not None:
            self._runs.announce_cancelled(session_id, bus, CANCELLED_REASON)
        return changed

    def hierarchical(self, session_id: str) -> HierarchicalSession | None:
        """The running hierarchical session (its combiners), if it is one."""
        return self._runs.hierarchical(session_id)

    # -- crash resume ---------------------------------------------------------------------------
    async def resume_running(self) -> list[str]:
        """Continue every RUNNING (or PENDING) session from its last checkpoint."""
        return await self._resumer.resume_running()

    def _resumable(self, config: SessionConfig) -> SessionConfig:
        """The config a stored session resumes with (``SessionResumer.resumable``)."""
        return self._resumer.resumable(config)

    async def close(self) -> None:
        """Stop running coordinators without touching their sessions' state (they resume later)."""
        await self._runs.close()

    @property
    def running(self) -> list[str]:
        return self._runs.running
