"""Replays across a restart of ``fedhive serve`` (issue 15): frames a site signed before the server
restarted, captured and sent again after it, are all rejected by the new process's hub, and the
clock leads that make this hold for a sender whose clock runs ahead survive in a 0600 file.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

import pytest
from test_replay_after_restart import CAPTURED, KEY, Clock, Net, Recorded, Replaying, heartbeat, receive

from fedhive.core.envelope import Kind, make
from fedhive.core.signing import SenderClocks, Verifier
from fedhive.errors import AuthenticationError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import client_codec
from fedhive.service.clock_file import ClockFile
from fedhive.service.platform import hub_codec
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.amqp import delete_namespace


def test_the_leads_survive_in_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    clocks = SenderClocks({"alice": 4.5, "bob": -2.0})
    file = ClockFile(tmp_path / "home" / "sender-clocks.json")
    file.save(clocks)
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert file.load().snapshot() == {"alice": 4.5, "bob": -2.0}


def test_an_unreadable_file_costs_the_leads_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sender-clocks.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="fedhive.platform"):
        assert ClockFile(path).load().snapshot() == {}
    assert "could not be read" in caplog.text
    assert ClockFile(tmp_path / "missing.json").load().snapshot() == {}


def test_a_fast_senders_frames_are_refused_after_a_restart_with_the_saved_leads(tmp_path: Path) -> None:
    file = ClockFile(tmp_path / "sender-clocks.json")
    clock = Clock()
    first = Verifier({"alice": KEY}.get, clock=clock, clocks=file.load())
    clock.now += 10.0
    frames = []
    for i in range(CAPTURED):
        clock.now += 0.1
        env = heartbeat(clock.now + 5.0, i)  # alice's clock runs 5 s ahead of the server's
        first.verify(env)
        frames.append(env)
    assert first.clocks is not None
    file.save(first.clocks)  # what the running server's keeper writes every few seconds
    clock.now += 2.0
    second = Verifier({"alice": KEY}.get, clock=clock, clocks=file.load())
    for env in frames:
        with pytest.raises(AuthenticationError, match="signed before this node started"):
            second.verify(env)


async def test_keep_saves_on_its_interval_and_when_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = ClockFile(tmp_path / "sender-clocks.json")
    clocks = SenderClocks()
    saved = asyncio.Event()
    loop = asyncio.get_running_loop()
    write = file.save

    def save_and_tell(c: SenderClocks) -> None:
        write(c)
        loop.call_soon_threadsafe(saved.set)

    monkeypatch.setattr(file, "save", save_and_tell)
    clocks.note("alice", 1.0)
    keeper = asyncio.create_task(file.keep(clocks, interval_s=0.01))
    async with asyncio.timeout(30):
        await saved.wait()  # a save on the interval, with the keeper still running
    assert not keeper.done() and file.load().snapshot() == {"alice": 1.0}
    clocks.note("alice", 2.0)
    keeper.cancel()
    await asyncio.wait([keeper])
    assert file.load().snapshot() == {"alice": 2.0}  # the save at shutdown


@pytest.mark.amqp
async def test_thirty_captured_frames_are_rejected_by_a_restarted_hub(rabbitmq_url: str, tmp_path: Path) -> None:
    """The hub's own codec over a real RabbitMQ: the first process accepts a site's heartbeats and
    saves its leads; the second, reading them, drops every replayed frame and takes a fresh one."""
    net = Net(rabbitmq_url, tmp_path)
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    file = ClockFile(tmp_path / "home" / "sender-clocks.json")
    try:
        site, key = net.add("site")
        sender = client_codec(site, key)
        recorded = Recorded(sender.signing_key, sender.verifier)
        recorded.frames = []
        clocks = file.load()
        async with net.broker.transport(COORDINATOR_ID, hub_codec(net.store.secret_of, artifacts, clocks)) as first:
            async with net.broker.transport(site, recorded) as link:
                for i in range(CAPTURED):
                    await link.send(COORDINATOR_ID, make(Kind.HEARTBEAT, site, body={"epoch": i}))
            assert len(await receive(first, CAPTURED)) == CAPTURED
        file.save(clocks)

        second_codec = hub_codec(net.store.secret_of, artifacts, file.load())
        async with net.broker.transport(COORDINATOR_ID, second_codec) as second:
            replay = Replaying(sender.signing_key, sender.verifier)
            replay.frames = list(recorded.frames)
            async with net.broker.transport(site, replay) as attacker:
                for _ in range(CAPTURED):
                    await attacker.send(COORDINATOR_ID, make(Kind.HEARTBEAT, site))
            async with net.broker.transport(site, client_codec(site, key)) as honest:
                await honest.send(COORDINATOR_ID, make(Kind.HEARTBEAT, site, body={"epoch": 99}))
            (fresh,) = await receive(second, 1)
            assert fresh.envelope.body == {"epoch": 99}
            assert second.rejected == CAPTURED
    finally:
        await delete_namespace(net.broker.url, net.broker.namespace, net.ids)
