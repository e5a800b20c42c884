"""A site agent in sessions other than the star's: following a combiner, or being a peer.

The agent keeps one connection. What arrives on it is sorted here (``AgentLink``):

- a ``registered`` from the server naming a ``combiner`` (the answer a hierarchical coordinator
  gives a client) is an order to follow that combiner for the session: a ``ClientNode`` of its own
  (``Follower``) serves the combiner until it says STOP, on a ``Port`` that gets the combiner's
  messages only. A remote combiner (``fedhive combiner --agent``) does not hold the site's secret:
  the ``registered`` then carries a link key sealed for this site (``runtime.combiner_orders``),
  which the agent's codec signs to and checks that combiner with (``NodeSettings.links``).
  If the combiner falls silent the follower asks the server for another one
  (``register`` with ``role: client`` and ``avoid``), as ``fedhive client`` does;
- an ``enable`` from the server naming ``topology: decentralised`` is an order to be a peer of
  that session (``runtime.peer_orders``): a ``PeerNode`` on a connection of its own, under the
  order's peer id, signed with the session's federation key; each round it completes is reported
  to the server on the agent's own channel. A restarted server asks again (``is_resume``): the
  agent repeats its reports of that session if its peer runs or has finished, or says it has none;
- a ``train`` from the server naming ``topology: decentralised`` and ``upload`` asks for the model
  the peers agreed on: the agent's peer of that session hands it over (``runtime.peer_model_upload``);
- a ``stop`` from the server for the session being followed or peered ends that part at once;
- everything else goes to the agent's own ``ClientNode`` (star sessions, idle beats).

The agent's own node stays idle meanwhile and beats to the server, which is how the server knows
the site is alive. When the part ends, by STOP, failure or silence, the agent is an ordinary idle
agent again: no restart, and no option of its own for any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from fedhive.core.bodies import RegisterBody, RegisteredBody, StopBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import FedhiveError, ProtocolError, SessionFailed, TransportError
from fedhive.runtime.client import ClientNode, TrainerFactory
from fedhive.runtime.combiner_orders import open_link
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.peer import PeerNode, PeerRoundCompleted
from fedhive.runtime.peer_model_upload import is_model_request, model_answer
from fedhive.runtime.peer_orders import (
    DONE,
    PROGRESS,
    PeerOrder,
    PeerProgress,
    failure_message,
    is_resume,
    open_key,
)
from fedhive.runtime.recording_trainer import RecordingTrainer
from fedhive.transports.base import Transport, TransportClosed

log = logging.getLogger("fedhive.agent")

# How a peer connection is made: (peer id, federation key) -> a transport not yet started.
PeerLink = Callable[[str, bytes], Transport]


class Port(Transport):
    """One node's share of the agent's connection: sends go out on it, and ``recv`` yields only
    what ``AgentLink`` handed to this port. Closing a port leaves the connection open."""

    def __init__(self, link: Transport) -> None:
        self.node_id = link.node_id
        self._link = link
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put_nowait(None)

    def deliver(self, message: Message) -> None:
        if not self._closed:
            self._inbox.put_nowait(message)

    async def send(self, to: str, message: Message) -> None:
        await self._link.send(to, message)

    async def publish(self, topic: str, message: Message) -> None:
        await self._link.publish(topic, message)

    async def subscribe(self, topic: str) -> None:
        await self._link.subscribe(topic)

    async def recv(self) -> Message:
        item = await self._inbox.get() if not self._closed or not self._inbox.empty() else None
        if item is None:
            raise TransportClosed(f"port of {self.node_id} is closed")
        return item


@dataclass
class NodeSettings:
    """What the agent's extra nodes share with its own node."""

    trainer_for: TrainerFactory
    num_examples: int
    label_counts: dict[str, int]
    executor: Executor | None
    heartbeat_interval_s: float
    coordinator_timeout_s: float
    progress_interval_s: float
    peer_link: PeerLink | None  # None: this agent cannot be a peer (no broker to open one on)
    site_key: bytes  # the site's own secret: it opens the federation key sealed for it
    # combiner -> the link key the agent's codec signs to it and checks it with (a remote combiner's)
    links: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Part:
    """The session the agent takes part in besides its own node: a follower or a peer."""

    session_id: str
    task: asyncio.Task[None] | None = None
    combiner: str | None = None
    port: Port | None = None
    node: ClientNode | PeerNode | None = None
    reports: list[PeerProgress] = field(default_factory=list)  # a peer's, as told to the server
    failure: str | None = None  # why a peer ended before its last round


@dataclass
class AgentLink:
    """Sorts what arrives on the agent's connection (see the module's docstring)."""

    link: Transport
    home: Port
    settings: NodeSettings
    part: _Part | None = None
    _stopping: str | None = field(default=None, init=False)

    async def run(self) -> None:
        """Until the connection closes; the part under way (if any) is ended with it."""
        try:
            async for msg in self.link:
                self._sort(msg)
        finally:
            await self.home.close()
            await self.end_part("the agent's connection closed")

    def _sort(self, msg: Message) -> None:
        part = self.part
        if msg.sender == COORDINATOR_ID:
            try:
                if self._order(msg):
                    return
            except FedhiveError as exc:
                log.warning("%s: cannot act on the server's %s: %s", self.link.node_id, msg.kind, exc)
                self._tell(failure_message(self.link.node_id, msg.envelope.session_id, str(exc)))
                return
            self.home.deliver(msg)
        elif part is not None and part.port is not None and msg.sender == part.combiner:
            part.port.deliver(msg)
        else:
            log.debug("%s: dropped %s from %s (no session of ours)", self.link.node_id, msg.kind, msg.sender)

    def _order(self, msg: Message) -> bool:
        """Acts on an order of the server's; False when the message is for the agent's own node."""
        session = msg.envelope.session_id
        part = self.part
        if msg.kind is Kind.STOP and part is not None and session == part.session_id:
            reason = parse_body(StopBody, msg).reason
            log.info("%s: the server ended session %s (%s)", self.link.node_id, session, reason or "done")
            self._spawn_end(f"the server ended the session: {reason}" if reason else "the session is over")
            return True
        if msg.kind is Kind.REGISTERED and session:
            combiner = parse_body(RegisteredBody, msg).combiner
            if combiner is None:
                return False
            self._link(session, combiner, msg.envelope.body.get("link"))
            self._start(session, combiner=combiner)
            return True
        if is_resume(msg):
            self._answer_resume(session)
            return True
        if is_model_request(msg):  # the peers agreed on a model: the server keeps it (peer_model_upload)
            node = part.node if part is not None and part.session_id == session else None
            held = (node.params, node.digest) if isinstance(node, PeerNode) else (None, "")
            self._tell(model_answer(self.link.node_id, msg, *held))
            return True
        order = PeerOrder.read(msg)
        if order is None:
            return False
        self._start(session, order=order)
        return True

    def _start(self, session: str, *, combiner: str | None = None, order: PeerOrder | None = None) -> None:
        part = self.part
        if part is not None and part.task is not None and not part.task.done():
            if part.session_id == session and combiner is not None and part.combiner == combiner:
                return  # the same answer again
            if part.session_id != session:
                # The server gives an order only to a site its records hold free: the session
                # before is over there (a follower may still be saying DONE to a combiner gone).
                log.info("%s: session %s replaces session %s", self.link.node_id, session, part.session_id)
        if self._stopping is not None:
            return
        previous = self.part
        new = _Part(session)
        if combiner is not None:
            new.combiner, new.port = combiner, Port(self.link)
            work = self._follow(new, previous)
        else:
            assert order is not None
            work = self._peer(new, order, previous)
        new.task = asyncio.create_task(work, name=f"agent-{self.link.node_id}-{session}")
        self.part = new

    def _link(self, session: str, combiner: str, sealed: object) -> None:
        """The key to sign to (and check) a remote combiner with, renewed by each assignment; none
        for a combiner the server runs itself (it holds the site's secret)."""
        links = self.settings.links
        links.clear()
        if sealed is None:
            return
        if not isinstance(sealed, str):
            raise ProtocolError(f"session {session}: the link to {combiner} is not a sealed key")
        me = self.link.node_id
        links[combiner] = open_link(sealed, self.settings.site_key, session_id=session, combiner=combiner, client=me)

    # -- following a combiner ---------------------------------------------------------------------
    async def _follow(self, part: _Part, previous: _Part | None) -> None:
        await _finished(previous)
        s, me = self.settings, self.link.node_id
        assert part.port is not None and part.combiner is not None
        log.info("%s: session %s: following combiner %s", me, part.session_id, part.combiner)
        node = ClientNode(
            me,
            part.port,
            s.trainer_for,
            num_examples=s.num_examples,
            label_counts=s.label_counts,
            coordinator_id=part.combiner,
            executor=s.executor,
            heartbeat_interval_s=s.heartbeat_interval_s,
            register_timeout_s=s.coordinator_timeout_s,
            coordinator_timeout_s=s.coordinator_timeout_s,
            progress_interval_s=s.progress_interval_s,
            follow_announced_timeout=True,
        )
        part.node = node
        try:
            await node.run()
            log.info("%s: session %s over; idle again", me, part.session_id)
        except SessionFailed as exc:
            if self._stopping is not None or part.port._closed:
                return
            # The combiner went silent (or ended badly): the server gives us another while the
            # session runs, and answers nothing we act on once it is over.
            log.warning("%s: lost combiner %s (%s); asking the server for another", me, part.combiner, exc)
            ask = RegisterBody.model_construct(role="client", avoid=part.combiner).to_body()
            self._tell(make(Kind.REGISTER, me, session_id=part.session_id, body=ask))
        finally:
            await part.port.close()

    # -- being a peer -------------------------------------------------------------------------------
    async def _peer(self, part: _Part, order: PeerOrder, previous: _Part | None) -> None:
        await _finished(previous)
        s, me, session = self.settings, self.link.node_id, order.session_id
        try:
            if s.peer_link is None:
                raise SessionFailed(f"{me} cannot take part in a decentralised session: it has no broker to meet on")
            key = open_key(order.sealed_key, s.site_key, session_id=session, site_id=me)
            trainer = RecordingTrainer(s.trainer_for(order.config))
            async with s.peer_link(order.peer_id, key) as transport:
                node = PeerNode(
                    transport,
                    trainer,
                    order.config,
                    min_peers=order.config.min_clients,
                    topic=order.topic,
                    beat_s=order.beat_s,
                    peer_timeout_s=order.peer_timeout_s,
                    discovery_timeout_s=order.config.registration_timeout_s,
                    seed_index=order.seed_index,
                )
                part.node = node

                def report(e: PeerRoundCompleted) -> None:
                    examples, metrics = trainer.figures(e.round)
                    kind = DONE if e.round >= order.config.rounds else PROGRESS
                    progress = PeerProgress(kind, e.round, e.digest, e.members, examples, metrics)
                    part.reports.append(progress)
                    self._tell(progress.message(me, session))

                node.bus.on(PeerRoundCompleted, report)
                log.info("%s: session %s: peer %s of %d", me, session, order.peer_id[:8], len(order.peers))
                await node.run()
                log.info("%s: session %s over after %d rounds; idle again", me, session, len(node.history))
        except asyncio.CancelledError:
            if part.node is not None and isinstance(part.node, PeerNode):
                with contextlib.suppress(TransportError, RuntimeError):
                    await asyncio.wait_for(asyncio.shield(part.node.leave()), 2.0)
            raise
        except FedhiveError as exc:
            log.warning("%s: session %s: %s", me, session, exc)
            part.failure = str(exc)
            self._tell(failure_message(me, session, str(exc)))

    def _answer_resume(self, session: str) -> None:
        """The restarted server asks about our peer of ``session``: its reports again (the server
        may have missed some while it was down), or why there is none."""
        me, part = self.link.node_id, self.part
        if part is None or part.session_id != session or part.combiner is not None:
            why = f"{me} runs no peer of session {session} (the agent restarted since, or never got its order)"
            self._tell(failure_message(me, session, why))
            return
        log.info("%s: the server restarted; repeating %d reports of session %s", me, len(part.reports), session)
        for report in part.reports:
            self._tell(report.message(me, session))
        if part.failure is not None:
            self._tell(failure_message(me, session, part.failure))
        elif part.task is not None and part.task.done() and not any(r.type == DONE for r in part.reports):
            self._tell(failure_message(me, session, f"{me}'s peer of session {session} ended before its last round"))

    # -- ending -------------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """The agent is stopping: a follower reports its round lost with ``reason`` (as the own
        node does); a peer says goodbye and tells the server why."""
        self._stopping = reason
        part = self.part
        if part is None or part.task is None or part.task.done():
            return
        if isinstance(part.node, ClientNode):
            part.node.leave(reason)
        else:
            self._tell(failure_message(self.link.node_id, part.session_id, reason))
            part.task.cancel()

    def _spawn_end(self, reason: str) -> None:
        task = asyncio.create_task(self.end_part(reason), name=f"agent-{self.link.node_id}-end")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def end_part(self, reason: str) -> None:
        part = self.part
        if part is None or part.task is None or part.task.done():
            return
        if isinstance(part.node, ClientNode):
            part.node.leave(reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(part.task), 5.0)
        part.task.cancel()
        await asyncio.gather(part.task, return_exceptions=True)

    def _tell(self, message: Message) -> None:
        """To the server, on the agent's own channel; a lost report only costs the dashboard a line."""

        async def send() -> None:
            try:
                await self.link.send(COORDINATOR_ID, message)
            except TransportError as exc:
                log.warning("%s: could not tell the server %s: %s", self.link.node_id, message.kind, exc)

        task = asyncio.create_task(send(), name=f"agent-{self.link.node_id}-tell")
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Task[None]] = set()  # reports in flight (kept from the garbage collector)


async def _finished(previous: _Part | None) -> None:
    """A new part starts once the one before it has ended (a replaced follower's port is closed)."""
    if previous is None:
        return
    if previous.port is not None:
        await previous.port.close()
    if previous.task is not None:
        previous.task.cancel()
        await asyncio.gather(previous.task, return_exceptions=True)
