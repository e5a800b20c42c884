"""The round logic of DESIGN.md section 5, on the memory transport with fake trainers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fakes import BadTrainer, ShiftTrainer, SilentTrainer
from fedhive.errors import SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(object, self.events.append)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def cfg(**kw: object) -> SessionConfig:
    base: dict[str, object] = {"rounds": 2, "min_clients": 2, "round_timeout_s": 5.0}
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(params=[True, False], ids=["host", "nodes"])
def hosted(request: pytest.FixtureRequest) -> bool:
    """Virtual clients behind one ClientHost (simulate's default), or one ClientNode each."""
    return bool(request.param)


async def run(
    config: SessionConfig,
    trainers: list,
    rec: Recorder | None = None,
    *,
    threaded: bool = False,
    hosted: bool | None = None,
):
    examples = [t.num_examples for t in trainers]
    async with asyncio.timeout(30):
        return await run_federation(
            config,
            trainers,
            examples,
            trainers[0].initial_params(0),
            observers=[rec.attach] if rec else [],
            threaded=threaded,
            hosted=hosted,
        )


async def test_weighted_fedavg_over_rounds(hosted: bool) -> None:
    trainers = [ShiftTrainer(1.0, 10), ShiftTrainer(3.0, 30)]
    result = await run(cfg(rounds=3), trainers, hosted=hosted)
    # each round moves by the example-weighted mean shift (10*1 + 30*3) / 40 = 2.5
    np.testing.assert_allclose(result.params["w"], np.full(4, 7.5, np.float32))
    assert result.rounds == 3
    assert all(t.calls == 3 for t in trainers)


async def test_wrong_shape_and_nan_updates_are_rejected_and_round_goes_on(hosted: bool) -> None:
    rec = Recorder()
    trainers = [ShiftTrainer(2.0, 10), ShiftTrainer(2.0, 10), BadTrainer("shape"), BadTrainer("nan")]
    result = await run(cfg(rounds=2, min_clients=4, quorum=0.5), trainers, rec, hosted=hosted)
    np.testing.assert_allclose(result.params["w"], np.full(4, 4.0, np.float32))  # only the good ones count
    reasons = [e.reason for e in rec.of(ev.UpdateRejected)]
    assert sum("shape" in r for r in reasons) == 2
    assert sum("NaN" in r for r in reasons) == 2
    assert [e.num_updates for e in rec.of(ev.RoundCompleted)] == [2, 2]


async def test_silent_client_cannot_hang_a_round(hosted: bool) -> None:
    rec = Recorder()
    silent = SilentTrainer()
    trainers = [ShiftTrainer(1.0), ShiftTrainer(1.0), silent]
    try:
        # threaded: an inline (simulation) client that hangs would hang the whole loop with it
        result = await run(
            cfg(rounds=1, min_clients=3, round_timeout_s=0.5, quorum=0.6), trainers, rec, threaded=True, hosted=hosted
        )
    finally:
        silent.release.set()
    assert result.rounds == 1
    done = rec.of(ev.RoundCompleted)[0]
    assert done.num_updates == 2 and done.late_or_missing == ["client-2"]


async def test_quorum_impossible_retries_then_fails_with_reason(hosted: bool) -> None:
    rec = Recorder()
    trainers = [ShiftTrainer(1.0), BadTrainer("nan"), BadTrainer("nan")]
    with pytest.raises(SessionFailed) as info:
        await run(cfg(rounds=1, min_clients=3, quorum=1.0, max_round_retries=1), trainers, rec, hosted=hosted)
    assert "1 of 3 selected clients sent a valid update" in info.value.reason
    assert "gave up after 2 attempts" in info.value.reason
    assert len(rec.of(ev.RoundRetried)) == 1


async def test_registration_deadline_fails_clearly() -> None:
    with pytest.raises(SessionFailed, match="only 1 of the 3 required clients registered"):
        await asyncio.wait_for(
            run_federation(
                cfg(min_clients=3, registration_timeout_s=0.3),
                [ShiftTrainer(1.0)],
                [10],
                ShiftTrainer(1.0).initial_params(0),
            ),
            timeout=10,
        )


async def test_fraction_selects_a_deterministic_subset() -> None:
    rec1, rec2 = Recorder(), Recorder()
    await run(cfg(rounds=3, min_clients=6, fraction=0.5, seed=7), [ShiftTrainer(1.0) for _ in range(6)], rec1)
    await run(cfg(rounds=3, min_clients=6, fraction=0.5, seed=7), [ShiftTrainer(1.0) for _ in range(6)], rec2)
    sel1 = [e.selected for e in rec1.of(ev.RoundStarted)]
    assert all(len(s) == 3 for s in sel1)
    assert sel1 == [e.selected for e in rec2.of(ev.RoundStarted)]
    assert len({tuple(s) for s in sel1}) > 1  # not the same clients every round
