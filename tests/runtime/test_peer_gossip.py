"""Gossip averaging between peers on the memory transport: each peer averages its own model with the
models of the peers that picked it, by a rule every peer computes alike."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fakes import ShiftTrainer, SlowShift
from fedhive.errors import ConfigError
from fedhive.runtime.peer_gossip import GossipPeer
from fedhive.runtime.peer_rounds import new_peer_id, peer_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.memory import MemoryNetwork

FAST = {"beat_s": 0.05, "peer_timeout_s": 0.4}
SHIFTS = [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)]  # (shift per round, examples)


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {"rounds": 3, "round_timeout_s": 5.0, "registration_timeout_s": 10.0}
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


def gossipers(gossip: int, config: SessionConfig, trainers: list[ShiftTrainer]) -> list[GossipPeer]:
    net = MemoryNetwork(codec_for=lambda _id: peer_codec(b"k" * 32))  # signed frames, as over RabbitMQ
    return [
        GossipPeer(net.connect(new_peer_id()), t, config, min_peers=len(trainers), gossip=gossip, **FAST)
        for t in trainers
    ]


async def test_gossip_with_everyone_is_the_synchronous_average() -> None:
    nodes = gossipers(3, cfg(), [ShiftTrainer(s, n) for s, n in SHIFTS])
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(p.run() for p in nodes))
    assert all([h.digest for h in r] == [h.digest for h in results[0]] for r in results)
    for p in nodes:  # every round moves by the example-weighted mean shift, 3, as in test_peer.py
        assert p.params is not None
        np.testing.assert_allclose(p.params["w"], 9.0)


async def test_each_peer_averages_exactly_the_models_sent_to_it() -> None:
    nodes = gossipers(1, cfg(rounds=4), [ShiftTrainer(s, n) for s, n in SHIFTS])
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(p.run() for p in nodes))
    assert all([h.round for h in r] == [1, 2, 3, 4] for r in results)
    # The same rounds computed by hand: the models are constant vectors, so one number per peer.
    ids = sorted(p.peer_id for p in nodes)
    shift = {
        p.peer_id: (float(t.shift), t.num_examples) for p, t in zip(nodes, [p.trainer for p in nodes], strict=True)
    }
    value = dict.fromkeys(ids, 0.0)
    for rnd in range(1, 5):
        trained = {i: value[i] + shift[i][0] for i in ids}
        senders = {i: [j for j in ids if i in nodes[0].partners(j, rnd, ids)] for i in ids}
        value = {
            i: sum(trained[j] * shift[j][1] for j in [i, *senders[i]]) / sum(shift[j][1] for j in [i, *senders[i]])
            for i in ids
        }
    for p in nodes:
        assert p.params is not None
        np.testing.assert_allclose(p.params["w"], value[p.peer_id], rtol=1e-5)
    assert len({round(v, 4) for v in value.values()}) > 1  # with one partner, peers hold different models


async def test_a_peer_that_dies_costs_only_its_model() -> None:
    trainers = [SlowShift(s, n) for s, n in SHIFTS]
    nodes = gossipers(2, cfg(rounds=3, round_timeout_s=2.0), trainers)
    victim = nodes[3]
    assert isinstance(victim.trainer, SlowShift)
    victim.trainer.hang_on_call = 2  # dies in round 2, without a word
    tasks = [asyncio.create_task(p.run()) for p in nodes]
    try:
        async with asyncio.timeout(20):
            assert await asyncio.to_thread(victim.trainer.hanging.wait, 10)
            tasks[3].cancel()
            await victim.transport.close()
            results = await asyncio.gather(*tasks[:3])
    finally:
        victim.trainer.release.set()
        await asyncio.gather(tasks[3], return_exceptions=True)
    assert all([h.round for h in r] == [1, 2, 3] for r in results)
    assert all(victim.peer_id not in h.members for r in results for h in r[1:])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compression": "int8"}, "send whole models"),
        ({"strategy": "krum:f=1"}, "averages models"),
    ],
)
def test_settings_gossip_cannot_honour_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        gossipers(1, cfg(**change), [ShiftTrainer(1.0, 10)])
    with pytest.raises(ConfigError, match="at least 1 partner"):
        gossipers(0, cfg(), [ShiftTrainer(1.0, 10)])
