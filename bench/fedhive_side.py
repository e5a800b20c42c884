"""fedhive's side of bench/compare_flower.py; runs with fedhive's virtual environment as its own process.

    .venv/bin/python bench/fedhive_side.py WORKLOAD CLIENTS ROUNDS [--dataset D --partition P]
    .venv/bin/python bench/fedhive_side.py export FILE.npz CLIENTS [--dataset D --partition P]

WORKLOAD is ``logreg``, ``copy`` or ``shards`` (see bench/workload.py). The session runs as a user
of the library would run it: ``run_federation`` (what ``fedhive simulate`` calls) with one trainer
per virtual client, defaults everywhere else (memory transport, inline training). The compute-bound
workloads, ``logreg-compute`` (bench/workload_app.py) and ``cnn`` (the PyTorch example app,
examples/torch_mnist, on mnist5k), run as apps loaded by reference, as ``fedhive simulate --app``
runs them, in ``--workers`` worker processes (default: one per core), and report the time the
workers spent in the app (``compute_s``: the clients' summed compute). For ``shards``
the trainers are fedhive's own ``logreg-np`` ones, built by ``plan_simulation`` from a built-in
data set and partition (``--dataset digits --partition dirichlet:0.5``); ``export`` writes those
very shards, the test split and the initial model to a file that the Flower side loads. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

import workload
from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn, Trainer
from fedhive.app.loader import load_app
from fedhive.cli.fast_exit import exit_now
from fedhive.core.params import Params
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import SimulationPlan, plan_simulation, run_federation
from fedhive.runtime.worker_devices import cores, one_thread_per_trainer
from fedhive.runtime.worker_pool import WorkerPool, early_source
from fedhive.runtime.worker_timeline import mark

BENCH = Path(__file__).resolve().parent


class SyntheticLogReg:
    """Client ``index`` of the logistic-regression workload: its data is derived when it trains."""

    def __init__(self, index: int) -> None:
        self.index = index

    def initial_params(self, seed: int) -> Params:
        return Params(workload.logreg_initial(seed))

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        x, y = workload.logreg_client_data(workload.SEED, self.index)
        w, b, loss, acc = workload.logreg_fit(
            params["weight"], params["bias"], x, y, config.max_steps or workload.STEPS, config.lr
        )
        return FitResult(Params({"weight": w, "bias": b}), len(y), {"loss": loss, "accuracy": acc})

    def evaluate(self, params: Params) -> EvalResult:
        raise NotImplementedError("no held-out data: the benchmark evaluates nothing")


class CopyTrainer:
    """The 25M-parameter model whose update is a copy of what it received."""

    def initial_params(self, seed: int) -> Params:
        return Params(workload.copy_initial(seed))

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        return FitResult(Params(workload.copy_fit(dict(params))), workload.SAMPLES, {"loss": 0.0, "accuracy": 0.0})

    def evaluate(self, params: Params) -> EvalResult:
        raise NotImplementedError


def session(kind: str, clients: int, rounds: int) -> SessionConfig:
    common = {"rounds": rounds, "min_clients": clients, "round_timeout_s": 3600, "seed": workload.SEED}
    if kind == "shards":
        return SessionConfig(model="logreg-np", **common, **workload.SOFTMAX_HP)
    return SessionConfig(
        lr=workload.LR, momentum=0.0, local_steps=workload.STEPS, batch_size=workload.SAMPLES, **common
    )


def app_plan(kind: str, clients: int, rounds: int, workers: int) -> tuple[SimulationPlan, WorkerPool | None]:
    """A compute-bound case as an app: its plan, and its worker processes, launched before this
    process loads the app (``early_source``) so that the workers' imports (torch, the app's own)
    overlap this process's; ``adopt`` then checks that both load the same app."""
    common = {"rounds": rounds, "min_clients": clients, "round_timeout_s": 3600, "seed": workload.SEED}
    compute = kind == "logreg-compute"
    ref = f"{BENCH / 'workload_app.py'}:app" if compute else str(BENCH.parent / "examples" / "torch_mnist")
    one_thread_per_trainer()
    pool = WorkerPool(early_source(ref, {}, clients), [None] * workers) if workers > 1 else None
    mark("workers-spawned")
    loaded = load_app(ref)
    mark("app-loaded")
    if kind == "logreg-compute":
        hp = {"lr": workload.LR, "momentum": 0.0, "local_steps": workload.COMPUTE_STEPS, "batch_size": workload.SAMPLES}
        cfg = SessionConfig(**common, **hp)
    else:
        cfg = SessionConfig(**common, **workload.CNN_HP, run_config=dict(workload.CNN_DATA))
    assert pool is None or pool.adopt(loaded), "the workers load another app than this process"
    plan = plan_simulation(cfg, loaded, clients, evaluate="none")
    mark("planned")
    return plan, pool


def export_shards(path: str, clients: int, spec: DataSpec) -> None:
    cfg = session("shards", clients, 1)
    fed = prepare(spec, clients, cfg.seed)
    from fedhive.cli.site_options import plan_builtin  # the data cases only: the CLI's imports are not free

    init = plan_builtin(cfg, spec, clients).initial_params
    arrays = {f"x{i}": s.x for i, s in enumerate(fed.shards)} | {f"y{i}": s.y for i, s in enumerate(fed.shards)}
    np.savez(path, test_x=fed.test.x, test_y=fed.test.y, init_weight=init["weight"], init_bias=init["bias"], **arrays)


def main() -> None:
    ap = argparse.ArgumentParser()
    exporting = sys.argv[1:2] == ["export"]
    if exporting:
        ap.add_argument("export", choices=["export"])
        ap.add_argument("file")
        ap.add_argument("clients", type=int)
    else:
        ap.add_argument("workload", choices=["logreg", "copy", "shards", "logreg-compute", "cnn"])
        ap.add_argument("clients", type=int)
        ap.add_argument("rounds", type=int)
        ap.add_argument("--workers", type=int, default=cores(), help="compute-bound workloads: worker processes")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--partition", default="dirichlet:0.5")
    ap.add_argument("--data", help="ignored: the Flower side's shard file (here rebuilt from the same spec)")
    args = ap.parse_args()
    mark("imported")
    spec = DataSpec(dataset=args.dataset, partition=args.partition)
    if exporting:
        export_shards(args.file, args.clients, spec)
        return
    cfg = session(args.workload, args.clients, args.rounds)
    evaluator: Trainer | None = None
    trainers: list[Trainer]
    pool: WorkerPool | None = None
    if args.workload in ("logreg-compute", "cnn"):
        plan, pool = app_plan(args.workload, args.clients, args.rounds, args.workers)
        cfg, trainers, counts, initial = plan.config, plan.trainers, plan.num_examples, plan.initial_params
    elif args.workload == "logreg":
        trainers = [SyntheticLogReg(i) for i in range(args.clients)]
        counts, initial = [workload.SAMPLES] * args.clients, trainers[0].initial_params(cfg.seed)
    elif args.workload == "copy":
        trainers = [CopyTrainer() for _ in range(args.clients)]
        counts, initial = [workload.SAMPLES] * args.clients, trainers[0].initial_params(cfg.seed)
    else:
        from fedhive.cli.site_options import plan_builtin

        plan = plan_builtin(cfg, spec, args.clients)
        trainers, counts, initial, evaluator = plan.trainers, plan.num_examples, plan.initial_params, plan.evaluator

    stamps: list[float] = []
    accuracy: list[float] = []

    def completed(e: ev.RoundCompleted) -> None:
        mark("round-completed", round=e.round)
        stamps.append(time.time())
        if evaluator is not None:
            accuracy.append(e.metrics["accuracy"])

    def attach(bus: EventBus) -> None:
        bus.on(ev.RoundStarted, lambda e: stamps.append(time.time()) if (e.round, e.attempt) == (1, 0) else None)
        bus.on(ev.RoundStarted, lambda e: mark("round-started", round=e.round))
        bus.on(ev.RoundCompleted, completed)

    federation = run_federation(cfg, trainers, counts, initial, evaluator=evaluator, observers=[attach], workers=pool)
    del initial  # the harness keeps no copy of its own: memory is the framework's (flower_side.py alike)
    try:
        result = asyncio.run(federation)
    finally:
        if pool is not None:
            pool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    mark("session-done", main_cpu_s=usage.ru_utime + usage.ru_stime)
    print(
        json.dumps(
            {
                "side": "fedhive",
                "round_s": [b - a for a, b in itertools.pairwise(stamps)],
                "round_end": stamps[1:],
                "accuracy": accuracy,
                "norm": workload.norm(dict(result.params)),
                "workers": pool.size if pool is not None else 1,
                "compute_s": pool.busy_s if pool is not None else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
    exit_now(0)  # as `fedhive simulate` ends (fedhive.cli.fast_exit): no interpreter teardown
