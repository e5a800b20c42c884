"""Framework overhead of ``simulate``: per-round time versus the same work in a bare Python loop.

    python bench/simulate_overhead.py [--clients 10 100 1000]

Each client holds 50 synthetic samples x 1000 features (10 classes): the numpy softmax regression
has 10,010 parameters and does 5 local minibatch steps per round. The bare loop runs exactly the
same ``fit`` calls and a float64 weighted average, with no messages, events or validation. The
simulation runs twice: through the public app API (a ``fedhive.ClientApp`` whose ``train`` calls
the same trainer, as a user's app would: read-only weights in, results checked on the way out)
and with the trainers handed to the runtime directly (the internal path). All three run in this
process, alternating, and the figure is the median round of rounds 2..R. Prints a table and,
last, one JSON line.

The target is on wall time. On a machine shared with other work, wall time also counts the moments
the process waited for a core; the CPU-time columns (``time.process_time``, this process only) are
the steadier view of the same comparison. ``--quick`` runs fewer rounds and repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import fedhive
from fedhive.app.learner import FitConfig
from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import plan_simulation, run_federation

FEATURES, CLASSES, SAMPLES, STEPS = 1000, 10, 50, 5


def make_trainers(n: int, seed: int = 0) -> list[NumpyLogRegTrainer]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLASSES, FEATURES), dtype=np.float32)
    out = []
    for _ in range(n):
        y = rng.integers(0, CLASSES, SAMPLES)
        x = centers[y] + rng.standard_normal((SAMPLES, FEATURES), dtype=np.float32)
        out.append(NumpyLogRegTrainer(x, y, CLASSES))
    return out


def config(rounds: int, clients: int) -> SessionConfig:
    return SessionConfig(
        rounds=rounds,
        min_clients=clients,
        epochs=STEPS,
        batch_size=SAMPLES,
        lr=0.01,
        momentum=0.0,
        local_steps=STEPS,
        round_timeout_s=600,
    )


Stamp = tuple[float, float]  # (wall, CPU) seconds


def stamp() -> Stamp:
    return time.perf_counter(), time.process_time()


def bare_loop(trainers: list[NumpyLogRegTrainer], rounds: int) -> list[Stamp]:
    cfg = config(rounds, len(trainers))
    params = trainers[0].initial_params(0)
    times = []
    for r in range(1, rounds + 1):
        t = stamp()
        acc = {k: np.zeros(a.shape, np.float64) for k, a in params.items()}
        total = 0.0
        for i, tr in enumerate(trainers):
            res = tr.fit(params, cfg.fit_config(r, i))
            for k in acc:
                acc[k] += res.params[k] * float(res.num_examples)
            total += res.num_examples
        params = Params({k: (a / total).astype(np.float32) for k, a in acc.items()})
        done = stamp()
        times.append((done[0] - t[0], done[1] - t[1]))
    return times


class BenchApp:
    """A user's app in the class style: its own data per partition, its own training call."""

    def __init__(self, trainers: list[NumpyLogRegTrainer]) -> None:
        self.trainers = trainers

    def init(self, weights: Params, cfg: dict[str, object], ctx: fedhive.Context) -> Params:
        return self.trainers[0].initial_params(0)

    def train(self, weights: Params, cfg: dict[str, object], ctx: fedhive.Context) -> fedhive.TrainResult:
        fit = FitConfig(
            epochs=int(cfg["epochs"]),  # type: ignore[call-overload]
            batch_size=int(cfg["batch_size"]),  # type: ignore[call-overload]
            lr=float(cfg["lr"]),  # type: ignore[arg-type]
            momentum=float(cfg["momentum"]),  # type: ignore[arg-type]
            seed=int(cfg["seed"]),  # type: ignore[call-overload]
            max_steps=int(cfg["local_steps"]),  # type: ignore[call-overload]
        )
        res = self.trainers[int(ctx.node["partition_id"])].fit(weights, fit)
        return fedhive.TrainResult(res.params, res.num_examples, res.metrics)


def simulated(trainers: list[NumpyLogRegTrainer], rounds: int, *, via_app: bool) -> list[Stamp]:
    stamps: list[Stamp] = []

    def attach(bus: EventBus) -> None:
        bus.on(ev.RoundStarted, lambda e: stamps.append(stamp()) if e.round == 1 else None)
        bus.on(ev.RoundCompleted, lambda e: stamps.append(stamp()))

    cfg = config(rounds, len(trainers))
    if via_app:
        app = LoadedApp("bench", "bench", fedhive.ClientApp.from_object(BenchApp(trainers)), "0" * 64)
        plan = plan_simulation(cfg, app, len(trainers), evaluate="none")
        run = run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, observers=[attach])
    else:
        run = run_federation(
            cfg, trainers, [SAMPLES] * len(trainers), trainers[0].initial_params(0), observers=[attach]
        )
    asyncio.run(run)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and 2 repeats: a quick look")
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    rows = []
    for n in args.clients:
        rounds = 6 if not args.quick else (4 if n <= 100 else 3)
        trainers = make_trainers(n)
        bare: list[Stamp] = []
        sim: list[Stamp] = []
        internal: list[Stamp] = []
        for i in range(repeats):  # alternate (ABBA): machine drift and warm-up hit every side alike
            bare += bare_loop(trainers, rounds)[1:]
            for via_app in (True, False) if i % 2 == 0 else (False, True):
                (sim if via_app else internal).extend(simulated(trainers, rounds, via_app=via_app)[1:])
        b, s = statistics.median(t[0] for t in bare), statistics.median(t[0] for t in sim)
        i = statistics.median(t[0] for t in internal)
        bc, sc = statistics.median(t[1] for t in bare), statistics.median(t[1] for t in sim)
        rows.append(
            {
                "clients": n,
                "bare_round_s": round(b, 5),
                "simulate_round_s": round(s, 5),
                "overhead_ms": round(1000 * (s - b), 2),
                "overhead_pct": round(100 * (s - b) / b, 1),
                "internal_round_s": round(i, 5),
                "internal_overhead_pct": round(100 * (i - b) / b, 1),
                "bare_cpu_round_s": round(bc, 5),
                "simulate_cpu_round_s": round(sc, 5),
                "cpu_overhead_pct": round(100 * (sc - bc) / bc, 1),
            }
        )
    t = Table(
        title=f"simulate vs bare loop: numpy softmax regression, {FEATURES * CLASSES + CLASSES:,} params, "
        f"{STEPS} local steps (median round)"
    )
    cols = (
        "clients",
        "bare loop s/round",
        "simulate (app API) s/round",
        "overhead ms/round",
        "overhead %",
        "CPU overhead %",
        "internal path overhead %",
    )
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["clients"]),
            f"{r['bare_round_s']:.4f}",
            f"{r['simulate_round_s']:.4f}",
            f"{r['overhead_ms']:.2f}",
            f"{r['overhead_pct']:.1f}",
            f"{r['cpu_overhead_pct']:.1f}",
            f"{r['internal_overhead_pct']:.1f}",
        )
    Console().print(t)
    print(json.dumps({"bench": "simulate_overhead", "rows": rows}))


if __name__ == "__main__":
    main()
