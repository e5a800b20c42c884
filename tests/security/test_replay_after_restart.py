"""Replays across a coordinator restart (issue 15, part 4): 30 frames a client signed before the
coordinator restarted, captured and sent again after it, are all rejected.

The seen message ids die with the process; what survives is that a coordinator's verifier
refuses whatever was signed before it started, in each sender's own clock (``SenderClocks``,
kept with the checkpoint). Unit checks on the verifier and the checkpoint, then the same attack
over a real RabbitMQ with the coordinator's own codec and transport.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhive.cli.session_file import parse_session
from fedhive.core.envelope import Envelope, Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import SenderClocks, Verifier, sign
from fedhive.errors import AuthenticationError
from fedhive.runtime import events as ev
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import client_codec, coordinator_codec
from fedhive.runtime.resume import strategy_for
from fedhive.tracking.run_checkpoint import RunCheckpoint, fingerprint, load_run_checkpoint
from fedhive.transports.wire_codec import WireCodec

sys.path.insert(0, str(Path(__file__).parent.parent / "networked"))
from amqp_cluster import Net  # the networked tests' helpers

from fedhive.transports.amqp import delete_namespace

KEY = b"alice-secret"
CAPTURED = 30


class Clock:
    """Time as the coordinator's host sees it; a sender's clock may run ``ahead`` of it."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heartbeat(sent_at: float, n: int = 0) -> Envelope:
    env = make(Kind.HEARTBEAT, "alice", body={"status": "TRAINING", "epoch": n}).envelope
    return sign(env.model_copy(update={"sent_at": sent_at}), KEY)


def captured_then_restarted(ahead: float, *, keep_clocks: bool) -> tuple[list[Envelope], Verifier, Clock]:
    """``CAPTURED`` heartbeats of a sender whose clock runs ``ahead`` of the coordinator's, accepted
    by one coordinator process; then a second process, 2 s later, with or without the first one's
    clock leads (as its checkpoint carries them)."""
    clock = Clock()
    first = Verifier({"alice": KEY}.get, clock=clock, clocks=SenderClocks())
    clock.now += 10.0  # a session under way (a sender running behind is refused at first: its
    # messages were signed before this process started, in the process's own clock)
    frames = []
    for i in range(CAPTURED):
        clock.now += 0.1
        env = heartbeat(clock.now + ahead, i)
        first.verify(env)  # accepted once, as sent
        frames.append(env)
    clock.now += 2.0  # the crash, and the restart
    assert first.clocks is not None
    kept = SenderClocks(first.clocks.snapshot()) if keep_clocks else SenderClocks()
    return frames, Verifier({"alice": KEY}.get, clock=clock, clocks=kept), clock


@pytest.mark.parametrize("ahead", [0.0, -5.0, 5.0])
def test_frames_signed_before_a_restart_are_all_rejected_after_it(ahead: float) -> None:
    frames, second, clock = captured_then_restarted(ahead, keep_clocks=True)
    for env in frames:
        with pytest.raises(AuthenticationError, match="signed before this node started"):
            second.verify(env)
    clock.now += 0.5
    second.verify(heartbeat(clock.now + ahead))  # the same sender, signing anew: accepted


def test_a_sender_clock_ahead_needs_the_checkpointed_lead() -> None:
    """Without the lead a fresh verifier takes a fast sender's last frames for new ones: that is
    why the leads are kept with the checkpoint."""
    frames, second, _ = captured_then_restarted(5.0, keep_clocks=False)
    slipped = 0
    for env in frames:
        try:
            second.verify(env)
            slipped += 1
        except AuthenticationError:
            pass
    assert slipped > 0


def test_without_restart_protection_every_captured_frame_was_accepted() -> None:
    """The attack as the issue found it: a verifier with no clocks (ids in memory only)."""
    frames, _, clock = captured_then_restarted(0.0, keep_clocks=True)
    forgetful = Verifier({"alice": KEY}.get, clock=clock)
    for env in frames:
        forgetful.verify(env)


def test_the_clock_leads_are_kept_with_the_run_checkpoint(tmp_path: Path) -> None:
    raw: dict[str, Any] = {"session_id": "s1", "rounds": 5, "model": "logreg-np", "data": {"dataset": "digits"}}
    session = parse_session(raw, tmp_path / "session.toml")
    params = Params({"weight": np.zeros((64, 10), np.float32), "bias": np.zeros(10, np.float32)})
    writer = RunCheckpoint(tmp_path, "s1", strategy_for(session.config, None), fingerprint(session, params.spec))
    writer.clocks.note("alice", 4.5)
    writer.clocks.note("bob", -2.0)
    handlers: dict[type, Any] = {}
    writer.attach(type("Bus", (), {"on": lambda _self, kind, h: handlers.__setitem__(kind, h)})())  # type: ignore[arg-type]
    asyncio.run(handlers[ev.RoundCompleted](ev.RoundCompleted(1, params, {}, {}, 2, 2, 20, 0.1)))

    found = load_run_checkpoint(tmp_path, session, params.spec, session_named=True)
    assert found is not None
    _, checkpoint = found
    assert checkpoint.sender_clocks == {"alice": 4.5, "bob": -2.0}
    resumed = RunCheckpoint(tmp_path, "s1", strategy_for(session.config, None), {}).resume_from(checkpoint)
    assert resumed.clocks.lead("alice") == 4.5


# -- over RabbitMQ ------------------------------------------------------------------------------------
class Recorded(WireCodec):
    """A client's real codec that keeps a copy of every frame it sends: what an attacker who can
    read the client's traffic captures."""

    frames: list[bytes]

    async def encode_many(self, items: Any) -> list[bytes]:
        out = await super().encode_many(items)
        self.frames.extend(out)
        return out


class Replaying(WireCodec):
    """Sends captured frames as they are, one per send."""

    frames: list[bytes]

    async def encode(self, to: str, message: Message) -> bytes:
        return self.frames.pop(0)

    async def encode_many(self, items: Any) -> list[bytes]:
        return [self.frames.pop(0) for _ in items]


async def receive(transport: Any, n: int) -> list[Message]:
    got = []
    async with asyncio.timeout(60):
        async for m in transport:
            got.append(m)
            if len(got) == n:
                return got
    return got


@pytest.mark.amqp
async def test_thirty_captured_frames_are_rejected_by_a_restarted_coordinator(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    net = Net(rabbitmq_url, tmp_path)
    try:
        alice, key = net.add("alice")
        clocks = SenderClocks()  # what the first process's checkpoint carries to the second
        sender = client_codec(alice, key)
        recorded = Recorded(sender.signing_key, sender.verifier)
        recorded.frames = []
        async with net.broker.transport(COORDINATOR_ID, coordinator_codec(net.store, clocks=clocks)) as first:
            async with net.broker.transport(alice, recorded) as link:
                for i in range(CAPTURED):
                    await link.send(COORDINATOR_ID, make(Kind.HEARTBEAT, alice, body={"epoch": i}))
            assert len(await receive(first, CAPTURED)) == CAPTURED  # all accepted, once
        assert len(recorded.frames) == CAPTURED

        second_codec = coordinator_codec(net.store, clocks=SenderClocks(clocks.snapshot()))
        async with net.broker.transport(COORDINATOR_ID, second_codec) as second:
            replay = Replaying(sender.signing_key, sender.verifier)
            replay.frames = list(recorded.frames)
            async with net.broker.transport(alice, replay) as attacker:
                for _ in range(CAPTURED):
                    await attacker.send(COORDINATOR_ID, make(Kind.HEARTBEAT, alice))
            async with net.broker.transport(alice, client_codec(alice, key)) as honest:
                await honest.send(COORDINATOR_ID, make(Kind.HEARTBEAT, alice, body={"epoch": 99}))
            (fresh,) = await receive(second, 1)  # the 30 replays queued before it: all dropped
            assert fresh.envelope.body == {"epoch": 99}
            assert second.rejected == CAPTURED
    finally:
        await delete_namespace(net.broker.url, net.broker.namespace, net.ids)
