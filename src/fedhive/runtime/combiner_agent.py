"""A remote combiner for ``fedhive serve``: ``fedhive combiner --agent``, session after session.

It keeps one connection to the broker under its own id (from ``fedhive admin site create --role
combiner``) and is idle between sessions: it beats to the server (status ``IDLE``), so the server
lists it ONLINE (``GET /sites``, role ``combiner``) and a hierarchical session may claim
it. The server's orders (``runtime.combiner_orders``) arrive on that connection: a join starts a
``Combiner`` for the session, on a ``Port`` of the connection that gets the session's messages
(the server's and its sites'); links give it the keys it signs to and checks each site with. When
the coordinator says STOP, fails the session or falls silent, the combiner is idle again: no
restart. A join for a session it already serves is a repeat (a restarted server asks again) and
changes nothing.

Signing (``remote_combiner_codec``): with its own secret to and from the server, with the link key
of each site it was given; a message from anyone else is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fedhive.core.bodies import HeartbeatBody
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.signing import Verifier
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, SessionFailed, TransportError
from fedhive.runtime.agent_sessions import Port
from fedhive.runtime.bus import EventBus
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.combiner_orders import IDLE, JoinOrder, is_order, read_link
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.storage.artifacts import ArtifactStore
from fedhive.transports.base import Transport
from fedhive.transports.wire_codec import WireCodec

log = logging.getLogger("fedhive.combiner")

Observer = Callable[[EventBus], None]


def remote_combiner_codec(key: bytes, links: dict[str, bytes], artifacts: ArtifactStore | None) -> WireCodec:
    def secret_of(node: str) -> bytes | None:
        return key if node == COORDINATOR_ID else links.get(node)

    # S3: its sites get presigned URLs from it (given a store it may presign on), never credentials
    return WireCodec(secret_of, Verifier(secret_of), artifacts, grants_uploads=True)


@dataclass
class _Session:
    order: JoinOrder
    port: Port
    task: asyncio.Task[None] | None = None
    clients: dict[str, bytes] = field(default_factory=dict)  # the sites linked to us in it, and their keys


@dataclass
class CombinerAgent:
    """``run`` serves until ``stop``; ``connect(links)`` makes the (not yet started) transport,
    whose codec signs with ``links`` as they are given (``remote_combiner_codec``)."""

    combiner_id: str
    key: bytes
    connect: Callable[[dict[str, bytes]], Transport]
    heartbeat_interval_s: float = 5.0
    reconnect_pause_s: float = 5.0
    exact_partials: bool = False
    observers: Sequence[Observer] = ()  # attached to each session's combiner (its tracking run)
    links: dict[str, bytes] = field(default_factory=dict)
    sessions_served: int = field(default=0, init=False)
    session: _Session | None = field(default=None, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Until ``stop``; returns the number of sessions served. An unreachable broker is tried
        again every ``reconnect_pause_s`` (the transport rides out outages once connected)."""
        first = True
        while not self._stopping.is_set():
            try:
                async with self.connect(self.links) as transport:
                    await self._serve_on(transport, on_ready if first else None)
                    first = False
            except TransportError as exc:
                log.warning("%s: broker unreachable (%s); trying again in %.0f s", self.combiner_id, exc,
                            self.reconnect_pause_s)  # fmt: skip
            if not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.reconnect_pause_s)
        return self.sessions_served

    async def _serve_on(self, transport: Transport, on_ready: Callable[[], None] | None) -> None:
        await self._idle_beat(transport)
        if on_ready is not None:
            on_ready()
        tasks = [
            asyncio.create_task(self._receive(transport), name=f"{self.combiner_id}-receive"),
            asyncio.create_task(self._beat(transport), name=f"{self.combiner_id}-beat"),
            asyncio.create_task(self._stopping.wait(), name=f"{self.combiner_id}-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a transport that failed for good surfaces here
        finally:
            for task in tasks:
                task.cancel()
            await self._end_session()
            await stop_tasks(tasks, owner=self.combiner_id)

    async def _beat(self, transport: Transport) -> None:
        """Idle beats: the server's sign that we are here. In a session the combiner beats itself."""
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if self.session is None or self.session.task is None or self.session.task.done():
                await self._idle_beat(transport)

    async def _idle_beat(self, transport: Transport) -> None:
        beat = HeartbeatBody.model_construct(status=IDLE).to_body()
        try:
            await transport.send(COORDINATOR_ID, make(Kind.HEARTBEAT, self.combiner_id, body=beat))
        except TransportError as exc:
            log.warning("%s: could not beat to the server: %s", self.combiner_id, exc)

    async def _receive(self, transport: Transport) -> None:
        async for msg in transport:
            try:
                if is_order(msg):
                    self._on_order(transport, msg)
                    continue
            except FedhiveError as exc:
                log.warning("%s: cannot act on the server's order: %s", self.combiner_id, exc)
                continue
            current = self.session
            if current is not None and current.task is not None and not current.task.done():
                current.port.deliver(msg)
            elif msg.kind is not Kind.REGISTERED:  # the server's answer to our idle registration
                log.debug("%s: dropped %s from %s (no session)", self.combiner_id, msg.kind, msg.sender)

    def _on_order(self, transport: Transport, msg: Message) -> None:
        current = self.session
        link = read_link(msg, self.key, self.combiner_id)
        if link is not None:
            client, key = link
            if current is None or current.order.session_id != msg.envelope.session_id:
                log.info("%s: link for %s in session %s, which we do not serve", self.combiner_id, client,
                         msg.envelope.session_id)  # fmt: skip
                return
            self.links[client] = current.clients[client] = key
            return
        order = JoinOrder.read(msg)
        assert order is not None  # is_order: a join or a link
        if current is not None and current.task is not None and not current.task.done():
            if current.order.session_id == order.session_id:
                return  # a repeat (a restarted server asks again): we serve it already
            log.info("%s: session %s replaces session %s", self.combiner_id, order.session_id,
                     current.order.session_id)  # fmt: skip
        new = _Session(order, Port(transport))
        new.task = asyncio.create_task(self._combine(new, current), name=f"{self.combiner_id}-{order.session_id}")
        self.session = new

    async def _combine(self, session: _Session, previous: _Session | None) -> None:
        if previous is not None:
            await self._finish(previous)
        o, me = session.order, self.combiner_id
        log.info("%s: joining session %s", me, o.session_id)
        node = Combiner(
            me,
            session.port,
            heartbeat_interval_s=o.heartbeat_interval_s,
            heartbeat_timeout_s=o.heartbeat_timeout_s,
            upstream_timeout_s=o.upstream_timeout_s,
            exact_partials=self.exact_partials,
        )
        for attach in self.observers:
            attach(node.bus)
        try:
            result = await node.run()
            log.info("%s: session %s over after %d rounds; idle again", me, o.session_id, result.rounds)
        except (SessionFailed, FedhiveError) as exc:
            log.warning("%s: session %s: %s; idle again", me, o.session_id, exc)
        finally:
            self.sessions_served += 1
            await session.port.close()
            for client, key in session.clients.items():
                if self.links.get(client) is key:  # not since given again, for a session after this one
                    del self.links[client]

    async def _finish(self, session: _Session) -> None:
        await session.port.close()
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
            await asyncio.gather(session.task, return_exceptions=True)

    async def _end_session(self) -> None:
        if self.session is not None:
            await self._finish(self.session)
            self.session = None
