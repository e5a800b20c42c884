"""In-process transport: nodes in one event loop exchange messages through bounded queues.

By default a message is handed over as the very object the sender built (its ``Params`` by
reference: no serialisation, no copy), which is what makes simulating 1000 clients cheap. With
``codec_for`` set, every message goes through the same signed-frame encoding as the AMQP transport
(``WireCodec``), so tests exercise signing, replay protection and payload checks without a broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence

from fedhive.core.envelope import Message
from fedhive.errors import FedhiveError, TransportError
from fedhive.transports.base import Transport, TransportClosed
from fedhive.transports.wire_codec import WireCodec

log = logging.getLogger("fedhive.transport")

_CLOSED = object()


class MemoryNetwork:
    """The hub. ``connect(node_id)`` gives a node its transport."""

    def __init__(self, *, codec_for: Callable[[str], WireCodec] | None = None, inbox_size: int = 0) -> None:
        self._nodes: dict[str, MemoryTransport] = {}
        self._topics: dict[str, set[str]] = defaultdict(set)
        self._codec_for = codec_for
        self._inbox_size = inbox_size
        self.dropped = 0  # messages for nodes that are not (or no longer) connected

    def connect(self, node_id: str, *, aliases: Sequence[str] = ()) -> MemoryTransport:
        """A transport for ``node_id``. Messages sent to any of ``aliases`` land in the same inbox:
        one node (a ``ClientHost``) then answers for many addresses without a queue each."""
        codec = self._codec_for(node_id) if self._codec_for else None
        return MemoryTransport(self, node_id, codec, self._inbox_size, tuple(aliases))

    def _attach(self, node: MemoryTransport) -> None:
        for address in node.addresses:
            self._nodes[address] = node

    def _detach(self, node: MemoryTransport) -> None:
        for address in node.addresses:
            if self._nodes.get(address) is node:
                del self._nodes[address]
        for members in self._topics.values():
            members.discard(node.node_id)

    async def deliver(self, to: str, item: object, *, must_exist: bool = True) -> None:
        node = self._nodes.get(to)
        if node is None:
            self.dropped += 1
            if must_exist:  # as the AMQP transport does for a node the broker has no queue for
                raise TransportError(f"no node {to!r} is connected")
            return
        inbox = node._inbox
        if inbox.full():
            await inbox.put(item)  # a bounded inbox that is full: the sender waits (backpressure)
        else:
            inbox.put_nowait(item)  # the common case, without a coroutine per message

    async def deliver_raw(self, to: str, frame: bytes) -> None:
        """Hand a raw frame to a node as if it came off the wire (tests of forged input)."""
        await self.deliver(to, frame)


class MemoryTransport(Transport):
    def __init__(
        self,
        network: MemoryNetwork,
        node_id: str,
        codec: WireCodec | None,
        inbox_size: int,
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.node_id = node_id
        self.addresses = (node_id, *aliases)
        self._network = network
        self._codec = codec
        self._inbox: asyncio.Queue[object] = asyncio.Queue(inbox_size)
        self._closed = False
        network._attach(self)
        self.rejected = 0

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._detach(self)
            self._inbox.put_nowait(_CLOSED) if not self._inbox.full() else None

    async def send(self, to: str, message: Message) -> None:
        self._check_open()
        if self._codec is None:
            node = self._network._nodes.get(to)
            if node is not None and not node._inbox.full():
                node._inbox.put_nowait(message)  # the common case, without a coroutine per message
                return
            await self._network.deliver(to, message)
            return
        await self._network.deliver(to, await self._codec.encode(to, message))

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        # In one process a send never waits on a network round trip, so sending in turn is as fast
        # as sending concurrently and saves a task per message.
        results: list[TransportError | None] = []
        for to, message in items:
            try:
                await self.send(to, message)
                results.append(None)
            except TransportError as exc:
                results.append(exc)
        return results

    async def publish(self, topic: str, message: Message) -> None:
        self._check_open()
        item: object = message if self._codec is None else await self._codec.encode(topic, message)
        for member in sorted(self._network._topics.get(topic, ())):
            await self._network.deliver(member, item, must_exist=False)

    async def subscribe(self, topic: str) -> None:
        self._check_open()
        self._network._topics[topic].add(self.node_id)

    async def recv(self) -> Message:
        while True:
            if self._closed and self._inbox.empty():
                raise TransportClosed(f"transport of {self.node_id} is closed")
            inbox = self._inbox
            item = inbox.get_nowait() if inbox.qsize() else await inbox.get()
            if item is _CLOSED:
                raise TransportClosed(f"transport of {self.node_id} is closed")
            if isinstance(item, Message):
                return item
            assert isinstance(item, bytes)
            if self._codec is None:
                self.rejected += 1
                log.warning("%s: dropped a raw frame: this network does not decode frames", self.node_id)
                continue
            try:
                return await self._codec.decode(item)
            except FedhiveError as exc:
                self.rejected += 1
                log.warning("%s: rejected message: %s", self.node_id, exc)

    def __aiter__(self) -> AsyncIterator[Message]:
        return _Messages(self)  # a plain iterator: cheaper per message than an async generator

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"transport of {self.node_id} is closed")


class _Messages:
    """``async for message in transport``: the next message until the transport is closed."""

    __slots__ = ("_transport",)

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport

    def __aiter__(self) -> _Messages:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._transport.recv()
        except TransportClosed:
            raise StopAsyncIteration from None
