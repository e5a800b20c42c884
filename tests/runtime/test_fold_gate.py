"""Virtual clients hand the coordinator one update at a time when the model is big."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fakes import BadTrainer, ShiftTrainer
from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params
from fedhive.errors import DataError
from fedhive.runtime import events as ev
from fedhive.runtime import host_training
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import FoldGate, run_federation


class Outstanding:
    """Counts updates trained but not yet taken by the coordinator."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def trained(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def attach(self, bus: EventBus) -> None:
        def taken(_e: object) -> None:
            self.now -= 1

        bus.on(ev.UpdateAccepted, taken)
        bus.on(ev.UpdateRejected, taken)


class Counted(ShiftTrainer):
    def __init__(self, shift: float, counter: Outstanding) -> None:
        super().__init__(shift, 10 + int(shift * 10), size=64)
        self.counter = counter

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        self.counter.trained()
        return super().fit(params, config, progress)


async def run(budget: int, monkeypatch: pytest.MonkeyPatch, *, threaded: bool = False) -> tuple[Params, int]:
    monkeypatch.setattr(FoldGate, "BUDGET_BYTES", budget)
    counter = Outstanding()
    trainers = [Counted(0.1 * (i + 1), counter) for i in range(8)]
    config = SessionConfig(rounds=3, min_clients=8, round_timeout_s=10, heartbeat_interval_s=None)
    async with asyncio.timeout(30):
        result = await run_federation(
            config,
            trainers,
            [t.num_examples for t in trainers],
            trainers[0].initial_params(0),
            observers=[counter.attach],
            threaded=threaded,
            hosted=False,  # the gate bounds client nodes; a host folds each update before the next fit
        )
    assert result.rounds == 3
    return result.params, counter.most


@pytest.mark.parametrize("threaded", [False, True])
async def test_a_big_model_is_folded_before_the_next_client_trains(
    monkeypatch: pytest.MonkeyPatch, threaded: bool
) -> None:
    gated, most = await run(1, monkeypatch, threaded=threaded)  # every model is "big"
    free, most_free = await run(1 << 30, monkeypatch, threaded=threaded)
    if threaded:
        # The training thread and the loop interleave as the OS schedules them: how many updates
        # are outstanding at once varies from run to run, but never beyond the gate's two.
        assert 1 <= most <= 2
    else:
        assert most == 1
        assert most_free == 8  # small models: the whole round at once, as before
    assert FoldGate.for_model(free.nbytes).limit >= 8  # with the big budget nobody would wait
    for name in free:  # same order of arrival, so the same sums, bit for bit
        np.testing.assert_array_equal(gated[name], free[name])


class Failing(ShiftTrainer):
    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        raise DataError("this client's data is unusable")


async def test_clients_without_an_update_give_their_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FoldGate, "BUDGET_BYTES", 1)
    trainers: list[ShiftTrainer] = [BadTrainer("nan"), Failing(0.0), ShiftTrainer(1.0), ShiftTrainer(1.0)]
    config = SessionConfig(rounds=2, min_clients=4, round_timeout_s=20, heartbeat_interval_s=None, quorum=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(30):
        result = await run_federation(config, trainers, [10] * 4, trainers[2].initial_params(0), hosted=False)
    # A rejected update and a failed fit each freed their slot: no round waited for its deadline.
    assert result.rounds == 2 and loop.time() - started < 10
    np.testing.assert_allclose(result.params["w"], 2.0)


def test_the_limit_follows_the_byte_budget() -> None:
    assert FoldGate.for_model(FoldGate.BUDGET_BYTES * 2).limit == 1
    assert FoldGate.for_model(40_000).limit == FoldGate.BUDGET_BYTES // 40_000
    assert FoldGate.for_model(FoldGate.BUDGET_BYTES, minimum=2).limit == 2


async def test_a_host_hands_over_a_big_model_before_it_trains_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_training, "CHUNK_BYTES", 1)  # every model is "big": one client per partial
    counter = Outstanding()
    trainers = [Counted(0.1 * (i + 1), counter) for i in range(8)]
    config = SessionConfig(rounds=2, min_clients=8, round_timeout_s=10, heartbeat_interval_s=None)
    async with asyncio.timeout(30):
        result = await run_federation(
            config, trainers, [t.num_examples for t in trainers], trainers[0].initial_params(0), hosted=True,
            observers=[counter.attach],
        )  # fmt: skip
    assert result.rounds == 2
    assert counter.most == 1  # folded before the next client trained: never two big updates alive
