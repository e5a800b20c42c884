"""A hierarchical session run by ``fedhive serve``: combiners it starts itself, its sites behind them.

The coordinator is the command line's ``HierarchicalCoordinator`` (``CombinerMembership``: nested
FedAvg over the combiners' partials) on a hub port. The session's combiners run in this process
(``ServiceNodes``), each under its own node id, ``combiner-<session>-<i>``; the hub routes what they
send to the session. The session's sites are long-lived agents: the hub hands the coordinator a
request for a combiner on each one's behalf, and the coordinator's answer (its ``registered`` naming
a combiner) tells the agent whom to follow for this session (``runtime.agent_sessions``). Until every
site has an answer, the requests are handed over again each second: the coordinator answers none
before all its combiners are up.

With ``remote`` combiners (``fedhive combiner --agent`` processes the session claimed, ONLINE
ones) the server starts none: it sends each a join order, and the coordinator's transport gives
each assignment a link key (``service.remote_combiners``). A resumed session sends the same
combiners the join order again (its sites' down routes, ``remote_combiners``, are opened as they
are assigned and closed when the session ends): one still serving the session goes on (the coordinator takes it
back with its sites), one that gave it up joins afresh.

Resumed after a restart of the server (``resumed``), the coordinator goes on from the session's
last checkpoint and the combiners start again under new ids (``combiner-<session>-<i>-<hex>``): the
old ones died with the server, their queues with them, and a site still following one is sent to
a new one by its assignment (a new name is a new order; the same name would be taken for the
answer it already has).

Bounded waits: the coordinator's own (registration, each round, its combiners' heartbeats: a
combiner that dies or stalls goes OFFLINE and its sites ask for another); once the coordinator has
ended, the combiners get ``_STOP_GRACE_S`` to pass its STOP on to their sites, then are stopped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from fedhive.app.learner import Evaluator
from fedhive.core.params import Params
from fedhive.errors import FedhiveError
from fedhive.runtime.bus import EventBus
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.coordinator import SessionResult
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.hub import HIERARCHICAL, Hub
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.remote_combiners import RemoteCombinerLinks
from fedhive.service.service_nodes import ServiceNodes
from fedhive.transports.amqp import AmqpTransport
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.sessions")
_STOP_GRACE_S = 10.0
_ASK_EVERY_S = 1.0


def combiner_ids(session_id: str, count: int, *, resumed: bool = False) -> list[str]:
    suffix = f"-{secrets.token_hex(2)}" if resumed else ""
    return [f"combiner-{session_id}-{i}{suffix}" for i in range(1, count + 1)]


class HierarchicalSession:
    def __init__(
        self,
        config: SessionConfig,
        hub: Hub,
        peers: list[str],
        initial: Params,
        *,
        nodes: ServiceNodes,
        combiners: int,
        evaluator: Evaluator | None,
        resumed: bool = False,
        remote: Sequence[str] = (),
        **coordinator_kwargs: Any,
    ) -> None:
        self.config = config
        self.hub = hub
        self.peers = list(peers)
        self.nodes = nodes
        self.combiner_ids = list(remote) or combiner_ids(config.session_id, combiners, resumed=resumed)
        port: Transport = hub.open_session(
            config.session_id, peers, topology=HIERARCHICAL, infrastructure=self.combiner_ids, remote=bool(remote)
        )
        self.links: RemoteCombinerLinks | None = None
        if remote:
            routes = hub.transport if isinstance(hub.transport, AmqpTransport) else None  # the broker's down routes
            port = self.links = RemoteCombinerLinks(port, config, remote, nodes.secret_of, routes)
        self.coordinator = HierarchicalCoordinator(
            config, port, initial, evaluator=evaluator, min_combiners=min(len(self.combiner_ids), len(self.peers)),
            **coordinator_kwargs,
        )  # fmt: skip
        if self.links is not None:
            self.links.counted = self._counted
        self.bus: EventBus = self.coordinator.bus
        self.strategy = self.coordinator.coordinator.strategy
        self._combiners: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> SessionResult:
        """Start the combiners, run the coordinator to its end, then let the combiners go."""
        for cid in self.combiner_ids:
            if self.links is not None:
                await self.links.join(cid)
            else:
                self._combiners[cid] = asyncio.create_task(self._combiner(cid), name=cid)
        asking = asyncio.create_task(self._ask_for_combiners(), name=f"assign-{self.config.session_id}")
        try:
            return await self.coordinator.run()
        finally:
            asking.cancel()
            if self.links is not None:  # its remote combiners reach its sites no longer
                await self.links.drop_routes()
            tasks = list(self._combiners.values())
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=_STOP_GRACE_S)
                for task in late:
                    task.cancel()
            await asyncio.gather(asking, *tasks, return_exceptions=True)

    def _counted(self, combiner_id: str) -> bool:
        info = self.coordinator.registry.get(combiner_id)
        return info is not None and info.status is not PeerStatus.OFFLINE

    def stop_combiner(self, combiner_id: str) -> None:
        """Stop one combiner at once, as if its process had died (for tests of what follows)."""
        self._combiners[combiner_id].cancel()

    async def _combiner(self, combiner_id: str) -> None:
        c = self.config
        timeout = c.heartbeat_timeout_s or 20.0
        try:
            async with self.nodes.connect(combiner_id) as transport:
                node = Combiner(
                    combiner_id,
                    transport,
                    heartbeat_interval_s=c.heartbeat_interval_s or timeout / 4,
                    heartbeat_timeout_s=timeout,
                    upstream_timeout_s=max(60.0, 3 * timeout),
                )
                result = await node.run()
                log.info("%s: stopped after combining %d rounds", combiner_id, result.rounds)
        except FedhiveError as exc:  # the coordinator decides what a lost combiner costs the session
            log.warning("%s: %s", combiner_id, exc)
        finally:
            self.nodes.forget(combiner_id)

    async def _ask_for_combiners(self) -> None:
        sid = self.config.session_id
        while True:
            await asyncio.sleep(_ASK_EVERY_S)
            assigned = self.coordinator.assigned
            waiting = [p for p in self.peers if p not in assigned]
            if not waiting:
                return
            for peer in waiting:
                self.hub.ask_for_combiner(sid, peer)
