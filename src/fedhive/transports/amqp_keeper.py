"""What a node's AMQP transport puts on the broker, and keeps there (layout: ``amqp_topology``).

Because sites do not trust each other (docs/security.md, "Broker isolation"), what a node does
depends on its ``Role``:

- the *coordinator* declares every exchange and its own queue, binds it, declares and binds the
  queues of the clients and combiners it provisioned (their broker users may not), binds a
  client's queue to the down exchange under the key of the combiner it assigns the client to
  (``route_down``), and keeps all of it: every ``interval_s`` it checks that the exchanges are
  there and binds again (a no-op when nothing changed). Exchanges deleted by someone else are
  declared again and every queue it knows of is bound again, so the round goes on. A deleted
  queue cancels its consumer, on which aio-pika reconnects and declares, binds and consumes it
  again.
- a *client* or *combiner* only checks that its queue and the exchanges it publishes to exist.
  One whose broker login may configure (a single shared login, for local and development use)
  creates what is missing itself; a least-privilege user waits (bounded) for the coordinator.
- a *peer* waits for the exchanges (declared by the federation's operator, or by itself with a
  login that may), declares and binds its own queue (a peer's user may configure only queues
  named after its login), and keeps that queue and binding.

Questions whose answer may be "no" are asked on a throwaway channel (``_Probe``): the broker
closes the channel a missing exchange or queue was asked about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from aio_pika import abc as pika
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelAccessRefused

from fedhive.errors import TransportError
from fedhive.transports.amqp_topology import Names, Role, up_binding, up_key

log = logging.getLogger("fedhive.transport")

_WAIT_PAUSE_S = 1.0


class _Probe:
    """A plain channel (not restored by aio-pika) for questions the broker answers by closing it."""

    def __init__(self, connection: pika.AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None

    async def channel(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            underlay = self._connection.transport.connection  # type: ignore[union-attr]
            self._channel = await underlay.channel(publisher_confirms=False)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def has_exchange(self, name: str) -> bool:
        try:
            await (await self.channel()).exchange_declare(exchange=name, passive=True)
        except ChannelNotFoundEntity:
            return False
        return True

    async def has_queue(self, name: str) -> bool:
        try:
            await (await self.channel()).queue_declare(queue=name, passive=True)
        except ChannelNotFoundEntity:
            return False
        return True

    async def declare_queue(self, name: str, arguments: dict[str, int | str]) -> None:
        await (await self.channel()).queue_declare(queue=name, durable=True, arguments=dict(arguments.items()))

    async def bind(self, queue: str, exchange: str, key: str) -> bool:
        """Bind; False when the queue (or exchange) does not exist."""
        try:
            await (await self.channel()).queue_bind(queue=queue, exchange=exchange, routing_key=key)
        except ChannelNotFoundEntity:
            return False
        return True

    async def unbind(self, queue: str, exchange: str, key: str) -> None:
        """Unbind; nothing to do when the queue (or exchange) does not exist."""
        with contextlib.suppress(ChannelNotFoundEntity):
            await (await self.channel()).queue_unbind(queue=queue, exchange=exchange, routing_key=key)

    async def declare_exchanges(self, kinds: dict[str, str]) -> bool:
        """Declare exchanges (name -> type); False when the login may not."""
        try:
            for name, kind in kinds.items():
                await (await self.channel()).exchange_declare(exchange=name, exchange_type=kind, durable=True)
        except ChannelAccessRefused:
            return False
        return True


@contextlib.asynccontextmanager
async def _probe(connection: pika.AbstractRobustConnection) -> AsyncIterator[_Probe]:
    probe = _Probe(connection)
    try:
        yield probe
    finally:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await probe.close()


class TopologyKeeper:
    """The exchanges and queues of one node. ``downstream``: the nodes whose queues this node
    declares and binds for them (the clients and combiners it provisioned broker users for);
    ``relays``: those of them that are combiners, whose queues it binds to the up exchange too."""

    def __init__(
        self,
        names: Names,
        node_id: str,
        arguments: dict[str, int | str],
        *,
        role: Role = Role.COORDINATOR,
        downstream: Callable[[], Iterable[str]] | None = None,
        relays: Callable[[], Iterable[str]] | None = None,
        interval_s: float = 2.0,
        wait_s: float = 120.0,
    ) -> None:
        self._names = names
        self._node_id = node_id
        self._role = role
        self._queue_name = names.node_queue(node_id)
        self._arguments = arguments
        self._downstream = downstream or (lambda: ())
        self._relays = relays or (lambda: ())
        self._interval_s = interval_s
        self.wait_s = wait_s
        self._heard: set[str] = set()  # senders whose queues exist: bound again after a loss
        self._routes: dict[str, str] = {}  # client -> the combiner it is assigned to (route_down)
        self._bound: set[tuple[str, str, str]] = set()  # (queue, exchange, key) bound by this node
        self.direct: pika.AbstractExchange | None = None
        self.up: pika.AbstractExchange | None = None
        self.down: pika.AbstractExchange | None = None
        self.broadcast: pika.AbstractExchange | None = None

    @property
    def keeps(self) -> bool:
        """Whether this node checks and restores its part of the broker while it runs."""
        return self._role in (Role.COORDINATOR, Role.PEER)

    def _kinds(self) -> dict[str, str]:
        """The exchanges this node needs (name -> type): all of them for the coordinator, those it
        publishes to (and binds from) for the others."""
        n = self._names
        every = {n.direct_exchange: "direct", n.up_exchange: "topic", n.down_exchange: "topic"}
        every[n.broadcast_exchange] = "topic"
        needed = {
            Role.COORDINATOR: list(every),
            Role.CLIENT: [n.up_exchange],
            Role.COMBINER: [n.up_exchange, n.down_exchange],
            Role.PEER: [n.up_exchange, n.broadcast_exchange],
        }[self._role]
        return {name: every[name] for name in needed}

    def _own_bindings(self) -> list[tuple[str, str]]:
        """(exchange, key) of this node's own queue: the coordinator and combiners take what is
        sent to them directly and from the up exchange, a client only directly (and, through the
        down exchange, what the coordinator routes to it), a peer only from the up exchange."""
        n, me = self._names, self._node_id
        direct, up = (n.direct_exchange, me), (n.up_exchange, up_binding(me))
        return {Role.CLIENT: [direct], Role.PEER: [up]}.get(self._role, [direct, up])

    async def set_up(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        """This node's queue, ready to consume, with what its role declares or waits for."""
        if self._role is Role.COORDINATOR:
            return await self.declare(connection, channel)
        if self._role is Role.PEER:
            return await self._declare_peer(connection, channel)
        return await self.attach(connection, channel)

    # -- the coordinator -------------------------------------------------------------------
    async def declare(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        await self._declare_exchanges(channel)
        queue = await channel.declare_queue(self._queue_name, durable=True, arguments=self._arguments)
        # Bound by exchange name, so that binding again never grows aio-pika's list of bindings
        # to restore after a reconnect.
        for exchange, key in self._own_bindings():
            await queue.bind(exchange, routing_key=key)
        async with _probe(connection) as probe:
            await self._bind_downstream(probe)
        return queue

    async def _declare_exchanges(self, channel: pika.AbstractRobustChannel) -> None:
        n = self._names
        made = {name: await channel.declare_exchange(name, kind, durable=True) for name, kind in self._kinds().items()}
        self.direct, self.up = made[n.direct_exchange], made[n.up_exchange]
        self.down, self.broadcast = made[n.down_exchange], made[n.broadcast_exchange]

    def heard_from(self, node_id: str) -> None:
        self._heard.add(node_id)

    def forget_bindings(self) -> None:
        """After a reconnect: bind every known queue again on the next check."""
        self._bound.clear()

    async def keep(self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel) -> None:
        """Check and restore every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            if connection.is_closed:
                continue  # aio-pika is reconnecting; it declares everything again itself
            try:
                await self._check(connection, channel)
            except CONNECTION_EXCEPTIONS as exc:
                log.debug("%s: checking the broker's exchanges and queues failed: %s", self._node_id, exc)

    async def _check(self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel) -> None:
        async with _probe(connection) as probe:
            missing = [name for name in self._kinds() if not await probe.has_exchange(name)]
            if missing and self._role is Role.COORDINATOR:
                log.warning("%s: exchange(s) %s disappeared; declaring them again", self._node_id, ", ".join(missing))
                await self._declare_exchanges(channel)
            elif missing:  # a peer: its login may not declare them, unless it is a development login
                if await probe.declare_exchanges({name: self._kinds()[name] for name in missing}):
                    log.warning(
                        "%s: exchange(s) %s disappeared; declared them again", self._node_id, ", ".join(missing)
                    )
                else:
                    log.warning("%s: exchange(s) %s disappeared; waiting for them", self._node_id, ", ".join(missing))
            if missing:
                self._bound.clear()
            if not await probe.has_queue(self._queue_name):
                # aio-pika restores it once the broker cancels the consumer; until then, messages
                # for this node must not be refused as unroutable.
                log.warning("%s: its queue %s disappeared; declaring it again", self._node_id, self._queue_name)
                await probe.declare_queue(self._queue_name, self._arguments)
            # Binding again is a no-op when the binding exists, and undoes an unbind.
            for exchange, key in self._own_bindings():
                await probe.bind(self._queue_name, exchange, key)
            if self._role is Role.COORDINATOR:
                await self._bind_downstream(probe)

    async def restore_binding(self, connection: pika.AbstractRobustConnection, node: str) -> bool:
        """Bind the queue of ``node`` (a client this node provisioned or has heard from) again,
        after a send to it found nothing bound: whoever re-created the direct exchange (aio-pika,
        after a send to it failed, or ``keep``) did not know its bindings. False if ``node`` is
        unknown or its queue does not exist."""
        provisioned, relays = set(self._downstream()), set(self._relays())
        if node not in self._heard and node not in provisioned | relays:
            return False
        n = self._names
        queue = n.node_queue(node)
        binding = (queue, n.direct_exchange, node)
        wanted = [binding]
        if node in relays:
            wanted.append((queue, n.up_exchange, up_binding(node)))
        if node in self._routes:
            wanted.append((queue, n.down_exchange, up_key(node, self._routes[node])))
        # This node's bindings only: a scan of every known node per unroutable send (each new
        # client's first REGISTERED) made registering 10,000 clients quadratic; the others are
        # bound by ``keep``'s next check or by their own first send.
        async with _probe(connection) as probe:
            for b in wanted:
                self._bound.discard(b)
                await self._bind(probe, b, declare=node in provisioned | relays)
        return binding in self._bound

    async def route_down(self, connection: pika.AbstractRobustConnection, client: str, combiner: str) -> bool:
        """Let ``combiner`` (and no other) reach ``client`` through the down exchange: bind the
        client's queue under CLIENT.COMBINER, and unbind it from the combiner it had before.
        False when the client's queue does not exist (yet)."""
        queue, down = self._names.node_queue(client), self._names.down_exchange
        previous = self._routes.get(client)
        self._routes[client] = combiner
        async with _probe(connection) as probe:
            if previous is not None and previous != combiner:
                old = (queue, down, up_key(client, previous))
                self._bound.discard(old)
                await probe.unbind(*old)
            return await self._bind(probe, (queue, down, up_key(client, combiner)))

    async def drop_route(self, connection: pika.AbstractRobustConnection, client: str, combiner: str) -> None:
        """Close the way ``route_down`` opened from ``combiner`` to ``client`` (its session is
        over); nothing to do when the client was routed to another combiner since."""
        if self._routes.get(client) != combiner:
            return
        del self._routes[client]
        binding = (self._names.node_queue(client), self._names.down_exchange, up_key(client, combiner))
        self._bound.discard(binding)
        async with _probe(connection) as probe:
            await probe.unbind(*binding)

    async def _bind_downstream(self, probe: _Probe) -> None:
        n = self._names
        provisioned, relays = set(self._downstream()), set(self._relays())
        wanted: list[tuple[str, tuple[str, str, str]]] = []
        for node in sorted((provisioned | relays | self._heard) - {self._node_id}):
            queue = n.node_queue(node)
            wanted.append((node, (queue, n.direct_exchange, node)))
            if node in relays:  # a combiner: its clients send to it through the up exchange
                wanted.append((node, (queue, n.up_exchange, up_binding(node))))
        for client, combiner in sorted(self._routes.items()):
            wanted.append((client, (n.node_queue(client), n.down_exchange, up_key(client, combiner))))
        for node, binding in wanted:
            if binding not in self._bound:
                await self._bind(probe, binding, declare=node in provisioned | relays)

    async def _bind(self, probe: _Probe, binding: tuple[str, str, str], *, declare: bool = False) -> bool:
        if declare:
            await probe.declare_queue(binding[0], self._arguments)
        if await probe.bind(*binding):
            self._bound.add(binding)
            return True
        return False

    # -- a client or combiner --------------------------------------------------------------
    async def attach(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        """Check (passively) that this node's queue and the exchanges it publishes to exist,
        creating them when the login may, else waiting for the coordinator; raises
        ``TransportError`` after ``wait_s``."""
        await self._wait(connection, with_queue=True)
        await self._look_up_exchanges(channel)
        return await channel.declare_queue(self._queue_name, passive=True)

    async def _look_up_exchanges(self, channel: pika.AbstractRobustChannel) -> None:
        # Not declared through the channel (even passively): aio-pika would declare them again on
        # every channel restore, and a restore while one is gone would leave the channel closed
        # for good. A publish while it is gone closes the channel, which is reopened, and is
        # retried until it has been declared again.
        n = self._names
        found = {name: await channel.get_exchange(name, ensure=False) for name in self._kinds()}
        self.up = found.get(n.up_exchange)
        self.down = found.get(n.down_exchange)
        self.broadcast = found.get(n.broadcast_exchange)

    async def _wait(self, connection: pika.AbstractRobustConnection, *, with_queue: bool) -> None:
        """Until the exchanges this node needs (and, ``with_queue``, its queue) exist; what is
        missing is created when the login may."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        may_configure, told = True, False
        what = f"queue {self._queue_name}" if with_queue else "the exchanges of namespace " + self._names.namespace
        while True:
            async with _probe(connection) as probe:
                ready = all([await probe.has_exchange(name) for name in self._kinds()])
                if ready and with_queue:
                    ready = await probe.has_queue(self._queue_name)
                if not ready and may_configure:
                    may_configure = await self._create_own(probe, with_queue)
                    ready = may_configure
            if ready:
                return
            if loop.time() >= deadline:
                raise TransportError(
                    f"{self._node_id}: the broker has no {what} after {self.wait_s:g} s; its broker user may not "
                    "create it: start the coordinator (it creates the queues of the clients and combiners "
                    "'fedhive clients add --broker-user' made; for peers, 'fedhive peers add' declares the "
                    "exchanges), and check the namespace"
                )
            if not told:
                log.info("%s: waiting for %s to be created", self._node_id, what)
                told = True
            await asyncio.sleep(_WAIT_PAUSE_S)

    async def _create_own(self, probe: _Probe, with_queue: bool) -> bool:
        """With a login that may configure (a shared development login): create this node's
        exchanges (and queue) as the coordinator would. False when the login may not."""
        kinds = self._kinds()
        if with_queue and self._role is not Role.PEER:
            kinds[self._names.direct_exchange] = "direct"
        if not await probe.declare_exchanges(kinds):
            return False
        if not with_queue:
            return True
        try:
            await probe.declare_queue(self._queue_name, self._arguments)
            for exchange, key in self._own_bindings():
                await probe.bind(self._queue_name, exchange, key)
        except ChannelAccessRefused:
            return False
        return True

    # -- a peer ----------------------------------------------------------------------------
    async def _declare_peer(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        """Wait for the exchanges, then declare and bind its own queue (on the robust channel:
        aio-pika declares and binds it again after a reconnect, which the peer's user may)."""
        await self._wait(connection, with_queue=False)
        await self._look_up_exchanges(channel)
        queue = await channel.declare_queue(self._queue_name, durable=True, arguments=self._arguments)
        for exchange, key in self._own_bindings():
            await queue.bind(exchange, routing_key=key)
        return queue
