"""A site agent: one long-lived ``ClientNode`` that takes part in session after session.

The agent holds one ``SiteApp`` per installed app (each with its own ``ctx.state`` folder) and, for
each session, trains with the app the session names (``AgentSites.trainer_for``). Its connection
outlives brokers: the AMQP transport reconnects by itself after an outage, and if the connection
cannot be made at all (the broker is down when the agent starts, or the link is lost for good)
the agent tries again after a pause, until it is told to stop. How a coordinator reaches an idle
agent: docs/networked.md, "Site agents".

Sessions of other topologies, started by ``fedhive serve``, reach the agent on the same connection
(``runtime.agent_sessions``): it follows a combiner for a hierarchical session, or is a peer of a
decentralised one, and is an ordinary idle agent again afterwards. For that it accepts messages
signed with its own secret from any sender (``agent_codec``): only the server and the combiners the
server runs hold that secret, as for ``fedhive client`` in a hierarchical federation. A remote
combiner holds only the link key the server gave both ends for the session (``links``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from fedhive import __version__
from fedhive.app.learner import Trainer
from fedhive.core.signing import Verifier
from fedhive.core.stopping import stop_tasks
from fedhive.errors import ConfigError, TransportError
from fedhive.runtime.agent_sessions import AgentLink, NodeSettings, PeerLink, Port
from fedhive.runtime.client import ClientNode
from fedhive.runtime.networked import BrokerSettings, Observer
from fedhive.runtime.peer_rounds import peer_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp
from fedhive.storage.artifacts import ArtifactStore
from fedhive.transports.amqp_topology import Role, login_of
from fedhive.transports.amqp_topology import peer_id as amqp_peer_id
from fedhive.transports.base import Transport
from fedhive.transports.broker_users import peer_sender_check
from fedhive.transports.wire_codec import WireCodec

log = logging.getLogger("fedhive.agent")


@dataclass(frozen=True)
class AgentSites:
    """The apps installed at a site, by name, each bound to the site's settings and state."""

    client_id: str
    sites: Mapping[str, SiteApp]
    datasets: Sequence[str] = ()

    def trainer_for(self, config: SessionConfig) -> Trainer:
        site = self.sites.get(config.app)
        if site is None:
            installed = ", ".join(self.sites) or "none"
            raise ConfigError(
                f"{self.client_id} refuses session {config.session_id}: app {config.app!r} is not installed at this "
                f"site (installed: {installed})"
            )
        return site.trainer_for(config)  # AppMismatch if the installed code differs

    @property
    def num_examples(self) -> int:
        return max((s.num_examples for s in self.sites.values()), default=0)

    @property
    def label_counts(self) -> dict[str, int]:
        return next((s.label_counts for s in self.sites.values() if s.label_counts), {})

    def announcement(self) -> dict[str, object]:
        """What the agent tells coordinators about itself (REGISTER and idle heartbeats)."""
        return {
            "agent": __version__,
            "apps": {name: site.loaded.digest[:12] for name, site in self.sites.items()},
            "datasets": list(self.datasets),
        }


@dataclass(frozen=True)
class AgentSettings:
    heartbeat_interval_s: float = 5.0  # while idle, and in a session until its coordinator says otherwise
    coordinator_timeout_s: float = 60.0  # a session whose coordinator is silent this long is over for us
    progress_interval_s: float = 1.0
    reconnect_pause_s: float = 5.0  # between attempts to connect when the broker cannot be reached


@dataclass
class Agent:
    """``run`` serves until ``stop`` is called; ``node`` is the live node, if connected."""

    key: bytes
    sites: AgentSites
    broker: BrokerSettings
    settings: AgentSettings = AgentSettings()
    observers: Sequence[Observer] = ()
    executor: Executor | None = None
    peer_link: PeerLink | None = None  # how a peer connects (default: on the broker); tests hand their own
    node: ClientNode | None = field(default=None, init=False)
    link: AgentLink | None = field(default=None, init=False)  # sorts what arrives; holds a session's part
    links: dict[str, bytes] = field(default_factory=dict, init=False)  # remote combiner -> link key
    _stopping: str | None = field(default=None, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def stop(self, reason: str) -> None:
        """Leave: the round in progress (if any) is reported lost with ``reason``, then ``run`` ends."""
        if self._stopping is not None:
            return
        self._stopping = reason
        self._wake.set()
        if self.link is not None:
            self.link.stop(reason)
        if self.node is not None:
            self.node.leave(reason)

    async def run(self, on_connected: Callable[[], None] | None = None) -> None:
        cid = self.sites.client_id
        attempt = 0
        while self._stopping is None:
            codec = agent_codec(self.key, artifacts=self.broker.artifacts, links=self.links)
            try:
                async with self.broker.transport(cid, codec, declares=False) as transport:  # as run_client
                    attempt = 0
                    await self.serve_on(transport, on_connected)
                    return  # stopped on purpose (leave), or a bug surfaced by the node
            except TransportError as exc:
                attempt += 1
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "%s: broker unreachable (%s); trying again every %.0f s", cid, exc, self._pause())
            finally:
                self.node = None
            if self._stopping is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._pause())

    async def serve_on(self, transport: Transport, on_connected: Callable[[], None] | None = None) -> None:
        """Serve on a connected transport until stopped: the agent's own node, and the parts it is
        given in other sessions (``AgentLink``)."""
        home = Port(transport)
        self.node = self._node(home)
        self.link = AgentLink(transport, home, self._node_settings())
        sorting = asyncio.create_task(self.link.run(), name=f"agent-{self.sites.client_id}-link")
        try:
            if on_connected is not None:
                on_connected()
            reason = self.stop_reason()  # a signal may have come while connecting
            if reason is not None:
                self.node.leave(reason)
                self.link.stop(reason)
            await self.node.run()
        finally:
            await self.link.end_part(self._stopping or "the agent stopped")
            await stop_tasks([sorting], owner="agent")
            self.link = None

    def stop_reason(self) -> str | None:
        return self._stopping

    def _peer_link(self, peer_id: str, key: bytes) -> Transport:
        """A decentralised session's connection, as ``fedhive peer``'s: a peer's rights on the
        broker, signed with the session's key, its queue gone with it, and every message dropped
        whose signed sender names another login than RabbitMQ says published it. Its id is the
        server's random part with this agent's broker login (``amqp_topology.peer_id``), which is
        all a site's least-privilege user may name its queues and routing keys after."""
        if self.peer_link is not None:
            return self.peer_link(peer_id, key)
        own_id = amqp_peer_id(login_of(self.broker.url), peer_id)
        return self.broker.transport(
            own_id, peer_codec(key), ephemeral=True, role=Role.PEER, sender_check=peer_sender_check
        )

    def _node_settings(self) -> NodeSettings:
        s = self.settings
        return NodeSettings(
            trainer_for=self.sites.trainer_for,
            num_examples=self.sites.num_examples,
            label_counts=self.sites.label_counts,
            executor=self.executor,
            heartbeat_interval_s=s.heartbeat_interval_s,
            coordinator_timeout_s=s.coordinator_timeout_s,
            progress_interval_s=s.progress_interval_s,
            peer_link=self._peer_link,
            site_key=self.key,
            links=self.links,
        )

    def _pause(self) -> float:
        return self.settings.reconnect_pause_s

    def _node(self, transport: Transport) -> ClientNode:
        s = self.settings
        node = ClientNode(
            self.sites.client_id,
            transport,
            self.sites.trainer_for,
            num_examples=self.sites.num_examples,
            label_counts=self.sites.label_counts,
            executor=self.executor,
            heartbeat_interval_s=s.heartbeat_interval_s,
            coordinator_timeout_s=s.coordinator_timeout_s,
            progress_interval_s=s.progress_interval_s,
            agent=True,
            announce=self.sites.announcement(),
        )
        for attach in self.observers:
            attach(node.bus)
        return node


def agent_codec(
    key: bytes, *, artifacts: ArtifactStore | None = None, links: Mapping[str, bytes] | None = None
) -> WireCodec:
    """Signs with the site's secret and accepts any sender signed with it: the server, or a
    combiner the server runs (which holds the site's secret as trusted infrastructure). A remote
    combiner in ``links`` (as the agent is assigned to it) is signed to and checked with its link key."""
    if links is None:
        return WireCodec(lambda _to: key, Verifier(lambda _sender: key), artifacts)
    linked = links
    return WireCodec(lambda to: linked.get(to, key), Verifier(lambda sender: linked.get(sender, key)), artifacts)
