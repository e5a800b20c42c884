"""Compressed updates over a real broker: safetensors bytes on the wire, counted, decoded, and a
forged compressed update rejected while the session goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from amqp_cluster import Net

from fedhive.core.compression import UpdateCompressor
from fedhive.core.envelope import Message
from fedhive.core.params import Params
from fedhive.learning.local_data import LocalData
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.networked import client_codec
from fedhive.runtime.session_config import SessionConfig

pytestmark = pytest.mark.amqp

FLOAT32_BYTES = 650 * 4  # digits logreg-np: 640 weights + 10 biases


class _Forger(UpdateCompressor):
    def compress(self, update: Params) -> tuple[Params, dict[str, Any]]:
        wire, body = super().compress(update)
        return Params({n: a[::-1].copy() if n.endswith(".__idx") else a for n, a in wire.items()}), body


class _ForgingClient(ClientNode):
    """An enrolled client whose top-k indices come out of order: a hand-made attack."""

    def _enable(self, msg: Message) -> None:
        super()._enable(msg)
        assert self._config is not None
        self._compressor = _Forger(self._config.compression)


def watcher(seen: list[object]) -> Any:
    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, seen.append)
        bus.on(ev.UpdateRejected, seen.append)

    return watch


async def test_int8_updates_cross_the_broker_four_times_smaller(net: Net) -> None:
    idents = [net.add("c1"), net.add("c2")]
    seen: list[object] = []
    async with asyncio.timeout(60):
        session = net.coordinator(watcher(seen), rounds=3, compression="int8")
        await net.ready.wait()
        clients = [net.honest(ident, f"{i}/2") for i, ident in enumerate(idents, start=1)]
        result = await session
        await asyncio.gather(*clients)
    assert result.rounds == 3 and result.metrics["accuracy"] > 0.8
    sizes = [e.nbytes for e in seen if isinstance(e, ev.UpdateAccepted)]
    assert len(sizes) == 6
    # safetensors bytes: 650 int8 values, two float32 scales and a JSON header
    assert all(650 < n < FLOAT32_BYTES / 2 for n in sizes), sizes


async def test_a_forged_topk_update_over_amqp_is_rejected_and_the_session_goes_on(net: Net) -> None:
    honest = [net.add("honest1"), net.add("honest2")]
    mallory, mallory_key = net.add("mallory")
    seen: list[object] = []

    def rogue_trainer(config: SessionConfig) -> NumpyLogRegTrainer:
        shard = LocalData(dataset="digits", part="3/3").shard(config.seed)
        return NumpyLogRegTrainer(shard.x, shard.y, shard.num_classes)

    async with asyncio.timeout(60):
        session = net.coordinator(watcher(seen), rounds=3, min_clients=3, quorum=0.5, compression="topk:0.1")
        await net.ready.wait()
        clients = [net.honest(ident, f"{i}/3") for i, ident in enumerate(honest, start=1)]
        async with net.broker.transport(mallory, client_codec(mallory, mallory_key)) as transport:
            rogue = _ForgingClient(mallory, transport, rogue_trainer, num_examples=500, coordinator_timeout_s=30)
            await rogue.run()
        result = await session
        await asyncio.gather(*clients)
    assert result.rounds == 3
    rejected = [e for e in seen if isinstance(e, ev.UpdateRejected)]
    assert [(e.round, e.client_id) for e in rejected] == [(1, mallory), (2, mallory), (3, mallory)]
    assert all("top-k indices are not strictly increasing" in e.reason for e in rejected)
    accepted = [e for e in seen if isinstance(e, ev.UpdateAccepted)]
    assert len(accepted) == 6 and all(e.nbytes < FLOAT32_BYTES / 2 for e in accepted)
