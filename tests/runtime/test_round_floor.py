"""``min_round_clients``: the number of clients needed to start a session is not the number a
running session needs, so one client lost does not end it (examples/session.toml relies on it)."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from fakes import ShiftTrainer
from fedhive.errors import SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.session_config import SessionConfig, make_config
from fedhive.transports.memory import MemoryNetwork

EXAMPLE = Path(__file__).parents[2] / "examples" / "session.toml"


async def run_with_a_client_lost_after_round_1(config: SessionConfig) -> int:
    """Three clients; the third dies once round 1 is done. Returns the rounds completed."""
    net = MemoryNetwork()
    coordinator = Coordinator(config, net.connect(COORDINATOR_ID), ShiftTrainer(0).initial_params(0))
    clients = {
        c: asyncio.create_task(
            ClientNode(c, net.connect(c), lambda _c: ShiftTrainer(1), num_examples=5, heartbeat_interval_s=0.05).run()
        )
        for c in ("c1", "c2", "c3")
    }

    def lose_c3(e: ev.RoundCompleted) -> None:
        if e.round == 1:
            clients["c3"].cancel()  # killed: no STOP, no goodbye; it simply falls silent

    coordinator.bus.on(ev.RoundCompleted, lose_c3)
    try:
        async with asyncio.timeout(30):
            result = await coordinator.run()
        return result.rounds
    finally:
        for task in clients.values():
            task.cancel()
        await asyncio.gather(*clients.values(), return_exceptions=True)


def config(**settings: object) -> SessionConfig:
    base = {"rounds": 3, "min_clients": 3, "heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.3}
    return make_config(**{**base, **settings})


async def test_a_session_with_a_round_floor_survives_a_client_death() -> None:
    assert await run_with_a_client_lost_after_round_1(config(min_round_clients=2)) == 3


async def test_without_a_round_floor_min_clients_holds_for_every_round() -> None:
    with pytest.raises(SessionFailed, match="fewer than min_clients=3"):
        await run_with_a_client_lost_after_round_1(config())


def test_the_example_session_needs_fewer_clients_per_round_than_to_start() -> None:
    example = SessionConfig.model_validate({k: v for k, v in tomllib.loads(EXAMPLE.read_text()).items()})
    assert example.round_floor() < example.min_clients


def test_a_round_floor_above_min_clients_is_refused_in_one_line() -> None:
    with pytest.raises(Exception, match="min_round_clients must not be more than min_clients"):
        make_config(min_clients=2, min_round_clients=3)
