"""Asynchronous (FedBuff) against synchronous FedAvg on one heterogeneous population.

    python bench/async_vs_sync.py [--clients 100] [--speed slow:0.2x10@20] [--buffer-size 5] [--quick]

The built-in app on digits (simple-dnn, 5 local epochs of minibatches of 8), 100 clients, of which
20 % (drawn from the seed) train 10x slower (``runtime/heterogeneity.py``: after its real training
a client waits ``factor - 1`` times its measured training time before its update leaves). Both modes run the
same clients, data, seed, speeds and number of clients training at once (``fraction`` 0.1: ten),
and the same number of client updates in all. Sync: rounds of ten selected clients, each round
waits for its slowest. Async: ten clients train at any time; each update sent is answered with the
current model; every ``buffer_size`` accepted updates make a new version (``runtime/async_rounds.py``).

``@BASE`` in the speed spec makes every client BASE times slower than this machine. Why: the
simulated clients take turns on this machine's core, so with clients as fast as the machine, ten
of them queue for it and their training is mostly waiting for the core (a federation of one
device). With BASE 20 a fast client trains 20x its compute time and the ten training at once need
half the core: they train side by side, as devices do, and the slow ones are 10x slower still.
The same speeds without ``@BASE`` (the one-device case) run once more, for reference.

Figures: wall time from the session's start until the global model first reaches 0.90 accuracy
on the held-out data (central evaluation after every version / round), async over sync (target:
at most 0.5), and the final accuracy of each (target: async at most 1 point below sync). Wall times on a shared
machine are noisy: the run repeats each mode (``--repeats``) and takes the median time. About
two minutes here; ``--quick``: one repeat of 20 rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from fedhive.app.loader import load_app
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.heterogeneity import Heterogeneity
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import client_id, plan_simulation, run_federation

TARGET = 0.90


@dataclass
class Curve:
    """When each round (version) completed, and its accuracy."""

    started: float = 0.0
    points: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, accuracy)
    updates: int = 0
    rejected: int = 0

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.SessionStarted, self._started)
        bus.on(ev.RoundCompleted, self._round)
        bus.on(ev.UpdateRejected, self._rejected)

    def _started(self, _: ev.SessionStarted) -> None:
        self.started = time.perf_counter()

    def _round(self, e: ev.RoundCompleted) -> None:
        self.points.append((time.perf_counter() - self.started, e.metrics["accuracy"]))
        self.updates += e.num_updates

    def _rejected(self, _: ev.UpdateRejected) -> None:
        self.rejected += 1

    def time_to(self, target: float) -> float | None:
        return next((t for t, acc in self.points if acc >= target), None)

    @property
    def final(self) -> float:
        return self.points[-1][1]


def run_mode(args: argparse.Namespace, aggregation: str, speed: str) -> Curve:
    per_round = max(1, round(args.fraction * args.clients))
    config = SessionConfig(
        rounds=args.rounds if aggregation == "sync" else args.rounds * per_round // args.buffer_size,
        min_clients=args.clients,
        fraction=args.fraction,
        epochs=5,
        batch_size=8,
        lr=0.05,
        seed=args.seed,
        model="simple-dnn",
        data={"dataset": "digits", "partition": "iid"},
        aggregation=aggregation,
        buffer_size=args.buffer_size,
        max_staleness=args.max_staleness,
        round_timeout_s=120,
    )
    site = DataSpec(dataset="digits", partition="iid", test_fraction=0.2).model_dump(exclude_none=True)
    plan = plan_simulation(config, load_app("builtin"), args.clients, node=site, evaluate="central")
    ids = [client_id(i, args.clients) for i in range(args.clients)]
    het = Heterogeneity(ids, args.seed, speed=speed)
    curve = Curve()
    asyncio.run(
        run_federation(
            plan.config,
            het.trainers(plan.trainers),
            plan.num_examples,
            plan.initial_params,
            evaluator=plan.evaluator,
            observers=[curve.attach],
            network=het.network(),
            hosted=False,
        )
    )
    return curve


def summarise(curves: list[Curve]) -> dict[str, object]:
    times = [c.time_to(TARGET) for c in curves]
    reached = [t for t in times if t is not None]
    return {
        "time_to_target_s": statistics.median(reached) if len(reached) == len(times) else None,
        "times_s": [None if t is None else round(t, 3) for t in times],
        "final_accuracy": statistics.median(c.final for c in curves),
        "finals": [round(c.final, 4) for c in curves],
        "updates": curves[0].updates,
        "rejected": [c.rejected for c in curves],
        "wall_s": [round(c.points[-1][0], 2) for c in curves],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--speed", default="slow:0.2x10@20")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=30, help="sync rounds; async runs as many client updates")
    p.add_argument("--buffer-size", type=int, default=5)
    p.add_argument("--max-staleness", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one repeat, 20 rounds")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.rounds = 1, 20
    console = Console(width=150)
    one_device = args.speed.split("@")[0]  # the same slowdowns, clients as fast as this machine
    cases = [("sync", args.speed), ("async", args.speed)]
    runs: dict[tuple[str, str], list[Curve]] = {case: [] for case in cases}
    for _ in range(args.repeats):  # alternating: both modes see the same load of the machine
        for mode, speed in cases:
            runs[(mode, speed)].append(run_mode(args, mode, speed))
    if one_device != args.speed:  # for reference, once: the machine's one core as the only device
        for mode in ("sync", "async"):
            runs[(mode, one_device)] = [run_mode(args, mode, one_device)]
    table = Table(title=f"digits, {args.clients} clients, fraction {args.fraction}, buffer {args.buffer_size}")
    for col in ("speed", "mode", f"s to {TARGET:.2f}", "median", "final acc", "updates", "rejected", "wall s"):
        table.add_column(col, justify="right")
    summary = {f"{mode} {speed}": summarise(curves) for (mode, speed), curves in runs.items()}
    for mode, speed in runs:
        s = summary[f"{mode} {speed}"]
        median = s["time_to_target_s"]
        table.add_row(
            speed,
            mode,
            " ".join("-" if t is None else f"{t:.2f}" for t in s["times_s"]),  # type: ignore[attr-defined]
            "-" if median is None else f"{median:.2f}",
            " ".join(f"{f:.4f}" for f in s["finals"]),  # type: ignore[attr-defined]
            str(s["updates"]),
            " ".join(str(r) for r in s["rejected"]),  # type: ignore[attr-defined]
            " ".join(f"{w:.1f}" for w in s["wall_s"]),  # type: ignore[attr-defined]
        )
    console.print(table)
    sync, asyn = summary[f"sync {args.speed}"], summary[f"async {args.speed}"]
    sync_t, async_t = sync["time_to_target_s"], asyn["time_to_target_s"]
    ratio = async_t / sync_t if isinstance(sync_t, float) and isinstance(async_t, float) else None
    gap = float(asyn["final_accuracy"]) - float(sync["final_accuracy"])  # type: ignore[arg-type]
    console.print(
        f"speed {args.speed}: async reaches {TARGET:.2f} in {'-' if ratio is None else f'{ratio:.2f}'}x sync's wall "
        f"time (target <= 0.5); final accuracy async - sync: {100 * gap:+.1f} points (target: at least -1). "
        "Wall times on a shared, loaded machine: noisy; each mode's median of the repeats."
    )
    print(
        json.dumps(
            {
                "bench": "async_vs_sync",
                "clients": args.clients,
                "speed": args.speed,
                "fraction": args.fraction,
                "buffer_size": args.buffer_size,
                "max_staleness": args.max_staleness,
                "repeats": args.repeats,
                "target_accuracy": TARGET,
                "time_ratio_async_over_sync": None if ratio is None else round(ratio, 3),
                "final_accuracy_gap_points": round(100 * gap, 2),
                "runs": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
