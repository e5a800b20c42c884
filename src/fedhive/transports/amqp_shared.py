"""Many nodes of one process on one AMQP connection: ``fedhive client --virtual N`` at scale.

Why: a connection per virtual client costs the broker a connection process, a channel process and
a socket buffer each (up to 4 MB with Linux's autotuned buffers, docs/networked.md, "Many sites on
one broker"), and the process a reader task, heartbeat timers and a TCP socket each: 10,000
clients would be 10,000 of each. A ``SharedConnection`` is one connection and one channel (with
publisher confirms) for all of a process's nodes. Each node keeps what makes it a node of its own:
its durable queue ``{ns}.node.{id}`` and consumer on that channel, its codec (its own signing
key) and its routing key on the up exchange, so the coordinator sees, verifies and answers each
client exactly as before.

``MuxLink`` is the transport of a ``ClientHost`` over the broker: one endpoint (an
``AmqpTransport`` on the shared connection) for the host's own id and one per hosted client. What
any endpoint receives comes out of ``recv_addressed`` with the id it was addressed to; a message is
sent through the endpoint of its sender, so it is signed with that sender's own key and published
under that sender's routing key. The coordinator's heartbeats are noted here (``last_heard``) and
not queued: with 1000 clients a host would otherwise read 1000 of them per interval one by one.

A host whose clients' ids name it (``amqp_topology.hosted_id``, ``fedhive clients add --hosted-by
HOST``) is one broker identity: its ``MuxLink`` has one endpoint, the host's, which sends for each
of its clients (``speaks_for``: signed with the client's key, under the client's routing key) and
receives for them on the host's one queue, where the coordinator routes what is for any of them.
Starting it is one queue set-up, not one per client, and its broker user (``BrokerGrant.host``)
needs no right on any other queue.

Without that, starting 1000 endpoints opens short-lived probe channels for each (``amqp_keeper``), one node at
a time (``probe_lock``); the rest of a start (purge, consume) goes on side by side,
``START_CONCURRENCY`` nodes at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence

import aio_pika
from aio_pika import abc as pika

from fedhive.core.envelope import Kind, Message
from fedhive.errors import TransportError
from fedhive.transports.amqp import AmqpTransport, Sink, _broker_call
from fedhive.transports.amqp_topology import redact, ssl_context_for
from fedhive.transports.base import Transport, TransportClosed

log = logging.getLogger("fedhive.transport")

START_CONCURRENCY = 64


class SharedConnection:
    """One robust connection and one channel, shared by the nodes of this process."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "fedhive virtual clients",
        ca_file: str | None = None,
        connect_timeout_s: float = 10.0,
        prefetch: int = 8,
    ) -> None:
        self.url = url
        self._name = name
        self._ssl = ssl_context_for(url, ca_file)
        self._connect_timeout = connect_timeout_s
        self._prefetch = prefetch
        self._connection: pika.AbstractRobustConnection | None = None
        self._channel: pika.AbstractRobustChannel | None = None
        self._probe_lock: asyncio.Lock | None = None

    @property
    def probe_lock(self) -> asyncio.Lock:
        """Held while a node sets up its queue (on probe channels of its own): see amqp.py."""
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        return self._probe_lock

    @property
    def connection(self) -> pika.AbstractRobustConnection:
        if self._connection is None:
            raise TransportError(f"{self._name}: the shared AMQP connection is not started")
        return self._connection

    @property
    def channel(self) -> pika.AbstractRobustChannel:
        if self._channel is None:
            raise TransportError(f"{self._name}: the shared AMQP connection is not started")
        return self._channel

    async def start(self) -> None:
        where = f"{self._name}: cannot connect to the AMQP broker at {redact(self.url)}"
        async with _broker_call(where, self._connect_timeout):
            self._connection = await aio_pika.connect_robust(
                self.url,
                ssl_context=self._ssl,
                timeout=self._connect_timeout,
                client_properties={"connection_name": self._name},
            )
        try:
            async with _broker_call(f"{self._name}: cannot open a channel", self._connect_timeout):
                channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                # Per consumer (AMQP's default, global=False): each node gets up to this many at once.
                await channel.set_qos(prefetch_count=self._prefetch)
        except TransportError:
            await self._connection.close()
            raise
        self._channel = channel

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            try:
                async with _broker_call(f"{self._name}: closing the connection", self._connect_timeout):
                    await self._connection.close()
            except TransportError as exc:
                log.warning("%s", exc)

    async def __aenter__(self) -> SharedConnection:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def start_all(transports: Sequence[Transport], *, concurrency: int = START_CONCURRENCY) -> None:
    """Start ``transports`` a few at a time; on a failure, close those started and raise it."""
    gate = asyncio.Semaphore(concurrency)

    async def one(t: Transport) -> None:
        async with gate:
            await t.start()

    results = await asyncio.gather(*(one(t) for t in transports), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)
        raise failure


_STOPPED = object()


class MuxLink(Transport):
    """A host's link: its own endpoint and its clients', on one shared connection.

    ``endpoint(node_id, sink)`` makes the ``AmqpTransport`` of one id (with its own codec);
    ``coordinator``: the node whose heartbeats are noted rather than queued; ``speaks_for``: the
    clients the host's own endpoint sends and receives for (no endpoint of their own)."""

    def __init__(
        self,
        host_id: str,
        clients: Sequence[str],
        endpoint: Callable[[str, Sink], AmqpTransport],
        *,
        coordinator: str,
        inbox_size: int = 1024,
        speaks_for: Collection[str] = (),
    ) -> None:
        self.node_id = host_id
        self._speaks_for = frozenset(speaks_for)
        self._coordinator = coordinator
        self._inbox: asyncio.Queue[tuple[str, Message] | object] = asyncio.Queue(inbox_size)
        self._endpoints: dict[str, AmqpTransport] = {}
        for node in (host_id, *clients):
            self._endpoints[node] = endpoint(node, self._take)
        self._closed = False
        self.last_heard = time.monotonic()  # when the coordinator was last heard from, on any endpoint

    @property
    def endpoints(self) -> Mapping[str, AmqpTransport]:
        return self._endpoints

    async def start(self) -> None:
        await start_all(list(self._endpoints.values()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(t.close() for t in self._endpoints.values()), return_exceptions=True)
        if not self._inbox.full():
            self._inbox.put_nowait(_STOPPED)

    @property
    def connected(self) -> bool:
        return self._endpoints[self.node_id].connected

    @property
    def reconnects(self) -> int:
        return self._endpoints[self.node_id].reconnects

    async def _take(self, to: str, message: Message | None) -> None:
        if message is None:  # an endpoint's receiving failed: the host cannot serve its clients
            await self._inbox.put(_STOPPED)
            return
        if message.sender == self._coordinator:
            self.last_heard = time.monotonic()
            if message.kind is Kind.HEARTBEAT:
                return  # the coordinator is alive: all a host needs to know from it
        await self._inbox.put((to, message))

    async def recv_addressed(self) -> tuple[str, Message]:
        """The next message for the host or one of its clients, with the id it was sent to."""
        if self._closed and self._inbox.empty():
            raise TransportClosed(f"transport of {self.node_id} is closed")
        item = await self._inbox.get()
        if isinstance(item, tuple):
            return item
        if not self._inbox.full():
            self._inbox.put_nowait(_STOPPED)  # pass the stop on to any other waiting receiver
        raise TransportClosed(f"transport of {self.node_id} is closed")

    async def recv(self) -> Message:
        return (await self.recv_addressed())[1]

    def _sender_endpoint(self, message: Message) -> AmqpTransport:
        endpoint = self._endpoints.get(message.sender)
        if endpoint is None and message.sender in self._speaks_for:
            endpoint = self._endpoints[self.node_id]
        if endpoint is None:
            raise TransportError(f"{self.node_id} does not speak for {message.sender}")
        return endpoint

    async def send(self, to: str, message: Message) -> None:
        await self._sender_endpoint(message).send(to, message)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        async def one(to: str, message: Message) -> TransportError | None:
            try:
                await self.send(to, message)
            except TransportError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(to, m) for to, m in items)))

    async def publish(self, topic: str, message: Message) -> None:
        await self._sender_endpoint(message).publish(topic, message)

    async def subscribe(self, topic: str) -> None:
        await self._endpoints[self.node_id].subscribe(topic)
