"""A networked client of a secure session trains while its keys or shares are on their way.

Over RabbitMQ a send returns once the broker confirms it, and for a persistent message that waits
for the broker's disk sync: a client that held its training until then lost that time every
round. Here the clients' transports hold each round's keys (or shares) until that client's
training has started, so a client that waits for the send before training never trains and the
session cannot end; one that sends while it trains completes every round with the exact sum.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import numpy as np

from fakes import ShiftTrainer
from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.session_config import make_config
from fedhive.transports.base import Transport, TransportWrapper
from fedhive.transports.memory import MemoryNetwork

CLIENTS = ("c1", "c2", "c3", "c4")
ROUNDS = 3


class HoldsOpening(TransportWrapper):
    """Sends a round's keys or shares only once this client's training of that round runs."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.started: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.openings = 0  # keys or shares sent, each once its round's training ran

    async def send(self, to: str, message: Message) -> None:
        step = message.envelope.body.get("secagg")
        if message.kind is Kind.UPDATE and step in ("keys", "shares"):
            await self.started[message.envelope.round].wait()
            self.openings += 1
        await self.inner.send(to, message)


class SaysWhenItTrains:
    """A trainer that tells the client's transport, from the training thread, that it runs."""

    def __init__(self, inner: ShiftTrainer, link: HoldsOpening, loop: asyncio.AbstractEventLoop) -> None:
        self.inner, self.link, self.loop = inner, link, loop

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.loop.call_soon_threadsafe(self.link.started[config.round].set)
        return self.inner.fit(params, config, progress)

    def evaluate(self, params: Params) -> EvalResult:
        return self.inner.evaluate(params)


async def test_training_starts_before_the_keys_or_shares_are_sent() -> None:
    config = make_config(
        rounds=ROUNDS,
        min_clients=len(CLIENTS),
        secure_aggregation=True,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=30,
        round_timeout_s=60,
    )
    net = MemoryNetwork()
    coordinator = Coordinator(config, net.connect(COORDINATOR_ID), ShiftTrainer(0).initial_params(0))
    links: dict[str, HoldsOpening] = {}
    tasks = []
    loop = asyncio.get_running_loop()
    for i, cid in enumerate(CLIENTS, start=1):
        link = links[cid] = HoldsOpening(net.connect(cid))
        trainer = SaysWhenItTrains(ShiftTrainer(0.01 * i), link, loop)
        node = ClientNode(cid, link, lambda _c, t=trainer: t, num_examples=10)  # type: ignore[misc]
        tasks.append(asyncio.create_task(node.run()))
    try:
        async with asyncio.timeout(120):
            result = await coordinator.run()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert result.rounds == ROUNDS
    # Every client's keys and shares went out, each after its training started: round 1 keys,
    # then shares once the roster came; later rounds shares at once (keys advertised ahead).
    assert {c: link.openings for c, link in links.items()} == {c: ROUNDS + 1 for c in CLIENTS}
    # FedAvg of equal weights: each round moves the model by the mean shift, 0.025.
    np.testing.assert_allclose(result.params["w"], np.full(4, 0.025 * ROUNDS), atol=1e-6)
