"""Registration and heartbeats over a real broker, watched on the coordinator's bus and registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from amqp_cluster import Net

from fedhive.cli.session_file import parse_session
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.networked import ClientSettings, coordinator_codec, plan_coordinator

pytestmark = pytest.mark.amqp


async def test_registration_and_heartbeats_reach_the_registry(net: Net, tmp_path: Path) -> None:
    ident = net.add("worker")
    # Some 0.5-3 s of local training (machines differ), with a progress report every 50 ms at most:
    # several progress heartbeats whatever the machine.
    raw = {"rounds": 1, "min_clients": 1, "model": "logreg-np", "epochs": 2500, "lr": 0.01}
    session = parse_session({**raw, "heartbeat_interval_s": 0.3, "data": {"dataset": "digits"}}, tmp_path / "s.toml")
    evaluator, initial = plan_coordinator(session, net.broker)
    seen: list[object] = []
    async with asyncio.timeout(60), net.broker.transport(COORDINATOR_ID, coordinator_codec(net.store)) as transport:
        coordinator = Coordinator(session.config, transport, initial, evaluator=evaluator)
        for kind in (ev.ClientStatusChanged, ev.HeartbeatReceived):
            coordinator.bus.on(kind, seen.append)
        client = net.honest(ident, "2/4", ClientSettings(register_timeout_s=30, progress_interval_s=0.05))
        result = await coordinator.run()
        assert await client == 1
    assert result.rounds == 1

    info = coordinator.registry.get(ident[0])
    data = LocalData(dataset="digits", part="2/4")
    assert info is not None and info.num_examples == len(data.shard(0))
    assert info.label_counts == data.label_counts(0) and sum(info.label_counts.values()) == info.num_examples
    assert [(e.status, e.previous) for e in seen if isinstance(e, ev.ClientStatusChanged)] == [
        ("ONLINE", None),
        ("TRAINING", "ONLINE"),
        ("ONLINE", "TRAINING"),  # released when the session ends
    ]
    training = [e for e in seen if isinstance(e, ev.HeartbeatReceived) and e.epoch is not None]
    assert training, "no heartbeat reported training progress"
    beat = training[-1]
    assert (beat.status, beat.round, beat.epochs) == ("TRAINING", 1, 2500)
    assert beat.epoch is not None and 1 <= beat.epoch <= 2500
    assert beat.loss is not None and beat.loss > 0 and beat.accuracy is not None and 0 <= beat.accuracy <= 1
