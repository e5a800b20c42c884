"""Worker processes train a simulation's clients: the same bits whatever their number, the same
failures with their reasons, and a worker killed or stuck costs only the clients it held."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhive.app.loader import load_app
from fedhive.core.params import Params
from fedhive.errors import AppError
from fedhive.runtime import events as ev
from fedhive.runtime import worker_pool
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.runtime.worker_pool import WorkerPool, app_source

APPS = Path(__file__).parent / "worker_apps.py"
LINEAR = "linear_app:app"


class Record:
    def __init__(self) -> None:
        self.accepted: list[tuple[int, str, int, tuple[tuple[str, float], ...]]] = []
        self.rejected: list[tuple[int, str, str]] = []
        self.evaluated: list[dict[str, float]] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: self.accepted.append(
            (e.round, e.client_id, e.num_examples, tuple(sorted(e.metrics.items())))
        ))  # fmt: skip
        bus.on(ev.UpdateRejected, lambda e: self.rejected.append((e.round, e.client_id, e.reason)))
        bus.on(ev.RoundCompleted, lambda e: self.evaluated.append(dict(e.metrics)))


async def simulate(
    ref: str,
    clients: int,
    workers: int,
    *,
    adaptive: bool = False,
    timeout_s: float = 120,
    **settings: object,
) -> tuple[Params, Record, WorkerPool | None]:
    loaded = load_app(ref)
    config = SessionConfig(min_clients=clients, **{"rounds": 2, "epochs": 2, "lr": 0.05, "seed": 4, **settings})
    plan = plan_simulation(config, loaded, clients, evaluate="clients")
    pool = None
    if workers > 1:
        source = app_source(loaded, {}, clients)
        assert source is not None
        pool = WorkerPool(source, [None] * workers, adaptive=adaptive)
    record = Record()
    try:
        async with asyncio.timeout(timeout_s):
            result = await run_federation(
                plan.config,
                plan.trainers,
                plan.num_examples,
                plan.initial_params,
                observers=[record.attach],
                workers=pool,
            )
    finally:
        if pool is not None:
            pool.close()
    return result.params, record, pool


def same_bits(a: Params, b: Params) -> bool:
    return list(a) == list(b) and all(a[n].tobytes() == b[n].tobytes() for n in a)


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
async def test_the_same_seed_gives_the_same_bits_with_any_number_of_workers(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 150 clients: three chunks per round; and as few update slots as a huge model would get (one
    # per worker plus one), reused many times over, workers waiting for the fold to free one.
    monkeypatch.setattr(worker_pool, "slot_count", lambda _model_bytes, workers: workers + 1)
    here, by_one, _ = await simulate(LINEAR, 150, 1, strategy=strategy, fraction=0.9)
    two, by_two, _ = await simulate(LINEAR, 150, 2, strategy=strategy, fraction=0.9)
    three, by_three, _ = await simulate(LINEAR, 150, 3, strategy=strategy, fraction=0.9)
    assert same_bits(here, two) and same_bits(here, three)
    assert by_one.accepted == by_two.accepted == by_three.accepted  # clients, examples, metrics, in order
    assert len(by_one.accepted) == 2 * 135
    assert by_one.evaluated == by_two.evaluated == by_three.evaluated  # the clients' own evaluations


async def test_a_client_keeps_its_state_whichever_worker_trains_it() -> None:
    here, _, _ = await simulate(f"{APPS}:stateful", 12, 1, rounds=4, fraction=0.75)
    there, _, _ = await simulate(f"{APPS}:stateful", 12, 3, rounds=4, fraction=0.75)
    assert same_bits(here, there)


async def test_an_app_that_raises_costs_that_clients_update_with_its_reason() -> None:
    here, by_one, _ = await simulate(f"{APPS}:raising", 6, 1)
    there, by_two, _ = await simulate(f"{APPS}:raising", 6, 2)
    assert by_two.rejected == by_one.rejected
    assert [(r, c) for r, c, _ in by_two.rejected] == [(1, "client-1"), (2, "client-1")]
    assert "train raised ValueError: no data for client client-1" in by_two.rejected[0][2]
    assert same_bits(here, there)


async def test_a_killed_worker_fails_the_client_it_held_and_the_session_goes_on() -> None:
    here, _, _ = await simulate(f"{APPS}:killing", 6, 1)  # in one process nothing is killed
    there, record, _ = await simulate(f"{APPS}:killing", 6, 2)
    assert [(r, c) for r, c, _ in record.rejected] == [(1, "client-2")]
    assert "its worker process died (killed by SIGKILL) while training it" in record.rejected[0][2]
    assert sum(1 for r, *_ in record.accepted if r == 2) == 6  # a new worker took its place
    assert not same_bits(here, there)  # round 1 went without client 2, as the record says


async def test_a_worker_past_the_round_deadline_is_stopped_and_replaced() -> None:
    _, record, _ = await simulate(f"{APPS}:hanging", 4, 2, round_timeout_s=3.0, timeout_s=60)
    why = "still training it at the round's deadline: its worker process was stopped"
    assert record.rejected == [(1, "client-0", why)]
    assert [c for r, c, *_ in record.accepted if r == 1] == ["client-1", "client-2", "client-3"]  # in time
    assert sum(1 for r, *_ in record.accepted if r == 2) == 4


async def test_a_worker_that_cannot_load_the_app_fails_the_start_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_APPS_BROKEN", "1")
    with pytest.raises(AppError, match=r"could not load the app: .*RuntimeError: this machine has no licence"):
        await simulate(f"{APPS}:raising", 4, 2)


async def test_an_adaptive_pool_takes_over_slow_clients_mid_session_with_the_same_bits() -> None:
    here, _, _ = await simulate(f"{APPS}:slow", 12, 1, rounds=10)
    there, _, pool = await simulate(f"{APPS}:slow", 12, 2, adaptive=True, rounds=10)
    assert pool is not None and pool.busy_s > 0  # the workers trained some of them
    assert same_bits(here, there)


async def test_an_adaptive_pool_never_starts_for_cheap_clients() -> None:
    _, _, pool = await simulate(LINEAR, 12, 2, adaptive=True, rounds=3)
    assert pool is not None and pool.pids == [] and pool.busy_s == 0


async def test_the_torch_example_gives_the_same_bits_in_workers() -> None:
    pytest.importorskip("torch")
    example = str(Path(__file__).parents[2] / "examples" / "torch_mnist")
    here, _, _ = await simulate(example, 3, 1, rounds=1, epochs=1, batch_size=64, timeout_s=240)
    there, _, _ = await simulate(example, 3, 2, rounds=1, epochs=1, batch_size=64, timeout_s=240)
    assert same_bits(here, there)
    assert all(np.isfinite(a).all() for a in there.values())


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
async def test_workers_are_fresh_interpreters_and_end_with_the_pool() -> None:
    # Never a fork of this process, whose BLAS, torch and asyncio threads may be running.
    loaded = load_app(LINEAR)
    source = app_source(loaded, {}, 2)
    assert source is not None
    pool = WorkerPool(source, [None, None])
    try:
        await pool.start(plan_simulation(SessionConfig(), loaded, 2).initial_params.spec)  # each has loaded the app
        pids = pool.pids
        cmdlines = [proc_file(pid, "cmdline").split(b"\0") for pid in pids]
    finally:
        await pool.aclose()
    assert all(c[:3] == [sys.executable.encode(), b"-m", b"fedhive.runtime.training_worker"] for c in cmdlines)
    assert not any(running(pid) for pid in pids)  # reaped, not left as zombies


def proc_file(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
