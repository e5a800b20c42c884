"""The transport contract: addressed sends, topic broadcasts, and one inbox per node.

Nodes (coordinator, combiner, client, peer) talk only through this interface, so the same node
code runs with 1000 virtual clients in one process (``MemoryTransport``) or across continents over
a broker (``AmqpTransport``). A transport is an async context manager: entering it connects and
declares what it needs; leaving it closes the inbox, after which ``recv`` raises ``TransportClosed``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from fedhive.core.envelope import Message
from fedhive.errors import TransportError


class TransportClosed(TransportError):
    """The transport was closed; no more messages will arrive."""


class Transport(ABC):
    node_id: str

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and declare queues; the memory transport needs nothing."""

    @abstractmethod
    async def close(self) -> None: ...

    @property
    def connected(self) -> bool:
        """False while the link to the other nodes is down (a broker restart). Nodes then suspend
        judgements that rest on hearing from peers, such as marking silent clients OFFLINE."""
        return True

    @property
    def reconnects(self) -> int:
        """How often the link came back after being down. A change since a node last looked means
        its peers went unheard for a while through no fault of theirs (even if the node was busy
        sending, and never saw ``connected`` False)."""
        return 0

    @abstractmethod
    async def send(self, to: str, message: Message) -> None:
        """Deliver to one node's inbox. Raises ``TransportError`` if it cannot be handed over."""

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        """Send several messages concurrently; one result per item: None, or why it failed."""

        async def one(to: str, message: Message) -> TransportError | None:
            try:
                await self.send(to, message)
            except TransportError as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(to, m) for to, m in items)))

    @abstractmethod
    async def publish(self, topic: str, message: Message) -> None:
        """Deliver to every node subscribed to ``topic`` (the sender included if subscribed)."""

    @abstractmethod
    async def subscribe(self, topic: str) -> None: ...

    @abstractmethod
    async def recv(self) -> Message:
        """The next message for this node; raises ``TransportClosed`` once closed."""

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except TransportClosed:
                return


class TransportWrapper(Transport):
    """A transport that hands everything to ``inner``: a wrapper that changes one thing (holds a
    message, paces a client) overrides only that. Receiving goes through ``recv`` (the base
    iteration), so a wrapper that filters what arrives overrides ``recv`` or ``__aiter__``."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.node_id = inner.node_id

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def connected(self) -> bool:
        return self.inner.connected

    @property
    def reconnects(self) -> int:
        return self.inner.reconnects

    async def send(self, to: str, message: Message) -> None:
        await self.inner.send(to, message)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        if type(self).send is TransportWrapper.send:  # sends unchanged: keep the inner one's batching
            return await self.inner.send_many(items)
        return await super().send_many(items)  # each through this wrapper's own send

    async def publish(self, topic: str, message: Message) -> None:
        await self.inner.publish(topic, message)

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def recv(self) -> Message:
        return await self.inner.recv()
