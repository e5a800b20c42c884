"""Worker processes launched before the simulation's process loads the app (``early_source``):
their imports overlap its own, and the run is the same bits as with workers started after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedhive.app.loader import load_app
from fedhive.core.params import Params
from fedhive.errors import AppError
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import launch_early, plan_simulation, run_federation, start_workers
from fedhive.runtime.worker_pool import WorkerPool, early_source

APPS = Path(__file__).parent / "worker_apps.py"
LINEAR = "linear_app:app"


async def train(pool: WorkerPool | None) -> Params:
    loaded = load_app(LINEAR)
    if pool is not None:
        assert pool.adopt(loaded)
    config = SessionConfig(min_clients=20, rounds=2, epochs=2, lr=0.05, seed=4)
    plan = plan_simulation(config, loaded, 20, evaluate="clients")
    try:
        async with asyncio.timeout(120):
            result = await run_federation(
                plan.config, plan.trainers, plan.num_examples, plan.initial_params, workers=pool
            )
    finally:
        if pool is not None:
            pool.close()
    return result.params


async def test_workers_launched_before_the_app_is_loaded_give_the_same_bits() -> None:
    early = WorkerPool(early_source(LINEAR, {}, 20), [None, None])  # launched before load_app
    there = await train(early)
    here = await train(None)
    assert early.busy_s > 0  # the workers trained the clients
    assert list(here) == list(there) and all(here[n].tobytes() == there[n].tobytes() for n in here)


async def test_workers_launched_for_another_app_are_not_adopted() -> None:
    pool = WorkerPool(early_source(f"{APPS}:stateful", {}, 2), [None, None])
    try:
        loaded = load_app(LINEAR)
        assert not pool.adopt(loaded)  # the caller closes the pool and trains in its own process
        spec = plan_simulation(SessionConfig(), loaded, 2).initial_params.spec
        with pytest.raises(AppError, match="adopt"):  # never started unchecked
            await pool.start(spec)
    finally:
        await pool.aclose()


SLOW_TEARDOWN = """
import atexit
import time

from linear_app import app  # noqa: F401  (the app itself is linear_app's)

atexit.register(time.sleep, 60)  # an interpreter teardown that would hold the session's end
"""


async def test_a_worker_leaves_without_the_interpreters_teardown(tmp_path: Path) -> None:
    # Ended as it was before, a worker would sit in its atexit handlers until the pool kills it
    # (SIGKILL after a few seconds): it exits by itself at once instead, with code 0.
    app_file = tmp_path / "slow_teardown.py"
    app_file.write_text(SLOW_TEARDOWN)
    ref = f"{app_file}:app"
    pool = WorkerPool(early_source(ref, {}, 2), [None, None])
    try:
        loaded = load_app(ref)
        assert pool.adopt(loaded)
        async with asyncio.timeout(120):
            await pool.start(plan_simulation(SessionConfig(), loaded, 2).initial_params.spec)
    finally:
        await pool.aclose()
    assert [p.returncode for p in pool._procs] == [0, 0]


def test_start_workers_keeps_an_early_pool_only_for_the_app_it_loads() -> None:
    # What `fedhive simulate --workers 2` does: workers launched from the reference first, then
    # kept if they load the app this process loaded, closed (and replaced) otherwise.
    config = SessionConfig(min_clients=4)
    loaded = load_app(LINEAR)
    early = launch_early(2, LINEAR, {}, 4)
    assert early is not None and early.pids
    pool, why_not = start_workers(2, loaded, {}, 4, config, early)
    try:
        assert pool is early and why_not is None
    finally:
        early.close()
    other = launch_early(2, f"{APPS}:stateful", {}, 4)
    assert other is not None
    pool, why_not = start_workers(2, loaded, {}, 4, config, other)
    try:
        assert pool is not None and pool is not other and why_not is None
        assert not other.pids  # closed: its workers load another app
    finally:
        if pool is not None:
            pool.close()
    assert launch_early(None, LINEAR, {}, 4) is None and launch_early(1, LINEAR, {}, 4) is None
