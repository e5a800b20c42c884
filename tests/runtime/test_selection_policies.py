"""Client selection per round: fraction (rounded up), at least one, a maximum, seeded randomness."""

from __future__ import annotations

import asyncio

import pytest

from fakes import ShiftTrainer
from fedhive.errors import SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation


@pytest.mark.parametrize(
    ("fraction", "max_clients", "online", "expected"),
    [(1.0, None, 10, 10), (0.25, None, 10, 3), (0.01, None, 10, 1), (0.5, 2, 10, 2), (1.0, 50, 10, 10)],
)
def test_selection_size(fraction: float, max_clients: int | None, online: int, expected: int) -> None:
    config = SessionConfig(fraction=fraction, max_clients=max_clients)
    assert config.selection_size(online) == expected


def selections(**settings: object) -> list[list[str]]:
    seen: list[ev.RoundStarted] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundStarted, seen.append)

    config = SessionConfig(rounds=4, min_clients=6, round_timeout_s=5.0, **settings)  # type: ignore[arg-type]
    trainers = [ShiftTrainer(1.0) for _ in range(6)]

    async def go() -> None:
        async with asyncio.timeout(30):
            await run_federation(
                config, trainers, [t.num_examples for t in trainers], trainers[0].initial_params(0), observers=[watch]
            )

    asyncio.run(go())
    return [list(e.selected) for e in seen]


def test_max_clients_caps_every_round_and_the_seed_decides_who() -> None:
    capped = selections(max_clients=2, seed=1)
    assert [len(s) for s in capped] == [2, 2, 2, 2]
    assert capped == selections(max_clients=2, seed=1)  # reproducible for a seed
    assert capped != selections(max_clients=2, seed=2)  # and a different seed draws differently
    assert len({c for s in capped for c in s}) > 2  # random per round, not always the same two


def test_min_clients_must_be_online_before_a_round() -> None:
    trainers = [ShiftTrainer(1.0) for _ in range(6)]
    config = SessionConfig(rounds=1, min_clients=7, registration_timeout_s=0.5, round_timeout_s=1.0)
    with pytest.raises(SessionFailed, match="only 6 of the 7 required clients registered within"):
        asyncio.run(run_federation(config, trainers, [t.num_examples for t in trainers], trainers[0].initial_params(0)))
