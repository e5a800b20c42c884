"""A population far larger than a round: set-up, memory and per-round framework overhead.

    python bench/population.py [--sizes 100000 1000000 15000000] [--per-round 1000] [--rounds 5]

Each size runs in a fresh process (its peak RSS is its own): ``plan_population`` and
``run_population``, what ``fedhive simulate --clients N --per-round K`` runs, with a run directory
(rounds.csv, clients.csv) attached as the CLI attaches it. The clients are bench/workload_app.py's
logistic regression through the app API (10,001 parameters): a sampled client derives its 50 x
10,000 features from (seed, its index) when it trains, its data loader, and takes ``--steps``
full-batch gradient steps (5: about 1 ms of work per client on the 2-core machine, data included).

The client's work is timed inside its ``train`` (data and training: the app's own code), wall and
CPU; a round's framework overhead is the round's time minus its clients' time: selection, making
the sampled clients, the runtime's checks of each update, folding, aggregation, events, CSV rows,
bookkeeping. Rounds are timed from one ``RoundCompleted`` to the next (round 1 from its
``RoundStarted``: its selection counts in the set-up), and the figure is the median round.
Set-up is from before planning to the first ``RoundStarted``: the app, the server side's model,
the population's columns, the coordinator and its host. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import fedhive
from fedhive.app.loader import LoadedApp
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.population_simulation import plan_population, run_population
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.worker_devices import one_thread_per_trainer
from fedhive.tracking.run_directory import RunDirectory

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import workload_app  # noqa: E402  (bench/ is not a package)

TARGETS = {"setup_s": 60.0, "peak_rss_gib": 2.0, "overhead_pct": 10.0}


class ClientClock:
    """The time the clients spend in their own code (``train``), per round, wall and CPU."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.calls = 0

    def app(self) -> fedhive.ClientApp:
        app = fedhive.ClientApp()
        app.init(workload_app.init)

        @app.train
        def train(weights: Any, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return workload_app.train(weights, config, ctx)
            finally:
                self.wall += time.perf_counter() - w0
                self.cpu += time.thread_time() - c0
                self.calls += 1

        return app

    def take(self) -> tuple[float, float, int]:
        out = (self.wall, self.cpu, self.calls)
        self.wall = self.cpu = 0.0
        self.calls = 0
        return out


def one(size: int, per_round: int, rounds: int, steps: int) -> dict[str, Any]:
    """One population's run in this process: its figures."""
    one_thread_per_trainer()  # as ``fedhive simulate`` does: a BLAS thread per trainer, not per core
    began = time.perf_counter()
    clock = ClientClock()
    loaded = LoadedApp("bench-population", "bench-population", clock.app(), "0" * 64)
    config = SessionConfig(
        rounds=rounds,
        min_clients=size,
        max_clients=per_round,
        fraction=1.0,
        lr=0.003,
        local_steps=steps,
        seed=0,
        round_timeout_s=600,
    )
    plan = plan_population(config, loaded, size, evaluate="none")
    marks: list[tuple[float, float]] = []  # (wall, process CPU) at round 1's start and each round's end
    per_round_clients: list[tuple[float, float, int]] = []
    first: list[float] = []

    def attach(bus: EventBus) -> None:
        def started(e: ev.RoundStarted) -> None:
            if e.round == 1 and not first:
                first.append(time.perf_counter())
                clock.take()
                marks.append((time.perf_counter(), time.process_time()))

        def completed(e: ev.RoundCompleted) -> None:
            marks.append((time.perf_counter(), time.process_time()))
            per_round_clients.append(clock.take())

        bus.on(ev.RoundStarted, started)
        bus.on(ev.RoundCompleted, completed)

    with tempfile.TemporaryDirectory() as out:
        run_dir = RunDirectory(out, {"clients": size})
        asyncio.run(run_population(plan, observers=[run_dir.attach, attach]))
        with (Path(out) / "clients.csv").open() as f:
            rows = sum(1 for _ in f) - 1
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rounds_ = []
    for (w0, c0), (w1, c1), (cw, cc, n) in zip(marks, marks[1:], per_round_clients, strict=False):
        rounds_.append({"wall_s": w1 - w0, "cpu_s": c1 - c0, "client_wall_s": cw, "client_cpu_s": cc, "clients": n})
    med = {k: statistics.median(r[k] for r in rounds_) for k in ("wall_s", "cpu_s", "client_wall_s", "client_cpu_s")}
    overhead = statistics.median(r["wall_s"] - r["client_wall_s"] for r in rounds_)
    cpu_overhead = statistics.median(r["cpu_s"] - r["client_cpu_s"] for r in rounds_)
    return {
        "clients": size,
        "per_round": per_round,
        "rounds": rounds,
        "steps": steps,
        "setup_s": round(first[0] - began, 3),
        "peak_rss_gib": round(rss_kib / 2**20, 3),
        "bookkeeping_bytes": plan.population.nbytes,
        "clients_trained": plan.population.trained(),
        "clients_csv_rows": rows,
        "round_s": round(med["wall_s"], 4),
        "client_s": round(med["client_wall_s"], 4),
        "overhead_ms": round(1000 * overhead, 1),
        "overhead_pct": round(100 * overhead / med["client_wall_s"], 2),
        "cpu_overhead_pct": round(100 * cpu_overhead / med["client_cpu_s"], 2),
        "per_client_us": round(1e6 * overhead / per_round, 1),
        "rounds_detail": rounds_,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 15_000_000])
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="gradient steps per client (5: about 1 ms with its data)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, its JSON line
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.per_round, args.rounds, args.steps)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--per-round", str(args.per_round)]
        cmd += ["--rounds", str(args.rounds), "--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()
    t = Table(title=f"population: {args.per_round} clients a round, {args.rounds} rounds, load average {load[0]:.1f}")
    cols = ("clients", "set-up s", "peak RSS GiB", "bookkeeping MB", "round s", "clients' s", "overhead ms",
            "overhead %", "CPU overhead %", "µs/client", "CSV rows")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            f"{r['clients']:,}",
            f"{r['setup_s']:.2f}",
            f"{r['peak_rss_gib']:.3f}",
            f"{r['bookkeeping_bytes'] / 1e6:.0f}",
            f"{r['round_s']:.3f}",
            f"{r['client_s']:.3f}",
            f"{r['overhead_ms']:.1f}",
            f"{r['overhead_pct']:.1f}",
            f"{r['cpu_overhead_pct']:.1f}",
            f"{r['per_client_us']:.0f}",
            str(r["clients_csv_rows"]),
        )
    Console().print(t)
    met = all(
        r["setup_s"] < TARGETS["setup_s"]
        and r["peak_rss_gib"] < TARGETS["peak_rss_gib"]
        and r["overhead_pct"] <= TARGETS["overhead_pct"]
        for r in rows
    )
    summary = {"bench": "population", "load_average": [round(x, 2) for x in load], "targets": TARGETS}
    print(json.dumps({**summary, "targets_met": met, "rows": rows}))


if __name__ == "__main__":
    main()
