"""RabbitMQ transport: the same contract as ``MemoryTransport``, across machines.

Layout on the broker: see ``amqp_topology``. Every message is a signed frame from ``WireCodec``;
payloads above its claim-check threshold travel through the artifact store, so frames stay far
below the broker's message size limit (128 MiB on RabbitMQ 3.x, 16 MiB by default on 4.x).

Delivery guarantees, and why:
- ``send`` is durable and confirmed: persistent messages, publisher confirms, and ``mandatory``
  routing. A message for a node that has ever started waits in its durable queue while the node
  is away; a message for a node the broker has never heard of raises ``TransportError`` (and is
  counted in ``unroutable``) instead of vanishing, so the coordinator learns at once that the
  client cannot be reached. (``MemoryTransport`` counts such messages in ``network.dropped``.)
- ``publish`` is a broadcast to whoever listens now: not persistent, not mandatory, so a topic
  without subscribers is not an error, and broadcasts sent while a subscriber is disconnected are
  lost for it, as on the memory transport.
- Receiving is at-least-once into the inbox: a delivery is acked only once it is in the inbox (or
  rejected), so nothing acked is ever lost in flight. A burst of deliveries is acked with a few
  frames (``multiple``), not one per message. A delivery whose ack is cut off by a broker
  restart comes again; ``WireCodec``'s replay check drops that copy (counted in ``duplicates``).
  What sits in the inbox when the process dies is gone: nodes resend on their own deadlines.
- Deliveries are decoded one by one in arrival order, so a node sees a sender's messages in the
  order they were sent, as on the memory transport.

Isolation (docs/security.md, "Broker isolation"): what a node may do on the broker is its
``Role`` (``amqp_topology``). The coordinator creates and keeps the exchanges and queues
(``amqp_keeper``) and sends through the direct exchange. Everyone else sends through a topic
exchange under a routing key that names it as the sender, which a topic permission ties to its
broker user: a client and a peer through the up exchange, a combiner up to the coordinator
through the up exchange and down to its clients through the down exchange (where the
coordinator binds exactly the clients it assigned to it). Clients and combiners need no
configure rights: they only check that their queue exists; a peer declares its own queues only.
Every message carries the AMQP ``user_id`` property, which RabbitMQ checks against
the connection's login; a ``sender_check`` (the coordinator's: ``broker_users.SenderLogins``)
refuses a message whose signed sender does not go with that login.

Reconnection: ``aio_pika.connect_robust`` re-declares the channel, exchanges, queues, bindings and
consumers after a broker restart (retrying every ``reconnect_interval`` seconds, 5 by default; the
URL query ``?reconnect_interval=1`` changes it). ``send`` and ``publish`` wait for the connection
to come back and retry, each bounded by ``publish_timeout_s``; the retried frame is the same
signed frame, so the receiver's replay check drops a copy if a lost confirm hid a success.

Many nodes of one process (``fedhive client --virtual N``) share one connection and channel
(``shared``, an ``amqp_shared.SharedConnection``): each keeps its own queue, consumer, signing
codec and routing key, and acks its deliveries one by one (a ``multiple`` ack on a shared channel
would ack other nodes' deliveries too). With ``sink`` a node hands what it receives, with its own
id, to a receiver that serves many nodes (``amqp_shared.MuxLink``) instead of to its own inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

import aio_pika
from aio_pika import abc as pika
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.exceptions import ChannelAccessRefused

from fedhive.core.envelope import Message
from fedhive.core.stopping import stop_tasks
from fedhive.errors import FedhiveError, StorageError, TransportError
from fedhive.transports.amqp_keeper import TopologyKeeper
from fedhive.transports.amqp_topology import (
    RECIPIENT_HEADER,
    Names,
    Role,
    broadcast_binding,
    broadcast_key,
    check_name,
    login_of,
    queue_arguments,
    redact,
    ssl_context_for,
    up_key,
)
from fedhive.transports.base import Transport, TransportClosed
from fedhive.transports.wire_codec import WireCodec

log = logging.getLogger("fedhive.transport")

CONTENT_TYPE = "application/vnd.fedhive.frame"
# Failures that mean "the broker is (for now) unreachable": worth waiting for a reconnect.
_RETRYABLE = (ConnectionError, OSError, ChannelInvalidStateError)
_RETRY_PAUSE_S = 0.5
# At most this many handled deliveries wait for one ack: below the prefetch limit (8), so that the
# broker keeps sending while a burst is acked in a few frames.
_ACK_BATCH = 4
# Bounds of every node queue: far above what a round queues, low enough that a flood of messages
# cannot take the broker's memory or disk.
MAX_QUEUE_MESSAGES = 100_000
MAX_QUEUE_BYTES = 2 << 30
EPHEMERAL_QUEUE_EXPIRES_S = 60.0  # see AmqpTransport: the queue of a node whose id is never used again


class _Stop:
    """Put in the inbox to wake receivers when the transport closes or fails."""


@contextlib.asynccontextmanager
async def _broker_call(what: str, timeout_s: float) -> AsyncIterator[None]:
    """Bound a broker interaction in time and map the client library's errors to ours."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise TransportError(f"{what}: no answer from the broker within {timeout_s:g} s") from exc
    except ChannelAccessRefused as exc:
        raise TransportError(f"{what}: the broker user may not do this ({exc})") from exc
    except ChannelPreconditionFailed as exc:
        raise TransportError(
            f"{what}: an exchange or queue of this namespace exists with other settings ({exc}); "
            "an older fedhive, or someone else, made it: delete it on the broker, or use another namespace"
        ) from exc
    except CONNECTION_EXCEPTIONS as exc:
        raise TransportError(f"{what}: {str(exc) or type(exc).__name__}") from exc


_Route = tuple[pika.AbstractExchange, str, "dict[str, str] | None"]  # exchange, routing key, headers
SenderCheck = Callable[[str, "str | None"], "str | None"]
# Where a node with a ``sink`` hands (its id, a message it received); None once it stops receiving.
Sink = Callable[[str, "Message | None"], Awaitable[None]]


class SharedLink(Protocol):
    """One connection and channel that many nodes of a process use (``amqp_shared``)."""

    @property
    def connection(self) -> pika.AbstractRobustConnection: ...

    @property
    def channel(self) -> pika.AbstractRobustChannel: ...

    @property
    def probe_lock(self) -> asyncio.Lock: ...


class AmqpTransport(Transport):
    """A node's connection to RabbitMQ. ``rejected`` counts messages that failed verification,
    ``duplicates`` redelivered copies dropped, ``unroutable`` sends to nodes unknown to the broker.

    ``declares``: False for a client, which needs no configure rights on the broker; ``role``
    says more (a combiner, a peer), ``upstream`` is a combiner's coordinator (see the
    module's docstring). ``downstream``: ids of clients whose queues this node creates for them;
    ``relays``: those of them that are combiners (their queues are bound to the up exchange too).
    ``sender_check(sender, login)``: why a message signed by ``sender`` and published by broker
    user ``login`` is refused, or None. ``topology_wait_s``: how long a client waits for its
    queue to be created."""

    def __init__(
        self,
        url: str,
        node_id: str,
        codec: WireCodec,
        *,
        namespace: str = "fedhive",
        prefetch: int = 8,
        ca_file: str | None = None,
        connect_timeout_s: float = 10.0,
        publish_timeout_s: float = 30.0,
        inbox_size: int = 64,
        purge_on_start: bool = False,
        queue_expires_s: float | None = 3600.0,
        declares: bool = True,
        role: Role | None = None,
        upstream: str = "coordinator",
        downstream: Callable[[], Iterable[str]] | None = None,
        relays: Callable[[], Iterable[str]] | None = None,
        sender_check: SenderCheck | None = None,
        keep_interval_s: float = 2.0,
        topology_wait_s: float = 120.0,
        max_queue_messages: int = MAX_QUEUE_MESSAGES,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        ephemeral: bool = False,
        shared: SharedLink | None = None,
        sink: Sink | None = None,
        route_via: Callable[[str], str | None] | None = None,
        speaks_for: Mapping[str, WireCodec] | None = None,
    ) -> None:
        self.node_id = node_id
        # The coordinator's: the host whose queue takes what is for a client (hosted clients
        # have no queue of their own: amqp_topology, "hosted_id").
        self._route_via = route_via
        # A host's: its clients' codecs. It sends for them (signed with their keys, under their
        # routing keys) and receives for them on its one queue (the recipient in a header).
        self._speaks_for = speaks_for or {}
        self._shared = shared  # a connection and channel of the process's, not this node's own
        self._sink = sink
        self._queue: pika.AbstractRobustQueue | None = None
        self._consumer_tag: str | None = None
        # An ephemeral node (a peer: a fresh random id per process) is never addressed again once
        # it is gone, so its queue must not outlive it: deleted on close, and expired by the
        # broker a minute after a crash (long enough to ride out a reconnect).
        self._ephemeral = ephemeral
        if ephemeral:
            queue_expires_s = EPHEMERAL_QUEUE_EXPIRES_S
        self._url = url
        self._codec = codec
        codec.bind_namespace(namespace)  # claim checks are per namespace, like queues
        for own in self._speaks_for.values():
            own.bind_namespace(namespace)
        self._names = Names(namespace)
        self._queue_name = self._names.node_queue(check_name(node_id, "node id"))
        self._ssl = ssl_context_for(url, ca_file)
        self._login = login_of(url)
        self._prefetch = prefetch
        self._purge_on_start = purge_on_start
        self._role = role or (Role.COORDINATOR if declares else Role.CLIENT)
        self._declares = self._role is Role.COORDINATOR  # the one node that never waits for the broker
        self._upstream = upstream
        self._sender_check = sender_check
        # A node queue nobody consumes for queue_expires_s is deleted by the broker: messages that
        # old would fail the receiver's replay window anyway, and crashed test or benchmark runs
        # must not pile up queues until the broker runs out of file handles.
        self._keeper = TopologyKeeper(
            self._names,
            node_id,
            queue_arguments(queue_expires_s, max_queue_messages, max_queue_bytes),
            role=self._role,
            downstream=downstream,
            relays=relays,
            interval_s=keep_interval_s,
            wait_s=topology_wait_s,
        )
        self._keeping: asyncio.Task[None] | None = None
        self._connect_timeout = connect_timeout_s
        self._publish_timeout = publish_timeout_s
        self._inbox: asyncio.Queue[Message | _Stop] = asyncio.Queue(inbox_size)
        # Raw deliveries waiting to be decoded; the broker's prefetch limit bounds it.
        self._deliveries: asyncio.Queue[pika.AbstractIncomingMessage] = asyncio.Queue()
        self._unacked: list[pika.AbstractIncomingMessage] = []  # handled, their ack not sent yet
        self._connection: pika.AbstractRobustConnection | None = None
        self._channel: pika.AbstractRobustChannel | None = None
        self._subscriptions: pika.AbstractRobustQueue | None = None
        self._topics: set[str] = set()
        self._subscribe_lock = asyncio.Lock()
        self._receiver: asyncio.Task[None] | None = None
        self._closed = False
        self._link_up = False
        self._reconnects = 0
        self._failure: BaseException | None = None
        self.rejected = 0
        self.duplicates = 0
        self.unroutable = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, declare the exchanges and this node's queue, and start consuming."""
        self._check_not_closed()
        if self._connection is not None:
            return
        where = f"{self.node_id}: cannot connect to the AMQP broker at {redact(self._url)}"
        if self._shared is not None:
            await self._start_on(self._shared.connection)
            return
        async with _broker_call(where, self._connect_timeout):
            # connect_robust's own timeout, not a cancellation, bounds the first attempt: cancelling
            # it midway would leave its reconnection task running.
            self._connection = await aio_pika.connect_robust(
                self._url,
                ssl_context=self._ssl,
                timeout=self._connect_timeout,
                client_properties={"connection_name": f"fedhive {self.node_id}"},
            )
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_link_lost)
        # A client may wait for the coordinator to create its queue (bounded by topology_wait_s).
        limit = self._connect_timeout + (0.0 if self._declares else self._keeper.wait_s)
        try:
            async with _broker_call(f"{self.node_id}: cannot set up its queue on the broker", limit):
                await self._declare(self._connection)
        except TransportError:
            await self._connection.close()
            raise
        self._start_receiving()
        if self._codec.defer_references:  # a coordinator: clean up after an earlier process of it
            try:
                swept = await asyncio.to_thread(self._codec.sweep_stale_claims)
            except StorageError as exc:
                log.warning("%s: could not sweep old claim checks: %s", self.node_id, exc)
            else:
                if swept:
                    log.info("%s: deleted %d claim checks left from before", self.node_id, swept)

    async def _start_on(self, connection: pika.AbstractRobustConnection) -> None:
        """Start on the process's shared connection: this node's queue and consumer only."""
        self._connection = connection
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_link_lost)
        limit = self._connect_timeout + (0.0 if self._declares else self._keeper.wait_s)
        try:
            async with _broker_call(f"{self.node_id}: cannot set up its queue on the broker", limit):
                await self._declare(connection)
        except TransportError:
            self._forget_connection()
            raise
        self._start_receiving()

    def _start_receiving(self) -> None:
        self._link_up = True
        self._receiver = asyncio.create_task(self._receive_loop(), name=f"amqp-receive-{self.node_id}")

    def _forget_connection(self) -> None:
        """Stop following the shared connection's state (it outlives this node)."""
        if self._connection is not None:
            self._connection.reconnect_callbacks.discard(self._on_reconnect)
            self._connection.close_callbacks.discard(self._on_link_lost)

    async def _declare(self, connection: pika.AbstractRobustConnection) -> None:
        if self._shared is not None:
            channel = self._shared.channel  # its prefetch limit counts per consumer: per node
        else:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await channel.set_qos(prefetch_count=self._prefetch)
        if self._shared is not None:
            # One node's set-up at a time on a shared connection: its probe channels, opened side
            # by side, could reuse a channel number the broker closed (a NOT_FOUND answer) before
            # it let it go ("second 'channel.open' seen"), which closes the whole connection.
            async with self._shared.probe_lock:
                queue = await self._keeper.set_up(connection, channel)
        else:
            queue = await self._keeper.set_up(connection, channel)
        if self._purge_on_start:
            # A node starting afresh (a new coordinator, a client process) must not act on what an
            # earlier process of the same id left queued: a stale REGISTER or STOP from another
            # session. Nothing is lost that matters: its peers resend on their own deadlines.
            purged = await queue.purge()
            if purged.message_count:
                log.info("%s: dropped %d stale messages from its queue", self.node_id, purged.message_count)
        self._consumer_tag = await queue.consume(self._on_delivery)
        self._queue = queue
        self._channel = channel
        if self._keeper.keeps:
            keeping = self._keeper.keep(connection, channel)
            self._keeping = asyncio.create_task(keeping, name=f"amqp-keep-{self.node_id}")

    async def close(self) -> None:
        """Stop receiving and disconnect; unacked deliveries go back to the queue. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Bounded: a task that does not end on cancel must not hold the node's exit.
        await stop_tasks([self._receiver, self._keeping], owner=self.node_id, timeout_s=self._connect_timeout)
        if self._connection is not None:
            try:
                async with _broker_call(f"{self.node_id}: closing the connection", self._connect_timeout):
                    await self._ack_handled()  # what is in the inbox stays taken, as if acked one by one
                    if self._ephemeral and self._channel is not None and not self._channel.is_closed:
                        await self._channel.queue_delete(self._queue_name)
                    if self._shared is None:
                        await self._connection.close()
                    elif self._queue is not None and self._consumer_tag is not None:
                        await self._queue.cancel(self._consumer_tag)  # the connection is not ours to close
            except TransportError as exc:
                log.warning("%s", exc)  # nothing left to do: the broker drops the connection anyway
            self._forget_connection()
        self._wake_receivers()

    @property
    def connected(self) -> bool:
        # Up from the moment queues and consumers are restored, not merely the socket: until
        # then nothing can be received.
        return self._link_up and not self._closed

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def _on_link_lost(self, _connection: object, _exc: BaseException | None = None) -> None:
        self._link_up = False

    def _on_reconnect(self, _connection: object) -> None:
        self._link_up = True
        self._reconnects += 1
        self._keeper.forget_bindings()
        log.info("%s: reconnected to the AMQP broker; queues and consumers restored", self.node_id)

    # -- sending --------------------------------------------------------------------------------
    def _route(self, to: str, sender: str | None = None) -> _Route:
        """Where a message for node ``to`` goes: the coordinator's through the direct exchange
        (to a hosted client's host, the client named in a header); everyone else's through a
        topic exchange, under a key that names ``sender`` (this node, or a client it hosts) as
        the sender (all its broker user may publish): up (to the coordinator, a combiner, a
        peer), or, from a combiner to its clients, down."""
        if self._declares:
            host = self._route_via(to) if self._route_via is not None else None
            if host is not None:
                return self._exchange(self._keeper.direct), check_name(host, "node id"), {RECIPIENT_HEADER: to}
            return self._exchange(self._keeper.direct), check_name(to, "node id"), None
        me = sender if sender is not None and sender in self._speaks_for else self.node_id
        if self._role is Role.COMBINER and to != self._upstream:
            return self._exchange(self._keeper.down), up_key(check_name(to, "node id"), me), None
        return self._exchange(self._keeper.up), up_key(check_name(to, "node id"), me), None

    def _codec_of(self, sender: str) -> WireCodec:
        return self._speaks_for.get(sender, self._codec)

    async def route_down(self, client: str, combiner: str) -> None:
        """The coordinator's: let ``combiner``, and from now on no other, send to ``client``
        (``amqp_keeper.TopologyKeeper.route_down``). A client whose queue is not there yet is
        logged: the combiner's sends to it fail as unroutable."""
        if self._connection is None or not self._declares:
            raise TransportError(f"{self.node_id}: only a started coordinator routes clients to combiners")
        async with _broker_call(f"{self.node_id}: routing {client} to {combiner}", self._publish_timeout):
            if not await self._keeper.route_down(self._connection, client, combiner):
                log.warning("%s: client %s has no queue on the broker to route to %s", self.node_id, client, combiner)

    async def drop_route(self, client: str, combiner: str) -> None:
        """The coordinator's: ``combiner`` may no longer send to ``client`` (the session that
        assigned it is over; ``amqp_keeper.TopologyKeeper.drop_route``)."""
        if self._connection is None or not self._declares:
            raise TransportError(f"{self.node_id}: only a started coordinator routes clients to combiners")
        async with _broker_call(f"{self.node_id}: unrouting {client} from {combiner}", self._publish_timeout):
            await self._keeper.drop_route(self._connection, client, combiner)

    async def send(self, to: str, message: Message) -> None:
        exchange, key, headers = self._route(to, message.sender)
        frame = await self._codec_of(message.sender).encode(to, message)
        await self._publish(exchange, key, frame, addressed=True, headers=headers)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        """Like ``send`` to each, but a payload shared by several messages (a round's global model)
        is encoded and claim-checked once, not once per recipient."""
        routes = [self._route(to, m.sender) for to, m in items]
        if self._speaks_for:  # each signed by its own sender's codec (a host's clients' REGISTERs)
            frames = [await self._codec_of(m.sender).encode(to, m) for to, m in items]
        else:
            frames = await self._codec.encode_many(items)

        async def one(route: _Route, frame: bytes) -> TransportError | None:
            exchange, key, headers = route
            try:
                await self._publish(exchange, key, frame, addressed=True, headers=headers)
            except TransportError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(r, f) for r, f in zip(routes, frames, strict=True))))

    async def publish(self, topic: str, message: Message) -> None:
        exchange, key = await self._topic_exchange(), broadcast_key(check_name(topic, "topic"), self.node_id)
        await self._publish(exchange, key, await self._codec.encode(topic, message), addressed=False)

    async def _publish(
        self,
        exchange: pika.AbstractExchange,
        key: str,
        frame: bytes,
        *,
        addressed: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        mode = aio_pika.DeliveryMode.PERSISTENT if addressed else aio_pika.DeliveryMode.NOT_PERSISTENT
        # user_id: RabbitMQ refuses the message unless it is this connection's login, so the
        # receiver learns who published it from the broker, not from the sender's say-so.
        message = aio_pika.Message(
            frame, content_type=CONTENT_TYPE, delivery_mode=mode, user_id=self._login, headers=dict(headers or {})
        )
        what = f"{self.node_id}: sending to {key!r}" if addressed else f"{self.node_id}: publishing to {key!r}"
        rebound = False
        async with _broker_call(what, self._publish_timeout):
            while True:
                self._check_not_closed()
                try:
                    await self._channel.ready()  # type: ignore[union-attr]  # set whenever exchange is
                    await exchange.publish(message, key, mandatory=addressed)
                    return
                except PublishError as exc:  # returned by the broker: no queue is bound to this key
                    if self._role is not Role.PEER and not self._declares and exchange.name == self._names.up_exchange:
                        # A client's (or combiner's) coordinator or combiner is there to stay: a
                        # missing binding is one being restored (amqp_keeper), so try again until
                        # publish_timeout_s. A peer that is gone, or a client not (or no longer)
                        # assigned to this combiner, is not coming back: unroutable at once.
                        log.debug("%s: no queue bound yet; retrying", what)
                        await asyncio.sleep(_RETRY_PAUSE_S)
                        continue
                    if addressed and not rebound and self._connection is not None:
                        rebound = await self._keeper.restore_binding(self._connection, key)
                        if rebound:
                            log.warning("%s: the queue of %s had lost its binding; bound it again", self.node_id, key)
                            continue
                    self.unroutable += 1
                    raise TransportError(f"{what}: the broker has no queue for node {key!r}") from exc
                except ChannelNotFoundEntity as exc:
                    # The exchange was deleted (the broker closed the channel): aio-pika reopens
                    # the channel, and a node that declares declares it again (amqp_keeper).
                    log.warning("%s: %s; retrying", what, exc)
                    await asyncio.sleep(_RETRY_PAUSE_S)
                except DeliveryError as exc:  # nacked: the recipient's queue is full (x-overflow)
                    raise TransportError(f"{what}: the recipient's queue is full; the broker refused it") from exc
                except _RETRYABLE as exc:
                    log.debug("%s: broker unavailable (%s); retrying", what, exc)
                    await asyncio.sleep(_RETRY_PAUSE_S)

    # -- subscribing ----------------------------------------------------------------------------
    async def subscribe(self, topic: str) -> None:
        what = f"{self.node_id}: subscribing to {check_name(topic, 'topic')!r}"
        async with self._subscribe_lock, _broker_call(what, self._publish_timeout):
            if topic in self._topics:
                return
            exchange = await self._topic_exchange()
            queue = await self._subscription_queue()
            await queue.bind(exchange, routing_key=broadcast_binding(topic))
            self._topics.add(topic)

    async def _subscription_queue(self) -> pika.AbstractRobustQueue:
        if self._subscriptions is None:
            assert self._channel is not None
            name = self._names.subscriber_queue(self.node_id)
            queue = await self._channel.declare_queue(name, exclusive=True, auto_delete=True)
            await queue.consume(self._on_delivery)
            self._subscriptions = queue
        return self._subscriptions

    async def _topic_exchange(self) -> pika.AbstractExchange:
        if self._keeper.broadcast is None and self._channel is not None:  # a client: look it up
            self._keeper.broadcast = await self._channel.get_exchange(self._names.broadcast_exchange, ensure=False)
        return self._exchange(self._keeper.broadcast)

    # -- receiving ------------------------------------------------------------------------------
    async def recv(self) -> Message:
        if self._inbox.empty():
            self._raise_if_stopped()
        item = await self._inbox.get()
        if isinstance(item, Message):
            return item
        self._wake_receivers()  # pass the stop on to any other waiting receiver
        self._raise_if_stopped()
        raise TransportClosed(f"transport of {self.node_id} is closed")

    async def _on_delivery(self, delivery: pika.AbstractIncomingMessage) -> None:
        # The library runs each delivery callback as its own task; queueing here and decoding in
        # one loop keeps arrival order even when a large frame is decoded in a worker thread.
        self._deliveries.put_nowait(delivery)

    async def _receive_loop(self) -> None:
        try:
            while True:
                delivery = await self._deliveries.get()
                decoded = await self._decode(delivery)
                if decoded is not None and self._sink is not None:
                    await self._sink(*decoded)  # waits while the receiver is behind
                elif decoded is not None:
                    await self._inbox.put(decoded[1])  # waits while the node is behind: backpressure
                self._unacked.append(delivery)
                if len(self._unacked) >= _ACK_BATCH or self._deliveries.empty():
                    await self._ack_handled()
        except Exception as exc:  # a bug here must surface in recv, not leave the node deaf
            log.exception("%s: the receive loop failed", self.node_id)
            self._failure = exc
            self._wake_receivers()
            if self._sink is not None:
                await self._sink(self.node_id, None)

    def _recipient(self, delivery: pika.AbstractIncomingMessage) -> tuple[str, WireCodec]:
        """Whom a delivery is for (this node, or a client it hosts: the header says which), and
        the codec that checks it: a header naming anyone else leaves it to this node's own codec,
        which refuses a frame signed with another's key."""
        if self._speaks_for:
            to = (delivery.headers or {}).get(RECIPIENT_HEADER)
            if isinstance(to, bytes):
                to = to.decode(errors="replace")
            if isinstance(to, str) and to in self._speaks_for:
                return to, self._speaks_for[to]
        return self.node_id, self._codec

    async def _decode(self, delivery: pika.AbstractIncomingMessage) -> tuple[str, Message] | None:
        to, codec = self._recipient(delivery)
        try:
            message = await codec.decode(delivery.body)
        except FedhiveError as exc:
            if delivery.redelivered:
                # Most likely a copy of a message received before a broker restart cut off its ack.
                self.duplicates += 1
                log.info("%s: dropped a redelivered message: %s", self.node_id, exc)
            else:
                self.rejected += 1
                log.warning("%s: rejected message: %s", self.node_id, exc)
            return None
        refused = self._sender_check(message.sender, delivery.user_id) if self._sender_check else None
        if refused:
            self.rejected += 1
            log.warning("%s: rejected message from %s: %s", self.node_id, message.sender, refused)
            return None
        if self._route_via is None or self._route_via(message.sender) is None:  # hosted: no queue to keep
            self._keeper.heard_from(message.sender)
        return to, message

    async def _ack_handled(self) -> None:
        """Ack the deliveries handled so far (each in the inbox, or rejected). A burst (a round's
        updates at a coordinator) takes one ack frame, not one per message: deliveries are handled
        in the order the broker numbered them on their channel, so acking the last one with
        ``multiple`` acks exactly the handled ones. (Any from before a reconnect came on a channel
        that is gone: the broker redelivers those, and the replay check drops them.)"""
        handled, self._unacked = self._unacked, []
        if not handled:
            return
        try:
            if self._shared is not None:  # other nodes' deliveries share the channel's numbering
                for delivery in handled:
                    await delivery.ack()
                return
            await handled[-1].ack(multiple=len(handled) > 1)
        except CONNECTION_EXCEPTIONS as exc:
            # The channel it came on is gone: the broker redelivers it and the replay check drops it.
            log.debug("%s: could not ack %d deliveries (%s)", self.node_id, len(handled), exc)

    # -- state ----------------------------------------------------------------------------------
    def _exchange(self, exchange: pika.AbstractExchange | None) -> pika.AbstractExchange:
        self._check_not_closed()
        if exchange is None:
            raise TransportError(f"transport of {self.node_id} is not started (use 'async with' or start())")
        return exchange

    def _check_not_closed(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport of {self.node_id} is closed")

    def _raise_if_stopped(self) -> None:
        if self._failure is not None:
            raise TransportError(f"{self.node_id}: receiving failed: {self._failure}") from self._failure
        self._check_not_closed()

    def _wake_receivers(self) -> None:
        if not self._inbox.full():
            self._inbox.put_nowait(_Stop())


async def delete_namespace(
    url: str, namespace: str, node_ids: Iterable[str], *, ca_file: str | None = None, timeout_s: float = 10.0
) -> None:
    """Delete the durable queues of ``node_ids`` and the namespace's exchanges, with any messages
    still queued: for tearing down a deployment, or a test's namespace. Missing ones are skipped."""
    names = Names(namespace)
    queues = [names.node_queue(n) for n in node_ids]
    ssl_context = ssl_context_for(url, ca_file)
    async with _broker_call(f"cannot delete AMQP namespace {namespace!r} at {redact(url)}", timeout_s):
        connection = await aio_pika.connect(url, ssl_context=ssl_context, timeout=timeout_s)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            await channel.exchange_delete(names.direct_exchange)
            await channel.exchange_delete(names.up_exchange)
            await channel.exchange_delete(names.down_exchange)
            await channel.exchange_delete(names.broadcast_exchange)
