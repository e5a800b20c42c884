"""What a node's AMQP transport puts on the broker, and keeps there (layout: ``amqp_topology``).

Two roles, because sites do not trust each other (docs/security.md, "Broker isolation"):

- a node that *declares* (coordinator, combiner, peer) declares the exchanges and its own queue,
  binds it, declares and binds the queues of the clients it provisioned (their broker users may
  not), and keeps all of it: every ``interval_s`` it checks that the exchanges are there and binds
  again (a no-op when nothing changed). Exchanges deleted by someone else are declared again and
  every queue it knows of is bound again, so the round goes on. A deleted queue cancels its
  consumer, on which aio-pika reconnects and declares, binds and consumes it again.
- a *client* only checks that its queue and the up exchange exist. A client whose broker login
  may configure (a single shared login, for local and development use) creates what is missing
  itself; a least-privilege client user waits (bounded) for the coordinator to create it.

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
from fedhive.transports.amqp_topology import Names, up_binding

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
    declares and binds for them (the clients it provisioned broker users for)."""

    def __init__(
        self,
        names: Names,
        node_id: str,
        arguments: dict[str, int | str],
        *,
        downstream: Callable[[], Iterable[str]] | None = None,
        interval_s: float = 2.0,
        wait_s: float = 120.0,
    ) -> None:
        self._names = names
        self._node_id = node_id
        self._queue_name = names.node_queue(node_id)
        self._arguments = arguments
        self._downstream = downstream or (lambda: ())
        self._interval_s = interval_s
        self.wait_s = wait_s
        self._heard: set[str] = set()  # senders whose queues exist: bound again after a loss
        self._bound: set[str] = set()
        self.direct: pika.AbstractExchange | None = None
        self.up: pika.AbstractExchange | None = None
        self.topic: pika.AbstractExchange | None = None

    # -- a node that declares ----------------------------------------------------------------
    async def declare(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        await self._declare_exchanges(channel)
        queue = await channel.declare_queue(self._queue_name, durable=True, arguments=self._arguments)
        # Bound by exchange name, so that binding again never grows aio-pika's list of bindings
        # to restore after a reconnect.
        await queue.bind(self._names.direct_exchange, routing_key=self._node_id)
        await queue.bind(self._names.up_exchange, routing_key=up_binding(self._node_id))
        async with _probe(connection) as probe:
            await self._bind_downstream(probe)
        return queue

    async def _declare_exchanges(self, channel: pika.AbstractRobustChannel) -> None:
        self.direct = await channel.declare_exchange(self._names.direct_exchange, "direct", durable=True)
        self.up = await channel.declare_exchange(self._names.up_exchange, "topic", durable=True)
        self.topic = await channel.declare_exchange(self._names.topic_exchange, "direct", durable=True)

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
            names = (self._names.direct_exchange, self._names.up_exchange, self._names.topic_exchange)
            missing = [name for name in names if not await probe.has_exchange(name)]
            if missing:
                log.warning("%s: exchange(s) %s disappeared; declaring them again", self._node_id, ", ".join(missing))
                await self._declare_exchanges(channel)
                self._bound.clear()
            if not await probe.has_queue(self._queue_name):
                # aio-pika restores it once the broker cancels the consumer; until then, messages
                # for this node must not be refused as unroutable.
                log.warning("%s: its queue %s disappeared; declaring it again", self._node_id, self._queue_name)
                await probe.declare_queue(self._queue_name, self._arguments)
            # Binding again is a no-op when the binding exists, and undoes an unbind.
            await probe.bind(self._queue_name, self._names.direct_exchange, self._node_id)
            await probe.bind(self._queue_name, self._names.up_exchange, up_binding(self._node_id))
            await self._bind_downstream(probe)

    async def restore_binding(self, connection: pika.AbstractRobustConnection, node: str) -> bool:
        """Bind the queue of ``node`` (a client this node provisioned or has heard from) again,
        after a send to it found nothing bound: whoever re-created the direct exchange (aio-pika,
        after a send to it failed, or ``keep``) did not know its bindings. False if ``node`` is
        unknown or its queue does not exist."""
        if node not in self._heard and node not in set(self._downstream()):
            return False
        self._bound.discard(node)
        async with _probe(connection) as probe:
            await self._bind_downstream(probe)
        return node in self._bound

    async def _bind_downstream(self, probe: _Probe) -> None:
        provisioned = set(self._downstream())
        for node in sorted((provisioned | self._heard) - self._bound - {self._node_id}):
            queue = self._names.node_queue(node)
            if node in provisioned:
                await probe.declare_queue(queue, self._arguments)
            if await probe.bind(queue, self._names.direct_exchange, node):
                self._bound.add(node)

    # -- a client ----------------------------------------------------------------------------
    async def attach(
        self, connection: pika.AbstractRobustConnection, channel: pika.AbstractRobustChannel
    ) -> pika.AbstractRobustQueue:
        """Check (passively) that this client's queue and the up exchange exist, creating them
        when the login may, else waiting for the coordinator; raises ``TransportError`` after
        ``wait_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        may_configure, told = True, False
        while True:
            async with _probe(connection) as probe:
                ready = await probe.has_exchange(self._names.up_exchange) and await probe.has_queue(self._queue_name)
                if not ready and may_configure:
                    may_configure = await self._create_own(probe)
                    ready = may_configure
            if ready:
                break
            if loop.time() >= deadline:
                raise TransportError(
                    f"{self._node_id}: the broker has no queue {self._queue_name} after {self.wait_s:g} s; its broker "
                    "user may not create one: start the coordinator (it creates the queues of the clients "
                    "'fedhive clients add --broker-user' made), and check the namespace"
                )
            if not told:
                log.info("%s: waiting for the coordinator to create queue %s", self._node_id, self._queue_name)
                told = True
            await asyncio.sleep(_WAIT_PAUSE_S)
        # Not declared through the channel (even passively): aio-pika would declare it again on
        # every channel restore, and a restore while the exchange is gone would leave the channel
        # closed for good. A publish while it is gone closes the channel, which is reopened, and
        # is retried until the coordinator has declared it again.
        self.up = await channel.get_exchange(self._names.up_exchange, ensure=False)
        return await channel.declare_queue(self._queue_name, passive=True)

    async def _create_own(self, probe: _Probe) -> bool:
        """With a login that may configure (a shared development login): create this client's
        queue and what it needs, as the coordinator would. False when the login may not."""
        try:
            ch = await probe.channel()
            await ch.exchange_declare(exchange=self._names.direct_exchange, exchange_type="direct", durable=True)
            await ch.exchange_declare(exchange=self._names.up_exchange, exchange_type="topic", durable=True)
            await probe.declare_queue(self._queue_name, self._arguments)
            await probe.bind(self._queue_name, self._names.direct_exchange, self._node_id)
        except ChannelAccessRefused:
            return False
        return True
