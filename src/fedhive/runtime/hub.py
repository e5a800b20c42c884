"""The platform's coordinator node: one transport endpoint, any number of sessions.

Peers register with the hub once and stay registered between sessions (the P2P platform's
model: a peer is ONLINE, is locked TRAINING by a session, and is released afterwards). Each
session runs its own ``Coordinator`` with the unchanged round logic; its transport is a
``SessionPort`` that the hub feeds with the messages of that session, so a coordinator cannot
tell whether it owns a transport or shares the hub's. The hub answers REGISTER and HEARTBEAT for
every peer, keeps the platform-wide registry (OFFLINE after missed heartbeats) and forwards
registrations and heartbeats of a session's peers to that session too.

Sessions of other topologies (``open_session``'s ``topology``): in a hierarchical session the
combiners that ``fedhive serve`` runs for it are the coordinator's participants, so everything they
send goes to the session as it is (``infrastructure``); the session's peers are introduced as
clients asking for a combiner, and of what they send afterwards only such requests go on (they
train with their combiner, and their idle beats are the hub's business). In a decentralised
session the peers' beats and reports go to the session, which only watches. Remote combiners
(``fedhive combiner --agent``, ``remote=True``) are infrastructure too while a session holds them,
but also registered nodes of the platform: what they send keeps them TRAINING in the registry, and
between sessions they register and beat as idle sites do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from fedhive.core.bodies import HeartbeatBody, RegisterBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import BusStopped, EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.registry import ClientRegistry, PeerStatus
from fedhive.transports.base import Transport, TransportClosed

log = logging.getLogger("fedhive.hub")

STAR, HIERARCHICAL, DECENTRALISED = "star", "hierarchical", "decentralised"
TOPOLOGIES = (STAR, HIERARCHICAL, DECENTRALISED)


class SessionPort(Transport):
    """One session's view of the hub's transport: sends go out through the hub, and ``recv``
    yields only what the hub routed to this session."""

    def __init__(self, hub: Hub, session_id: str) -> None:
        self.node_id = COORDINATOR_ID
        self.session_id = session_id
        self._hub = hub
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._ports.pop(self.session_id, None)
            self._inbox.put_nowait(None)

    async def send(self, to: str, message: Message) -> None:
        await self._hub.transport.send(to, message)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        return await self._hub.transport.send_many(items)

    async def publish(self, topic: str, message: Message) -> None:
        await self._hub.transport.publish(topic, message)

    async def subscribe(self, topic: str) -> None:
        await self._hub.transport.subscribe(topic)

    async def recv(self) -> Message:
        item = await self._inbox.get() if not self._closed or not self._inbox.empty() else None
        if item is None:
            raise TransportClosed(f"session port {self.session_id} is closed")
        return item

    def deliver(self, message: Message) -> None:
        if not self._closed:
            self._inbox.put_nowait(message)


class Hub:
    def __init__(self, transport: Transport, *, heartbeat_timeout_s: float | None = 20.0) -> None:
        self.transport = transport
        self.bus = EventBus()
        self.registry = ClientRegistry(heartbeat_timeout_s=heartbeat_timeout_s)
        self._ports: dict[str, SessionPort] = {}
        self._session_of: dict[str, str] = {}  # peer id -> the session holding it
        self._topology: dict[str, str] = {}  # session id -> its topology (star unless said)
        self._infrastructure: dict[str, str] = {}  # a combiner serve runs -> its session
        self._remote: set[str] = set()  # those of them that are remote combiners (registered nodes)
        self._sites: dict[str, tuple[dict[str, object], int]] = {}  # peer id -> its agent's last announcement
        self._timeout = heartbeat_timeout_s
        self.bus.on(ev.MessageIn, self._on_message)
        self.bus.on(ev.HeartbeatCheck, self._on_heartbeat_check)

    @property
    def heartbeat_timeout_s(self) -> float | None:
        return self._timeout

    def open_session(
        self,
        session_id: str,
        peers: Sequence[str],
        *,
        topology: str = STAR,
        infrastructure: Sequence[str] = (),
        remote: bool = False,
    ) -> SessionPort:
        """A port for a new (or resumed) session holding ``peers``. Peers already ONLINE are
        introduced to the session at once, as if they had just registered with it (in a
        hierarchical session: as clients asking for a combiner; in a decentralised one they are
        not: the session gives them their orders itself). ``infrastructure``: ids of the nodes
        ``fedhive serve`` runs for the session (combiners), routed to it as they are; ``remote``:
        they are remote combiners, whose liveness the registry keeps as a held site's."""
        port = SessionPort(self, session_id)
        self._ports[session_id] = port
        self._topology[session_id] = topology
        for node in infrastructure:
            self._infrastructure[node] = session_id
            if remote:
                self._remote.add(node)
        for peer in peers:
            self._session_of[peer] = session_id
            info = self.registry.get(peer)
            if info is not None and info.status is not PeerStatus.OFFLINE and topology == STAR:
                body = RegisterBody.model_construct(num_examples=info.num_examples, label_counts=info.label_counts)
                port.deliver(make(Kind.REGISTER, peer, body=body.to_body()))
            elif topology == HIERARCHICAL:
                self.ask_for_combiner(session_id, peer)
        return port

    def ask_for_combiner(self, session_id: str, peer: str, avoid: str | None = None) -> None:
        """Hand a hierarchical session the request for a combiner that ``peer`` would make as a
        ``fedhive client`` (the session answers the peer with its combiner)."""
        port = self._ports.get(session_id)
        if port is not None:
            body = RegisterBody.model_construct(role="client", avoid=avoid)
            port.deliver(make(Kind.REGISTER, peer, session_id=session_id, body=body.to_body()))

    def release(self, session_id: str) -> None:
        for peer in [p for p, s in self._session_of.items() if s == session_id]:
            del self._session_of[peer]
        for node in [n for n, s in self._infrastructure.items() if s == session_id]:
            del self._infrastructure[node]
            self._remote.discard(node)
        self._topology.pop(session_id, None)
        port = self._ports.pop(session_id, None)
        if port is not None:
            port._closed = True
            port._inbox.put_nowait(None)

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive(), name="hub-receive")
        if self._timeout:
            self.bus.call_later(self._timeout / 2, ev.HeartbeatCheck())
        try:
            await self.bus.run()
        finally:
            await stop_tasks([receiver], owner="hub")

    def stop(self) -> None:
        self.bus.stop()

    async def _receive(self) -> None:
        async for message in self.transport:
            try:
                await self.bus.submit(ev.MessageIn(message))
            except BusStopped:
                return

    async def _on_message(self, event: ev.MessageIn) -> None:
        msg = event.message
        infrastructure = self._infrastructure.get(msg.sender)
        if infrastructure is not None:  # a combiner of ours: the session's participant, not a peer
            self._route(msg, infrastructure)
            if msg.sender in self._remote:
                self._held_alive(msg.sender)
            return
        try:
            if msg.kind is Kind.REGISTER:
                await self._on_register(msg)
            elif msg.kind is Kind.HEARTBEAT:
                await self._on_heartbeat(msg)
            elif msg.kind is Kind.DONE:
                return
            elif self._topology.get(msg.envelope.session_id) != HIERARCHICAL:
                self._route(msg, msg.envelope.session_id)
        except FedhiveError as exc:
            log.warning("rejected %s from %s: %s", msg.kind, msg.sender, exc)

    async def _on_register(self, msg: Message) -> None:
        body = parse_body(RegisterBody, msg)
        previous = self.registry.register(msg.sender, body.num_examples or 0, body.label_counts)
        self._announced(msg.sender, body.site, body.num_examples)
        session = self._session_of.get(msg.sender)
        if session is not None:
            self.registry.set_status(msg.sender, PeerStatus.TRAINING)
        self.bus.emit(ev.ClientStatusChanged(msg.sender, self.registry.get(msg.sender).status, previous))  # type: ignore[union-attr]
        if session is not None and self._topology.get(session) == HIERARCHICAL:
            # a request for a combiner (its first one was lost, or its combiner fell silent), or a
            # peer that restarted: either way it is asking for a combiner
            self.ask_for_combiner(session, msg.sender, body.avoid)
        elif session is not None:
            self._route(msg, session)  # the session re-enables a peer that came back
        else:
            try:
                await self.transport.send(msg.sender, make(Kind.REGISTERED, COORDINATOR_ID))
            except TransportError as exc:
                log.warning("could not answer %s: %s", msg.sender, exc)

    async def _on_heartbeat(self, msg: Message) -> None:
        if msg.sender not in self.registry:
            # A peer that registered with an earlier process of this hub, which crashed: the peer
            # keeps going (it is registered) and only beats. Its heartbeat is signed with its own
            # secret, so it is taken back as if it had registered again; a peer of a resumed
            # session goes back to that session, which enables it and resends its round's TRAIN.
            log.info("%s registered before a restart; taking it back", msg.sender)
            again = RegisterBody.model_construct(num_examples=0).to_body()
            await self._on_register(make(Kind.REGISTER, msg.sender, body=again))
            self._announced(msg.sender, msg.envelope.body.get("site"), msg.envelope.body.get("num_examples"))
            return
        if self.registry.seen(msg.sender) is PeerStatus.OFFLINE:
            status = PeerStatus.TRAINING if msg.sender in self._session_of else PeerStatus.ONLINE
            self.registry.set_status(msg.sender, status)
            self.bus.emit(ev.ClientStatusChanged(msg.sender, status, PeerStatus.OFFLINE))
        # an idle agent's beat carries its registration
        self._announced(msg.sender, msg.envelope.body.get("site"), msg.envelope.body.get("num_examples"))
        b = parse_body(HeartbeatBody, msg)
        self.bus.emit(
            ev.HeartbeatReceived(msg.sender, b.status, msg.envelope.round, b.epoch, b.epochs, b.loss, b.accuracy)
        )
        session = self._session_of.get(msg.sender)
        if session is not None and self._topology.get(session) != HIERARCHICAL:
            self._route(msg, session)

    def _held_alive(self, node: str) -> None:
        """A remote combiner a session holds is heard from: TRAINING (also after a restart of ours)."""
        previous = self.registry.seen(node) if node in self.registry else self.registry.register(node, 0)
        if self.registry.set_status(node, PeerStatus.TRAINING) is not None or previous is not None:
            self.bus.emit(ev.ClientStatusChanged(node, PeerStatus.TRAINING, previous))

    def _announced(self, peer: str, site: object, num_examples: object) -> None:
        """Passes a site agent's announcement on when it is new or changed: an idle agent repeats
        it in every beat, and observers (the platform's sites page) need it once."""
        if not isinstance(site, dict):
            return
        count = num_examples if isinstance(num_examples, int) and not isinstance(num_examples, bool) else 0
        if self._sites.get(peer) != (site, max(0, count)):
            self._sites[peer] = (site, max(0, count))
            self.bus.emit(ev.SiteAnnounced(peer, dict(site), max(0, count)))

    def _route(self, msg: Message, session_id: str) -> None:
        port = self._ports.get(session_id)
        if port is None:
            log.info("dropped %s from %s for session %r, which is not running here", msg.kind, msg.sender, session_id)
            return
        port.deliver(msg)

    def _on_heartbeat_check(self, _: ev.HeartbeatCheck) -> None:
        for peer in self.registry.expire():
            self.bus.emit(ev.ClientStatusChanged(peer, PeerStatus.OFFLINE, None))
        if self._timeout:
            self.bus.call_later(self._timeout / 2, ev.HeartbeatCheck())
