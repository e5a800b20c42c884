"""Hostile input over a real broker: forged, replayed, unsigned and stale messages, bad updates.

The coordinator and the honest clients run in this process (the same code as the CLI runs), so
the test can watch the coordinator's bus and log; every byte still goes through RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

import numpy as np
import pytest
from amqp_cluster import Cluster, Net, demo_part, session_toml

from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.core import wire
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.learning.local_data import LocalData
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import client_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.wire_codec import WireCodec

pytestmark = pytest.mark.amqp


class RawFrames(WireCodec):
    """Sends the frames it is given, whatever the message: a hand-made attack on the wire."""

    frames: list[bytes]

    async def encode(self, to: str, message: Message) -> bytes:
        return self.frames.pop(0)


def frame(kind: Kind, sender: str, key: bytes | None, **fields: object) -> bytes:
    env = make(kind, sender, body={"num_examples": 10}).envelope.model_copy(update=fields)
    return wire.encode_frame(sign(env, key) if key else env, None)


async def test_forged_replayed_unsigned_unknown_and_stale_messages_are_rejected(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    honest = [net.add("honest1"), net.add("honest2")]
    mallory, mallory_key = net.add("mallory")  # a known client that turns hostile
    rogue_codec = RawFrames(lambda _to: mallory_key, Verifier(lambda _s: None))
    with caplog.at_level(logging.WARNING, logger="fedhive.transport"):
        async with asyncio.timeout(60):
            session = net.coordinator()
            await net.ready.wait()
            # Signed once the coordinator runs: it refuses anything signed before it started.
            heartbeat = frame(Kind.HEARTBEAT, mallory, mallory_key)
            attacks = [
                frame(Kind.REGISTER, mallory, None),  # unsigned
                frame(Kind.REGISTER, honest[0][0], mallory_key),  # signed with someone else's key: forged
                frame(Kind.REGISTER, "ghost", secrets.token_bytes(32)),  # a sender the store does not know
                frame(Kind.REGISTER, mallory, mallory_key, sent_at=time.time() - 3600),  # captured an hour ago
                heartbeat,  # genuine: passes
                heartbeat,  # ... and replayed
            ]
            rogue_codec.frames = list(attacks)
            async with net.broker.transport(mallory, rogue_codec) as rogue:
                for _ in attacks:
                    await rogue.send(COORDINATOR_ID, make(Kind.HEARTBEAT, mallory))
            clients = [net.honest(ident, f"{i}/2") for i, ident in enumerate(honest, start=1)]
            result = await session
            assert await asyncio.gather(*clients) == [2, 2]
    assert result.rounds == 2  # the session carried on
    rejected = [r.getMessage() for r in caplog.records if "coordinator: rejected message" in r.getMessage()]
    assert len(rejected) == 5, rejected  # one line each, with the reason
    reasons = ["unsigned", "forged register", "unknown sender 'ghost'", "outside the 300s replay window", "replayed"]
    for line, reason in zip(rejected, reasons, strict=True):
        assert reason in line


class RogueTrainer:
    """Trains honestly, then spoils the update: wrong shape, then NaN, then far too big."""

    def __init__(self, inner: NumpyLogRegTrainer) -> None:
        self.inner = inner
        self.param_spec = inner.param_spec
        self.fits = 0

    def initial_params(self, seed: int) -> Params:
        return self.inner.initial_params(seed)

    def evaluate(self, params: Params) -> object:
        return self.inner.evaluate(params)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.fits += 1
        good = self.inner.fit(params, config, progress)
        w, b = good.params["weight"], good.params["bias"]
        spoiled = {
            1: {"weight": w[:-1], "bias": b},
            2: {"weight": np.full_like(w, np.nan), "bias": b},
            3: {"weight": w, "bias": b, "padding": np.zeros(64 * 1024, np.float32)},
        }[self.fits]
        return FitResult(Params(spoiled), good.num_examples, good.metrics)


async def test_wrong_shape_nan_and_oversized_updates_are_rejected_and_the_session_goes_on(net: Net) -> None:
    honest = [net.add("honest1"), net.add("honest2")]
    mallory, mallory_key = net.add("mallory")
    seen: list[object] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateRejected, seen.append)
        bus.on(ev.RoundCompleted, seen.append)

    def rogue_trainer(config: SessionConfig) -> RogueTrainer:
        shard = LocalData(dataset="digits", part="3/3").shard(config.seed)
        return RogueTrainer(NumpyLogRegTrainer(shard.x, shard.y, shard.num_classes))

    async with asyncio.timeout(60):
        session = net.coordinator(watch, rounds=3, min_clients=3, quorum=0.5, max_update_bytes=16 * 1024)
        await net.ready.wait()
        clients = [net.honest(ident, f"{i}/3") for i, ident in enumerate(honest, start=1)]
        async with net.broker.transport(mallory, client_codec(mallory, mallory_key)) as transport:
            rogue = ClientNode(mallory, transport, rogue_trainer, num_examples=500, coordinator_timeout_s=30)
            await rogue.run()
        result = await session
        await asyncio.gather(*clients)
    assert result.rounds == 3
    rejections = [(e.round, e.reason) for e in seen if isinstance(e, ev.UpdateRejected)]
    assert [r for r, _ in rejections] == [1, 2, 3]
    assert "has shape (63, 10), expected (64, 10)" in rejections[0][1]
    assert "NaN" in rejections[1][1]
    assert f"exceeds the limit of {16 * 1024} bytes" in rejections[2][1]
    assert [e.num_updates for e in seen if isinstance(e, ev.RoundCompleted)] == [2, 2, 2]


@pytest.mark.slow
def test_a_client_with_a_wrong_secret_is_rejected_and_gives_up_with_a_reason(cluster: Cluster, tmp_path: Path) -> None:
    (ident,) = cluster.add_clients("eve", 1)
    coordinator = cluster.coordinator(session_toml(tmp_path / "s.toml", min_clients=1), tmp_path / "run")
    client = cluster.client((ident[0], "ab" * 32), *demo_part(1, 2), extra=("--register-timeout", "3"))
    line = coordinator.wait_for(f"forged register message claiming to be from '{ident[0]}'", stream="err")
    assert line.endswith("bad signature")
    assert client.finish(30) == 2
    assert len(client.err) == 1, client.tail()
    assert client.err[0].startswith(f"error: {ident[0]}: the coordinator did not answer registration within 3 s")
    assert "--id and --secret" in client.err[0]


async def test_an_update_for_a_round_that_is_over_is_dropped_and_logged(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    (late, late_key), other = net.add("late"), net.add("other")
    seen: list[object] = []
    round_two = asyncio.Event()

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateRejected, seen.append)
        bus.on(ev.RoundStarted, lambda e: round_two.set() if e.round == 2 else None)

    shard = LocalData(dataset="digits", part="1/2").shard(0)
    params = NumpyLogRegTrainer(shard.x, shard.y, shard.num_classes).initial_params(0)
    net.ids.add("delayed-link")
    with caplog.at_level(logging.INFO, logger="fedhive.coordinator"):
        async with asyncio.timeout(60), net.broker.transport("delayed-link", client_codec(late, late_key)) as link:
            session = net.coordinator(watch, rounds=3)
            await net.ready.wait()
            # Made (signed as of now) once the coordinator runs: it refuses what predates it.
            body = {"num_examples": len(shard), "attempt": 0}
            stray = make(Kind.UPDATE, late, round=1, body=body, payload=params)
            clients = [net.honest((late, late_key), "1/2"), net.honest(other, "2/2")]
            await round_two.wait()
            await link.send(COORDINATOR_ID, stray)  # round 1's update, held back until round 2 began
            result = await session
            await asyncio.gather(*clients)
    assert result.rounds == 3  # the stray update changed nothing
    assert [(e.round, e.client_id, e.reason) for e in seen] == [(1, late, "late")]
    assert any(f"dropped late update from {late} for round 1" in r.getMessage() for r in caplog.records)
