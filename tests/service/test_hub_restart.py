"""A platform hub that crashed and started again takes back the peers that registered with the
one before it: they only beat (they are registered), and a peer held by a resumed session is
handed to that session as if it had registered with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fedhive.app.learner import Trainer
from fedhive.core.envelope import Kind
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import Hub
from fedhive.runtime.registry import PeerStatus
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.memory import MemoryNetwork


def no_training(_: SessionConfig) -> Trainer:
    raise AssertionError("not enabled in this test")


async def until(check: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Until ``check()`` holds (30 s: a deadline, not a pause; it returns as soon as it does)."""
    async with asyncio.timeout(deadline_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def test_a_restarted_hub_takes_back_its_peers_and_hands_them_to_their_session() -> None:
    network = MemoryNetwork()
    async with contextlib.AsyncExitStack() as stack:
        peers = [
            ClientNode(pid, await stack.enter_async_context(network.connect(pid)), no_training, num_examples=7,
                       persistent=True, heartbeat_interval_s=0.05)
            for pid in ("peer-1", "peer-2")
        ]  # fmt: skip
        tasks = [asyncio.create_task(p.run()) for p in peers]
        stack.push_async_callback(lambda: asyncio.gather(*tasks, return_exceptions=True))
        stack.callback(lambda: [t.cancel() for t in tasks])
        async with network.connect(COORDINATOR_ID) as first:
            hub = Hub(first, heartbeat_timeout_s=None)
            running = asyncio.create_task(hub.run())
            await until(lambda: all(p.registered for p in peers))
            running.cancel()  # the crash: this hub and its registry are gone
            await asyncio.gather(running, return_exceptions=True)

        async with network.connect(COORDINATOR_ID) as second:
            hub = Hub(second, heartbeat_timeout_s=None)
            port = hub.open_session("resumed", ["peer-1"])  # the session held peer-1 before the crash
            running = asyncio.create_task(hub.run())
            try:
                await until(lambda: "peer-1" in hub.registry and "peer-2" in hub.registry)
                registered = await asyncio.wait_for(port.recv(), 30)
                assert (registered.kind, registered.sender) == (Kind.REGISTER, "peer-1")
                assert hub.registry.get("peer-1").status is PeerStatus.TRAINING  # type: ignore[union-attr]
                assert hub.registry.get("peer-2").status is PeerStatus.ONLINE  # type: ignore[union-attr]
            finally:
                hub.stop()
                await asyncio.wait_for(running, 30)
