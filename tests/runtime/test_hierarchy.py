"""Hierarchical federation on the memory transport: nested aggregation equals flat aggregation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from memory_hierarchy import memory_hierarchy

from fakes import ShiftTrainer, SlowShift
from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params
from fedhive.errors import SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.assigned_client import run_assigned_client
from fedhive.runtime.combiner import Combiner
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.hierarchy import HierarchicalCoordinator
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation
from fedhive.transports.memory import MemoryNetwork

LIVE = {"heartbeat_interval_s": 0.05, "heartbeat_timeout_s": 0.4}


class NoisyTrainer(ShiftTrainer):
    """A distinct, irrational-looking update per client, so rounding differences would show."""

    def __init__(self, seed: int, n: int) -> None:
        super().__init__(0.0, n, size=64)
        self.delta = np.random.default_rng(seed).normal(size=64).astype(np.float32)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.calls += 1
        out = Params({"w": params["w"] + self.delta, "b": params["b"] + self.delta[:1]})
        return FitResult(out, self.num_examples, {"loss": float(self.delta[0] ** 2)})


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {"rounds": 3, "min_clients": 6, "round_timeout_s": 3.0, **LIVE}
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


async def nested(
    config: SessionConfig,
    trainers: list[ShiftTrainer],
    *,
    combiners: int = 2,
    exact: bool = False,
    on_round: Callable[[ev.RoundCompleted, list[Combiner], list[asyncio.Task[object]]], object] | None = None,
) -> tuple[SessionResult, HierarchicalCoordinator]:
    built = memory_hierarchy(
        config,
        trainers,
        combiners=combiners,
        combiner_options={"upstream_timeout_s": 5.0, "exact_partials": exact, **LIVE},
        client_options={"combiner_timeout_s": 0.5, "reassign_timeout_s": 3.0, "register_retry_s": 0.1},
    )
    coordinator, nodes, clients = built.coordinator, built.combiners, built.clients
    async with asyncio.timeout(30):
        combiner_tasks: list[asyncio.Task[object]] = [asyncio.create_task(c.run()) for c in nodes]
        client_tasks = [asyncio.create_task(c) for c in clients]
        if on_round is not None:
            hook = on_round
            coordinator.bus.on(ev.RoundCompleted, lambda e: hook(e, nodes, combiner_tasks))
        result = await coordinator.run()
        await asyncio.gather(*client_tasks)
        await asyncio.gather(*combiner_tasks, return_exceptions=True)
    return result, coordinator


async def flat(config: SessionConfig, trainers: list[ShiftTrainer]) -> SessionResult:
    async with asyncio.timeout(30):
        return await run_federation(config, trainers, [t.num_examples for t in trainers], trainers[0].initial_params(0))


def rel_err(a: Params, b: Params) -> float:
    return max(float(np.abs(a[n].astype(np.float64) - b[n]).max() / (np.abs(b[n]).max() + 1e-12)) for n in a)


@pytest.mark.parametrize(("strategy", "exact"), [("fedavg", False), ("fedavg", True), ("fedmedian", False)])
async def test_two_combiners_six_clients_equal_the_flat_run(strategy: str, exact: bool) -> None:
    def make() -> list[ShiftTrainer]:
        return [NoisyTrainer(i, 10 + 7 * i) for i in range(6)]

    config = cfg(strategy=strategy)
    result, coordinator = await nested(config, make(), exact=exact)
    reference = await flat(config, make())
    assert result.rounds == 3
    assert rel_err(result.params, reference.params) <= (1e-12 if exact and strategy == "fedavg" else 1e-6)
    # least loaded assignment: three clients each
    assert sorted(np.unique(list(coordinator.assigned.values()), return_counts=True)[1]) == [3, 3]


async def test_clients_asking_before_every_combiner_is_up_are_still_spread_evenly() -> None:
    # On a loaded machine the second combiner can register seconds after the clients first ask:
    # assigning them at once would put all six on the first one and the session would never start.
    net = MemoryNetwork()
    trainers = [ShiftTrainer(1.0, 10) for _ in range(6)]
    coordinator = HierarchicalCoordinator(
        cfg(rounds=1), net.connect(COORDINATOR_ID), trainers[0].initial_params(0), min_combiners=2
    )
    combiners = [
        Combiner(f"combiner-{i}", net.connect(f"combiner-{i}"), upstream_timeout_s=5.0, **LIVE) for i in range(2)
    ]
    clients = [
        run_assigned_client(
            f"client-{i}",
            net.connect(f"client-{i}"),
            (lambda t: lambda _c: t)(t),
            num_examples=10,
            combiner_timeout_s=2.0,
            register_retry_s=0.1,
        )
        for i, t in enumerate(trainers)
    ]
    async with asyncio.timeout(30):
        session = asyncio.create_task(coordinator.run())
        first = asyncio.create_task(combiners[0].run())
        client_tasks = [asyncio.create_task(c) for c in clients]
        await asyncio.sleep(2.5)  # the clients have asked (and been put off) more than once
        assert coordinator.assigned == {}
        second = asyncio.create_task(combiners[1].run())
        result = await session
        await asyncio.gather(*client_tasks)
        await asyncio.gather(first, second, return_exceptions=True)
    assert result.rounds == 1
    assert sorted(np.unique(list(coordinator.assigned.values()), return_counts=True)[1]) == [3, 3]


async def test_a_killed_combiners_clients_move_and_the_session_completes() -> None:
    # Training takes a while, so that the session outlasts the clients' move.
    trainers: list[ShiftTrainer] = [SlowShift(1.0, 10, delay=0.2) for _ in range(6)]
    done: list[ev.RoundCompleted] = []

    async def kill_after_round_1(
        e: ev.RoundCompleted, combiners: list[Combiner], tasks: list[asyncio.Task[object]]
    ) -> None:
        done.append(e)
        if e.round == 1:  # dies without a word: its clients and the coordinator must notice
            tasks[0].cancel()
            await combiners[0].transport.close()

    result, coordinator = await nested(cfg(rounds=5, round_timeout_s=2.0), trainers, on_round=kill_after_round_1)
    assert result.rounds == 5
    np.testing.assert_allclose(result.params["w"], np.full(4, 5.0, np.float32))
    assert set(coordinator.assigned.values()) == {"combiner-1"}
    assert done[-1].num_updates == 6  # every client trains again, through the surviving combiner


async def test_too_few_clients_at_the_combiners_fail_the_session_with_a_reason() -> None:
    net = MemoryNetwork()
    config = cfg(registration_timeout_s=0.3)
    coordinator = HierarchicalCoordinator(config, net.connect(COORDINATOR_ID), ShiftTrainer(0).initial_params(0))
    combiner = Combiner("combiner-0", net.connect("combiner-0"), upstream_timeout_s=5.0, **LIVE)
    task = asyncio.create_task(combiner.run())
    try:
        async with asyncio.timeout(10):
            with pytest.raises(SessionFailed, match="0 of the 6 required clients reached 0 of the 1"):
                await coordinator.run()
            with pytest.raises(SessionFailed):
                await task  # told by the coordinator's STOP, not left waiting
    finally:
        task.cancel()
