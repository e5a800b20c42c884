"""Heterogeneous virtual clients (runtime/heterogeneity.py): speeds and availability, the same for a
seed, applied for real (later answers in wall time), in sync and async sessions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from fakes import ShiftTrainer
from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.heterogeneity import Heterogeneity, availability, speed_factors
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import client_id, run_federation

IDS = [client_id(i, 100) for i in range(100)]


def test_speed_factors_are_the_same_for_a_seed_and_differ_across_seeds() -> None:
    a, b, c = (
        speed_factors("lognormal:0.5", 100, 7),
        speed_factors("lognormal:0.5", 100, 7),
        speed_factors("lognormal:0.5", 100, 8),
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() == 1.0 and a.max() > 1.5  # below 1 counts as 1: nobody trains faster than the machine
    slow = speed_factors("slow:0.2x10", 100, 3)
    assert sorted(set(slow.tolist())) == [1.0, 10.0] and int((slow == 10).sum()) == 20
    np.testing.assert_array_equal(slow, speed_factors("slow:0.2x10", 100, 3))
    assert not np.array_equal(slow, speed_factors("slow:0.2x10", 100, 4))  # other clients drawn
    based = speed_factors("slow:0.2x10@20", 100, 3)
    np.testing.assert_array_equal(based, 20 * slow)  # the same clients slow, every one 20x besides


@pytest.mark.parametrize("spec", ["fast", "lognormal:x", "slow:0.2", "slow:2x10", "slow:0.2x0.5", "lognormal:1@0"])
def test_a_bad_speed_is_one_clear_error(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"--client-speed must be lognormal:SIGMA .* or slow:SHARExFACTOR"):
        speed_factors(spec, 10, 0)


def online_share(windows: object, horizon: float, step: float) -> float:
    times = np.arange(0.0, horizon, step)
    return float(np.mean([windows.next_online(t) == t for t in times]))  # type: ignore[attr-defined]


def test_availability_is_the_same_for_a_seed_and_online_the_share_of_the_time() -> None:
    first, again, other = availability("0.8:2", IDS, 5), availability("0.8:2", IDS, 5), availability("0.8:2", IDS, 6)
    grid = np.arange(0.0, 30.0, 0.37)
    schedule = [[w.next_online(t) for t in grid] for w in first]
    assert schedule == [[w.next_online(t) for t in grid] for w in again]
    assert schedule != [[w.next_online(t) for t in grid] for w in other]
    # Each client drawn on its own; over many cycles the population is online 80 % of the time.
    shares = [online_share(w, 200.0, 0.5) for w in availability("0.8:2", IDS, 5)]
    assert len({round(s, 3) for s in shares}) > 10
    assert abs(float(np.mean(shares)) - 0.8) < 0.03
    assert all(w.next_online(123.0) == 123.0 for w in availability("1", IDS, 0))
    with pytest.raises(ConfigError, match="--availability must be SHARE"):
        availability("1.5", IDS, 0)


def test_an_availability_trace(tmp_path: Path) -> None:
    trace = tmp_path / "online.csv"
    trace.write_text("client,start_s,end_s\nclient-03,0,5\nclient-03,10,20\n7,2.5,3\n")
    windows = availability(str(trace), IDS, 0)
    assert [windows[3].next_online(t) for t in (0, 4.9, 5, 12, 20)] == [0, 4.9, 10, 12, None]
    assert windows[7].next_online(0) == 2.5 and windows[7].next_online(3) is None
    assert windows[0].next_online(1e6) == 1e6  # not in the trace: always online
    trace.write_text("client,start_s,end_s\nclient-03,5,1\n")
    with pytest.raises(ConfigError, match=r"online.csv line 2: start_s and end_s must be numbers"):
        availability(str(trace), IDS, 0)
    trace.write_text("client,start_s,end_s\nnobody,0,1\n")
    with pytest.raises(ConfigError, match="line 2: no client 'nobody'"):
        availability(str(trace), IDS, 0)
    with pytest.raises(ConfigError, match="cannot read"):
        availability(str(tmp_path / "missing.csv"), IDS, 0)


class Busy(ShiftTrainer):
    """Trains for ``cpu_s`` of CPU time (a slowdown multiplies the measured CPU time)."""

    def __init__(self, cpu_s: float) -> None:
        super().__init__(1.0)
        self.cpu_s = cpu_s

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        end = time.process_time() + self.cpu_s
        while time.process_time() < end:
            pass
        return super().fit(params, config, progress)


class Arrivals:
    """When each client's update was accepted, in seconds since its round started."""

    def __init__(self) -> None:
        self.started = 0.0
        self.after: dict[str, list[float]] = {}

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.RoundStarted, self._round)
        bus.on(ev.UpdateAccepted, self._update)

    def _round(self, _: ev.RoundStarted) -> None:
        self.started = time.monotonic()

    def _update(self, e: ev.UpdateAccepted) -> None:
        self.after.setdefault(e.client_id, []).append(time.monotonic() - self.started)


async def federation(het: Heterogeneity, trainers: list[ShiftTrainer], arrivals: Arrivals, **settings: object) -> None:
    config = SessionConfig(**{"rounds": 2, "min_clients": len(trainers), "round_timeout_s": 30.0, **settings})  # type: ignore[arg-type]
    async with asyncio.timeout(60):
        await run_federation(
            config, het.trainers(trainers), [10] * len(trainers), trainers[0].initial_params(0),
            observers=[arrivals.attach], network=het.network(), hosted=False,
        )  # fmt: skip


async def test_a_slow_client_really_answers_later() -> None:
    ids = [client_id(i, 2) for i in range(2)]
    het = Heterogeneity(ids, 0, speed="slow:0.5x6")
    slow = ids[int(np.argmax(het.factors))]
    assert sorted(het.factors.tolist()) == [1.0, 6.0]
    arrivals = Arrivals()
    await federation(het, [Busy(0.02), Busy(0.02)], arrivals)
    # Its 0.02 s of training counts 6x: it waits 5 x 0.02 s (at least) after it; the loop goes on.
    assert all(t >= 0.1 for t in arrivals.after[slow])
    fast = next(c for c in ids if c != slow)
    assert all(f < s for f, s in zip(arrivals.after[fast], arrivals.after[slow], strict=True))


async def test_an_offline_client_trains_once_it_is_online(tmp_path: Path) -> None:
    trace = tmp_path / "online.csv"
    trace.write_text("client,start_s,end_s\n1,0.3,1000\n")  # client-1 comes online 0.3 s in
    ids = [client_id(i, 2) for i in range(2)]
    het = Heterogeneity(ids, 0, online=str(trace))
    arrivals = Arrivals()
    await federation(het, [ShiftTrainer(1.0), ShiftTrainer(1.0)], arrivals, rounds=1)
    assert het.clock.start is not None
    assert arrivals.after["client-1"][0] >= 0.3 - (arrivals.started - het.clock.start) - 1e-3
    assert arrivals.after["client-0"][0] < arrivals.after["client-1"][0]


async def test_an_async_session_of_heterogeneous_clients_does_not_wait_for_the_slow() -> None:
    ids = [client_id(i, 4) for i in range(4)]
    het = Heterogeneity(ids, 1, speed="slow:0.25x40")
    slow = ids[int(np.argmax(het.factors))]
    arrivals = Arrivals()
    trainers = [Busy(0.005) for _ in ids]
    await federation(het, trainers, arrivals, rounds=6, aggregation="async", buffer_size=3)
    counts = {c: len(arrivals.after.get(c, [])) for c in ids}
    assert sum(counts.values()) == 18 and counts[slow] < min(n for c, n in counts.items() if c != slow)
