"""The sessions this server is running: what runs each topology, and the tasks they run in.

A session's topology (kept in its config's ``data``) picks what runs it: a ``Coordinator`` over
the sites on a hub port (star), a ``HierarchicalSession`` (combiners this process runs, the sites
behind them) or a ``PeerSession`` (the sites train among themselves; the server only watches).
docs/architecture.md, "Sessions of every topology".

Observers (the dashboard's live feed, an MLflow tracker) are attached to each session's bus with
the session's tags, after the persistence observer (``SessionRecorder``) of a star or hierarchical
session; a decentralised session's watcher records what its peers report itself, and its facts come
on a bus of its own. Each session runs in a task of its own; when it ends, however it ends, its
hub port is released and it is forgotten here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fedhive.app.loader import BUILTIN
from fedhive.core.params import Params
from fedhive.errors import SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import Coordinator
from fedhive.runtime.hub import DECENTRALISED, HIERARCHICAL, STAR, Hub
from fedhive.runtime.resume import Checkpoint, coordinator_kwargs
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.hierarchical_sessions import HierarchicalSession
from fedhive.service.peer_session_model import SessionModelKeeper
from fedhive.service.peer_sessions import PeerSession
from fedhive.service.persistence import SessionRecorder
from fedhive.service.service_nodes import ServiceNodes
from fedhive.service.session_inputs import SessionInputs
from fedhive.service.shards import DataPlan
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database

log = logging.getLogger("fedhive.sessions")
# How long closing waits for observers still recording a cancellation (a tracker's call to a slow
# MLflow server): they are told the news, not waited on for ever.
_ENDING_WAIT_S = 10.0
# What is attached to each session's bus: (session id, bus, the session's tags).
SessionObserver = Callable[[str, EventBus, Mapping[str, str]], None]


class RunningSessions:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        hub: Hub,
        inputs: SessionInputs,
        *,
        observers: Sequence[SessionObserver] = (),
        nodes: ServiceNodes | None = None,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.hub = hub
        self.inputs = inputs  # each star or hierarchical session's evaluator comes from its app
        self.nodes = nodes  # what hierarchical and decentralised sessions need (None: star sessions only)
        self._observers = list(observers)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._buses: dict[str, EventBus] = {}  # running sessions' buses: where a cancellation is told
        self._ending: set[asyncio.Task[None]] = set()  # cancellations still being told to observers
        self._hierarchies: dict[str, HierarchicalSession] = {}  # running hierarchical sessions

    def launch(
        self,
        config: SessionConfig,
        peers: list[str],
        plan: DataPlan,
        initial: Params,
        *,
        owner_id: int | None,
        checkpoint: Checkpoint | None,
        tags: Mapping[str, str] | None = None,
        resumed: bool = False,
    ) -> None:
        """Start the session's run in a task of its own (from ``checkpoint`` when resumed)."""
        sid, topology = config.session_id, config.data.get("topology", STAR)
        if topology == DECENTRALISED:
            assert self.nodes is not None
            timeout = self.hub.heartbeat_timeout_s or 20.0
            keeper = SessionModelKeeper(self.db, self.artifacts, owner_id, f"session-{sid}", _model_spec(config))
            watcher = PeerSession(
                self.db, self.hub, config, peers, site_secret=self.nodes.site_secret, heartbeat_timeout_s=timeout,
                resumed=resumed, keeper=keeper,
            )  # fmt: skip
            # No recorder (the watcher writes what the peers report), but the same observers: the
            # facts it records come on a bus of its own (``peer_session_facts``).
            for attach in self._observers:
                attach(sid, watcher.facts.bus, dict(tags or {}))
            self._buses[sid] = watcher.facts.bus
            self._tasks[sid] = asyncio.create_task(self._run(sid, watcher.run()), name=f"session-{sid}")
            return
        evaluator = self.inputs.server_app(config, plan).evaluator()
        kwargs = coordinator_kwargs(config, checkpoint)
        if topology == HIERARCHICAL:
            assert self.nodes is not None
            combiners = int(config.data["combiners"])
            remote = [str(c) for c in config.data.get("remote_combiners") or ()]
            session = HierarchicalSession(
                config, self.hub, peers, initial, nodes=self.nodes, combiners=combiners, evaluator=evaluator,
                resumed=resumed, remote=remote, **kwargs,
            )  # fmt: skip
            self._hierarchies[sid] = session
            bus, strategy, run = session.bus, session.strategy, session.run()
        else:
            port = self.hub.open_session(sid, peers)
            coordinator = Coordinator(config, port, initial, evaluator=evaluator, **kwargs)
            bus, strategy, run = coordinator.bus, coordinator.strategy, coordinator.run()
        SessionRecorder(
            self.db,
            self.artifacts,
            config.session_id,
            strategy,
            owner_id=owner_id,
            model_name=f"session-{config.session_id}",
            model_spec=_model_spec(config),
        ).attach(bus)
        for attach in self._observers:
            attach(sid, bus, dict(tags or {}))
        self._buses[sid] = bus
        self._tasks[sid] = asyncio.create_task(self._run(sid, run), name=f"session-{sid}")

    async def stop(self, session_id: str) -> EventBus | None:
        """Stop the session's run mid-round if it is running here; its bus, to tell how it ended
        (a stopped coordinator never says it)."""
        task = self._tasks.pop(session_id, None)
        bus = self._buses.pop(session_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return bus

    def announce_cancelled(self, session_id: str, bus: EventBus, reason: str) -> None:
        """Dispatch ``SessionCancelled`` on the session's bus in a task of its own: the caller (an
        API request) is answered now, whatever a tracker's server takes to hear that it ended."""
        told = asyncio.create_task(
            bus.dispatch(ev.SessionCancelled(session_id, reason)), name=f"cancelled-{session_id}"
        )
        self._ending.add(told)
        told.add_done_callback(self._told)

    def hierarchical(self, session_id: str) -> HierarchicalSession | None:
        """The running hierarchical session (its combiners), if it is one."""
        return self._hierarchies.get(session_id)

    @property
    def running(self) -> list[str]:
        return [sid for sid, t in self._tasks.items() if not t.done()]

    async def close(self) -> None:
        """Stop every run without touching its session's state (they resume later), and give the
        observers told of a cancellation ``_ENDING_WAIT_S`` to finish."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._buses.clear()
        if self._ending:
            _, late = await asyncio.wait(list(self._ending), timeout=_ENDING_WAIT_S)
            for task in late:
                task.cancel()

    def _told(self, task: asyncio.Task[None]) -> None:
        self._ending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an observer failed on a cancellation: %s", task.exception())

    async def _run(self, sid: str, run: Coroutine[Any, Any, object]) -> None:
        try:
            await run
        except SessionFailed as exc:  # recorded by the SessionRecorder; the platform goes on
            log.warning("session %s failed: %s", sid, exc.reason)
        finally:
            self.hub.release(sid)
            self._tasks.pop(sid, None)
            self._buses.pop(sid, None)
            self._hierarchies.pop(sid, None)


def _model_spec(config: SessionConfig) -> str:
    """What the session's model versions name as their model: its spec, or the app that makes it."""
    return config.model if config.app == BUILTIN else f"app:{config.app}"
