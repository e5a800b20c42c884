"""Decentralised federation on the memory transport: every peer holds the same bits every round."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fakes import ShiftTrainer, SlowShift
from fedhive.core.envelope import Message
from fedhive.core.params import Params
from fedhive.runtime.peer import PeerNode, PeerRoundCompleted
from fedhive.runtime.peer_rounds import new_peer_id, peer_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.memory import MemoryNetwork

FAST = {"beat_s": 0.05, "peer_timeout_s": 0.4}


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {"rounds": 3, "round_timeout_s": 2.0, "registration_timeout_s": 10.0}
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


def peers(net: MemoryNetwork, trainers: list[ShiftTrainer], config: SessionConfig, min_peers: int) -> list[PeerNode]:
    return [PeerNode(net.connect(new_peer_id()), t, config, min_peers=min_peers, **FAST) for t in trainers]


def digests(history: list[PeerRoundCompleted]) -> list[tuple[int, str]]:
    return [(h.round, h.digest) for h in history]


@pytest.mark.parametrize("signed", [False, True])
async def test_peers_hold_identical_models_every_round(signed: bool) -> None:
    key = b"k" * 32
    net = MemoryNetwork(codec_for=(lambda _id: peer_codec(key)) if signed else None)
    trainers = [ShiftTrainer(s, n) for s, n in [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)]]
    nodes = peers(net, trainers, cfg(rounds=3), min_peers=4)
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(p.run() for p in nodes))
    assert all(digests(r) == digests(results[0]) for r in results)
    assert [h.round for h in results[0]] == [1, 2, 3]
    assert all(len(h.members) == 4 for h in results[0])
    # every round moves by the example-weighted mean shift (10 + 40 + 90 + 160) / 100 = 3
    for p in nodes:
        assert p.params is not None
        np.testing.assert_allclose(p.params["w"], np.full(4, 9.0, np.float32))


@pytest.mark.parametrize("who", ["member", "leader"])
async def test_a_peer_that_leaves_mid_round_is_excluded_by_all_alike(who: str) -> None:
    net = MemoryNetwork()
    trainers = [SlowShift(1.0, 10), SlowShift(2.0, 10), SlowShift(3.0, 10), SlowShift(5.0, 10)]
    nodes = peers(net, trainers, cfg(rounds=3), min_peers=4)
    # The lowest id leads every round; when it dies the next in id order must take over.
    nodes.sort(key=lambda p: p.peer_id)
    victim = nodes.pop(0 if who == "leader" else 3)
    nodes.append(victim)
    leaver = victim.trainer
    assert isinstance(leaver, SlowShift)
    leaver.hang_on_call = 2
    tasks = [asyncio.create_task(p.run()) for p in nodes]
    try:
        async with asyncio.timeout(20):
            assert await asyncio.to_thread(leaver.hanging.wait, 10)
            # The peer dies in round 2 without a word: no bye, just silence.
            tasks[3].cancel()
            await nodes[3].transport.close()
            results = await asyncio.gather(*tasks[:3])
    finally:
        leaver.release.set()
        await asyncio.gather(tasks[3], return_exceptions=True)
    gone = nodes[3].peer_id
    assert all(digests(r) == digests(results[0]) for r in results)
    assert [gone in h.members for h in results[0]] == [True, False, False]
    assert [len(h.members) for h in results[0]] == [4, 3, 3]


async def test_a_late_peer_gets_the_model_and_joins_a_later_round() -> None:
    net = MemoryNetwork()
    config = cfg(rounds=6)
    nodes = peers(net, [SlowShift(1.0, 10, delay=0.1) for _ in range(3)], config, min_peers=3)
    first_round = asyncio.Event()
    nodes[0].bus.on(PeerRoundCompleted, lambda _e: first_round.set())
    tasks = [asyncio.create_task(p.run()) for p in nodes]
    async with asyncio.timeout(20):
        await first_round.wait()
        late = PeerNode(net.connect(new_peer_id()), SlowShift(1.0, 10, delay=0.1), config, min_peers=3, **FAST)
        results = await asyncio.gather(*tasks, late.run())
    first = results[0]
    joined = [h.round for h in first if late.peer_id in h.members]
    assert joined and joined[0] >= 2 and joined == list(range(joined[0], 7))
    own = dict(digests(results[3]))
    assert own and all(own[r] == d for r, d in digests(first) if r in own)
    assert max(own) == 6


@pytest.mark.parametrize("compression", ["int8", "float16", "topk:0.5"])
async def test_compressed_updates_keep_every_peer_on_the_same_bits(compression: str) -> None:
    net = MemoryNetwork(codec_for=lambda _id: peer_codec(b"k" * 32))  # updates cross as signed frames
    trainers = [ShiftTrainer(s, n, size=64) for s, n in [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)]]
    nodes = peers(net, trainers, cfg(rounds=3, compression=compression), min_peers=4)
    sent: list[list[str]] = []
    publish = nodes[0].transport.publish

    async def spy(topic: str, message: Message) -> None:
        if message.envelope.body.get("type") == "update" and isinstance(message.payload, Params):
            sent.append(sorted(message.payload))
        await publish(topic, message)

    nodes[0].transport.publish = spy  # type: ignore[method-assign]
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(p.run() for p in nodes))
    assert all(digests(r) == digests(results[0]) for r in results)
    assert [h.round for h in results[0]] == [1, 2, 3]
    assert sent and all(any("__" in name for name in names) for names in sent)  # compressed on the way
    if compression != "topk:0.5":  # a constant shift survives int8 and float16 up to rounding
        assert nodes[0].params is not None
        np.testing.assert_allclose(nodes[0].params["w"], 9.0, atol=1e-2)
