"""How many worker processes a simulation starts and which GPU each one sees (no GPU needed:
a worker's GPU is its environment, which a worker app reports back)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedhive.app.loader import load_app
from fedhive.errors import ConfigError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.runtime.worker_devices import visible_gpus, worker_devices, worker_env
from fedhive.runtime.worker_pool import WorkerPool, app_source

APPS = Path(__file__).parent / "worker_apps.py"


def test_one_worker_per_core_by_default_and_never_more_than_clients() -> None:
    assert worker_devices(None, cores=8, gpus=[], clients=100) == [None] * 8
    assert worker_devices(None, cores=8, gpus=[], clients=3) == [None] * 3
    assert worker_devices(4, cores=2, gpus=[], clients=100) == [None] * 4  # asked for: oversubscribed


def test_one_worker_per_gpu_by_default_and_gpus_shared_round_robin_when_asked_for_more() -> None:
    gpus = ["cuda:0", "cuda:1"]
    assert worker_devices(None, cores=16, gpus=gpus, clients=100) == gpus
    assert worker_devices(5, cores=16, gpus=gpus, clients=100) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(None, cores=16, gpus=["mps"], clients=100) == ["mps"]


def test_zero_workers_is_a_mistake() -> None:
    with pytest.raises(ConfigError, match="--workers must be at least 1, got 0"):
        worker_devices(0, cores=2, gpus=[], clients=10)


def test_a_worker_sees_only_its_gpu_and_one_math_thread() -> None:
    env = worker_env("cuda:3", {"PATH": "/bin", "PYTHONPATH": "/elsewhere"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["PATH"] == "/bin"
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[1:] == ["/elsewhere"]  # fedhive's own root first
    assert "CUDA_VISIBLE_DEVICES" not in worker_env("mps", {}) and "CUDA_VISIBLE_DEVICES" not in worker_env(None, {})
    assert worker_env(None, {"OMP_NUM_THREADS": "3"})["OPENBLAS_NUM_THREADS"] == "3"  # the user's choice, for all


def fake_torch(cuda: int, mps: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        cuda=SimpleNamespace(device_count=lambda: cuda),
        backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps)),
    )


def test_gpus_are_shared_out_only_for_a_torch_app_that_leaves_the_device_to_pick_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == []  # the app did not import torch
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=2))
    assert visible_gpus() == ["cuda:0", "cuda:1"]
    assert visible_gpus("auto") == ["cuda:0", "cuda:1"]
    assert visible_gpus("cpu") == [] and visible_gpus("cuda:1") == []  # the site pinned a device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,-1,2")
    assert visible_gpus() == ["cuda:5", "cuda:7"]  # as CUDA reads the list: up to the first invalid id
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=0, mps=True))
    assert visible_gpus() == ["mps"]


async def test_each_worker_process_runs_with_the_gpu_it_was_given() -> None:
    loaded = load_app(f"{APPS}:reporting")
    plan = plan_simulation(SessionConfig(rounds=1, min_clients=8, seed=1), loaded, 8, evaluate="none")
    source = app_source(loaded, {}, 8)
    assert source is not None
    seen: list[dict[str, float]] = []

    def attach(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: seen.append(dict(e.metrics)))

    pool = WorkerPool(source, ["cuda:7", "cuda:9"])  # ids only: nothing here touches a GPU
    try:
        async with asyncio.timeout(120):
            await run_federation(
                plan.config, plan.trainers, plan.num_examples, plan.initial_params, observers=[attach], workers=pool
            )
    finally:
        pool.close()
    assert len(seen) == 8
    assert {m["visible_gpu"] for m in seen} == {7.0, 9.0}
    assert {m["blas_threads"] for m in seen} == {1.0}
