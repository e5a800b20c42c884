"""Heartbeats both ways, on the memory transport with a link that can be cut (a broker outage)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from fakes import ShiftTrainer
from fedhive.app.learner import Trainer
from fedhive.core.bodies import RegisteredBody
from fedhive.core.envelope import Message
from fedhive.errors import SessionFailed, TransportError
from fedhive.runtime import events as ev
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.base import Transport
from fedhive.transports.memory import MemoryNetwork


class Link:
    """The broker, as far as connectivity goes: while it is down every send waits for it."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.up.set()
        self.down = asyncio.Event()
        self.reconnects = 0
        self.cut_in_send_of: str | None = None

    def cut(self) -> None:
        self.up.clear()
        self.down.set()

    def restore(self) -> None:
        self.reconnects += 1
        self.up.set()


class LinkedTransport(Transport):
    def __init__(self, inner: Transport, link: Link) -> None:
        self.node_id = inner.node_id
        self.inner = inner
        self.link = link

    @property
    def connected(self) -> bool:
        return self.link.up.is_set()

    @property
    def reconnects(self) -> int:
        return self.link.reconnects

    async def send(self, to: str, message: Message) -> None:
        if self.link.cut_in_send_of == self.node_id:  # the outage begins while this send is under way
            self.link.cut_in_send_of = None
            self.link.cut()
        await self.link.up.wait()  # as AmqpTransport does: wait for the broker, then send
        await self.inner.send(to, message)

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        return [await self._try(to, m) for to, m in items]

    async def _try(self, to: str, message: Message) -> TransportError | None:
        await self.send(to, message)
        return None

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, topic: str, message: Message) -> None:
        await self.inner.publish(topic, message)

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def recv(self) -> Message:
        return await self.inner.recv()


class Statuses:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, e: ev.ClientStatusChanged) -> None:
        self.seen.append(e.status)
        self.changed.set()

    async def wait_for(self, expected: list[str]) -> None:
        while self.seen != expected:
            self.changed.clear()
            await self.changed.wait()


def coordinator_on(net: MemoryNetwork, link: Link) -> Coordinator:
    # min_clients=2 with one client: the session waits, and the coordinator keeps checking heartbeats
    config = SessionConfig(min_clients=2, heartbeat_interval_s=0.05, heartbeat_timeout_s=0.3)
    transport = LinkedTransport(net.connect(COORDINATOR_ID), link)
    return Coordinator(config, transport, ShiftTrainer(0).initial_params(0))


def client_on(net: MemoryNetwork, link: Link, **kw: float) -> ClientNode:
    """c1, a client that beats every 0.05 s (the interval its coordinator announces)."""
    return ClientNode("c1", LinkedTransport(net.connect("c1"), link), lambda _c: ShiftTrainer(1), num_examples=5, **kw)


async def test_an_outage_while_the_coordinator_waits_on_a_send_marks_nobody_offline() -> None:
    net, link = MemoryNetwork(), Link()
    coordinator, client = coordinator_on(net, link), client_on(net, link)
    statuses = Statuses()
    coordinator.bus.on(ev.ClientStatusChanged, statuses)
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        session = tg.create_task(coordinator.run())
        serving = tg.create_task(client.run())
        await statuses.wait_for(["ONLINE"])
        # The link drops while the coordinator sends its heartbeat: its loop waits in that send and
        # never sees the link down; c1's heartbeats wait too.
        link.cut_in_send_of = COORDINATOR_ID
        await link.down.wait()
        await asyncio.sleep(1.0)  # the outage (a fault's length, not a wait for readiness): 3 timeouts
        link.restore()
        await asyncio.sleep(0.5)  # c1's heartbeats come through again
        assert statuses.seen == ["ONLINE"]  # its silence was the link's fault, not c1's

        serving.cancel()  # now c1 really goes away
        await statuses.wait_for(["ONLINE", "OFFLINE"])
        back = tg.create_task(client_on(net, link).run())  # ... and comes back: a new process, same id
        await statuses.wait_for(["ONLINE", "OFFLINE", "ONLINE"])
        back.cancel()
        session.cancel()


async def test_a_client_gives_up_on_a_silent_coordinator_but_not_during_an_outage() -> None:
    net, link = MemoryNetwork(), Link()
    coordinator, client = coordinator_on(net, link), client_on(net, link, coordinator_timeout_s=0.4)
    registered = asyncio.Event()
    client.bus.on(ev.ClientRegistered, lambda _e: registered.set())
    async with asyncio.timeout(10):
        session = asyncio.create_task(coordinator.run())
        serving = asyncio.create_task(client.run())
        await registered.wait()
        link.cut()
        await asyncio.sleep(1.0)  # longer than the client's patience, but the link was down
        link.restore()
        await asyncio.sleep(0.3)
        assert not serving.done()
        session.cancel()  # the coordinator dies
        await asyncio.gather(session, return_exceptions=True)
        with pytest.raises(SessionFailed, match="no message from the coordinator"):
            await serving


async def test_a_client_cut_off_goes_offline_and_is_online_again_when_heard() -> None:
    net, coordinator_link, client_link = MemoryNetwork(), Link(), Link()
    coordinator, client = coordinator_on(net, coordinator_link), client_on(net, client_link)
    statuses = Statuses()
    coordinator.bus.on(ev.ClientStatusChanged, statuses)
    async with asyncio.timeout(10):
        session = asyncio.create_task(coordinator.run())
        serving = asyncio.create_task(client.run())
        await statuses.wait_for(["ONLINE"])
        client_link.cut()  # only c1's side: the coordinator hears nothing from it
        await statuses.wait_for(["ONLINE", "OFFLINE"])
        client_link.restore()  # its heartbeats get through again, without a new registration
        await statuses.wait_for(["ONLINE", "OFFLINE", "ONLINE"])
        for task in (serving, session):
            task.cancel()
        await asyncio.gather(serving, session, return_exceptions=True)


@pytest.mark.parametrize(("announced", "gives_up_after"), [(2.0, 2.0), (86_400.0, 20.0)])
def test_a_combiners_client_follows_its_announced_timeout_only_to_leave_sooner(
    announced: float, gives_up_after: float
) -> None:
    """A combiner announces how long it waits for its clients; its clients give it up after as
    long, so that they move to another combiner, but never later than their own timeout: a
    combiner announcing a day cannot hold its clients while it is silent."""
    net = MemoryNetwork()
    node = ClientNode(
        "c1", net.connect("c1"), lambda _: _no_trainer(), num_examples=1, coordinator_timeout_s=20.0,
        follow_announced_timeout=True, heartbeat_interval_s=None,
    )  # fmt: skip
    node._mark_registered(RegisteredBody.model_construct(heartbeat_interval_s=0.1, heartbeat_timeout_s=announced))
    node._last_heard = time.monotonic() - (gives_up_after - 0.5)
    assert node._coordinator_silence() is None
    node._last_heard = time.monotonic() - (gives_up_after + 0.5)
    assert node._coordinator_silence() is not None


def _no_trainer() -> Trainer:
    raise AssertionError("no training in this test")
