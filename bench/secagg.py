"""Secure aggregation against plain FedAvg in ``simulate``: same model, how close, how fast.

    python bench/secagg.py [--clients 100] [--rounds 10] [--dropout 0.2] [--neighbours K] [--epochs 5] [--batch-size 10]
    python bench/secagg.py --amqp [--url amqp://guest:guest@127.0.0.1:5672/] [--clients 100] [--rounds 10]

Digits, ``--clients`` virtual clients (iid), the built-in simple-dnn, FedAvg, each client training
``--epochs`` local epochs of minibatches of ``--batch-size`` per round: by default 5 and 10, McMahan et
al.'s FedAvg setting for 100 clients (with 100 clients each holds about 14 examples, so the session
defaults, one epoch of 32, are a single SGD step per client per round: a session that reaches 0.2
accuracy in 10 rounds, where the round is almost all overhead; ``--epochs 1 --batch-size 32``
measures that). Three sessions with
the same seed, one after the other in this process: plain FedAvg, secure aggregation (SecAgg+,
each client paired with ``--neighbours`` others; by default the number ``secagg.sizing`` picks for
the clients), and secure aggregation with ``--dropout`` of each round's clients vanishing after
sending their masked update. Reported:

- the neighbours ``k`` and threshold ``t`` used, with the failure bounds they give under the
  assumptions of ``secagg.sizing`` (a round failing for lost shares; more than the sum exposed);

- the largest per-coordinate difference between the secure and the plain final model, beside the
  quantisation bound ``2**-(secagg_bits+1)`` per round of aggregation (after the first round the
  two sessions train from models that differ by that much, so later rounds may drift a little);
- the same after one round, where both aggregate exactly the same updates (the bound holds there,
  plus the float32 rounding of the result: half an ulp of the largest weight);
- rounds completed with dropouts, and the median round time of each session (rounds 2..R).

Prints a table and, last, one JSON line. ``--amqp``: the same three sessions over RabbitMQ, with
``fedhive coordinator`` in a child process and the clients as virtual clients in this one
(``bench/secagg_amqp.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedhive.app.loader import load_app
from fedhive.core.params import Params
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.secagg.graph import degree
from fedhive.secagg.sizing import ASSUMED_CORRUPT, ASSUMED_DROPOUT, default_neighbours, failure_bounds, threshold_for

NODE = {"dataset": "digits", "partition": "iid", "test_fraction": 0.2}


@dataclass
class Run:
    name: str
    params: Params
    rounds: int
    round_s: list[float]
    round_cpu_s: list[float]  # this process's CPU time from each round's start to its end
    retries: int  # round attempts that failed and were run again
    wall_s: float
    accuracy: float


@dataclass(frozen=True)
class Work:
    """What each client does in a round."""

    epochs: int = 5
    batch_size: int = 10


def run(
    clients: int, rounds: int, work: Work, *, secure: bool, dropout: float = 0.0, neighbours: int | None = None
) -> Run:
    config = make_config(
        epochs=work.epochs,
        batch_size=work.batch_size,
        session_id="bench-secagg",
        rounds=rounds,
        min_clients=clients,
        seed=0,
        model="simple-dnn",
        data={"dataset": "digits", "partition": "iid"},
        secure_aggregation=secure,
        secagg_neighbours=neighbours,
    )
    plan = plan_simulation(config, load_app("builtin"), clients, node=NODE, evaluate="central")
    durations: list[float] = []
    cpu: list[float] = []
    cpu_started: list[float] = []
    retried: list[int] = []

    def observe(bus: EventBus) -> None:
        bus.on(ev.RoundStarted, lambda e: cpu_started.append(time.process_time()))
        bus.on(ev.RoundCompleted, lambda e: cpu.append(time.process_time() - cpu_started[-1]))
        bus.on(ev.RoundCompleted, lambda e: durations.append(e.duration_s))
        bus.on(ev.RoundRetried, lambda e: retried.append(e.round))

    started = time.perf_counter()
    result = asyncio.run(
        run_federation(
            plan.config,
            plan.trainers,
            plan.num_examples,
            plan.initial_params,
            evaluator=plan.evaluator,
            observers=[observe],
            secagg_dropout=dropout,
        )
    )
    wall = time.perf_counter() - started
    name = "plain fedavg" if not secure else f"secure, {dropout:.0%} dropout" if dropout else "secure"
    accuracy = result.metrics.get("accuracy", float("nan"))
    return Run(name, result.params, result.rounds, durations, cpu, len(retried), wall, accuracy)


def max_diff(a: Params, b: Params) -> float:
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) for n in a)


def half_ulp(p: Params) -> float:
    return max(float(np.spacing(np.max(np.abs(a))) / 2) for a in p.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--neighbours", type=int, default=None, help="k  [default: secagg.sizing's for --clients]")
    parser.add_argument("--amqp", action="store_true", help="over RabbitMQ (bench/secagg_amqp.py)")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/", help="with --amqp: the broker")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the secure session into this file")
    parser.add_argument("--epochs", type=int, default=Work.epochs, help="local epochs per round  [default: 5]")
    parser.add_argument("--batch-size", type=int, default=Work.batch_size, help="minibatch size  [default: 10]")
    args = parser.parse_args()
    work = Work(args.epochs, args.batch_size)
    if args.amqp:
        main_amqp(args, work)
        return
    defaults = make_config(secure_aggregation=True)
    bits, fraction = defaults.secagg_bits, defaults.secagg_threshold
    bound = 2.0 ** -(bits + 1)
    k = degree(args.clients, args.neighbours or default_neighbours(args.clients, fraction))
    t = threshold_for(k, fraction)
    risk = failure_bounds(args.clients, k, t)

    one_plain = run(args.clients, 1, work, secure=False)
    one_secure = run(args.clients, 1, work, secure=True, neighbours=k)
    plain = run(args.clients, args.rounds, work, secure=False)
    secure = run(args.clients, args.rounds, work, secure=True, neighbours=k)
    dropped = run(args.clients, args.rounds, work, secure=True, dropout=args.dropout, neighbours=k)

    def median_round(r: Run) -> float:
        return statistics.median(r.round_s[1:] or r.round_s)

    def median_cpu(r: Run) -> float:  # less swayed than wall time by other work on a shared machine
        return statistics.median(r.round_cpu_s[1:] or r.round_cpu_s)

    table = Table(
        title=f"secure aggregation, digits, {args.clients} clients, {args.rounds} rounds of {work.epochs} epochs of "
        f"{work.batch_size}, {k} neighbours, threshold {t}"
    )
    columns = ("session", "rounds", "retried", "accuracy", "median round s", "median round cpu s", "wall s")
    for col in (*columns, "max |diff| vs plain"):
        table.add_column(col, justify="right" if col != "session" else "left")
    for r in (plain, secure, dropped):
        diff = "-" if r is plain else f"{max_diff(r.params, plain.params):.3g}"
        times = (f"{median_round(r):.3f}", f"{median_cpu(r):.3f}", f"{r.wall_s:.1f}")
        table.add_row(r.name, str(r.rounds), str(r.retries), f"{r.accuracy:.4f}", *times, diff)
    console = Console()
    console.print(table)
    one_round = max_diff(one_secure.params, one_plain.params)
    console.print(
        f"after 1 round (same updates): max |diff| {one_round:.3g}, bound {bound:.3g} "
        f"+ float32 half-ulp {half_ulp(one_plain.params):.3g}"
    )
    console.print(
        f"k={k}, t={t}: per round, a failure for lost shares <= {risk.unrecoverable:.2g}, more than the sum "
        f"exposed <= {risk.exposed:.2g} (at most {ASSUMED_DROPOUT:.0%} dropping, {ASSUMED_CORRUPT:.0%} colluding)"
    )
    summary = {
        "clients": args.clients,
        "rounds": args.rounds,
        "epochs": work.epochs,
        "batch_size": work.batch_size,
        "neighbours": k,
        "threshold": t,
        "bound_unrecoverable": risk.unrecoverable,
        "bound_exposed": risk.exposed,
        "secagg_bits": bits,
        "bound_per_round": bound,
        "one_round_max_abs_diff": one_round,
        "one_round_float32_half_ulp": half_ulp(one_plain.params),
        "final_max_abs_diff": max_diff(secure.params, plain.params),
        "final_max_abs_diff_with_dropout": max_diff(dropped.params, plain.params),
        "rounds_completed_with_dropout": dropped.rounds,
        "rounds_retried_with_dropout": dropped.retries,
        "dropout": args.dropout,
        "accuracy": {"plain": plain.accuracy, "secure": secure.accuracy, "dropout": dropped.accuracy},
        "median_round_s": {
            "plain": median_round(plain),
            "secure": median_round(secure),
            "dropout": median_round(dropped),
        },
        "median_round_cpu_s": {r.name: median_cpu(r) for r in (plain, secure, dropped)},
        "round_time_ratio": median_round(secure) / median_round(plain),
        "round_cpu_ratio": median_cpu(secure) / median_cpu(plain),
    }
    print(json.dumps(summary))


def main_amqp(args: argparse.Namespace, work: Work) -> None:
    from secagg_amqp import max_diff as diff
    from secagg_amqp import run_amqp

    defaults = make_config(secure_aggregation=True)
    bound = 2.0 ** -(defaults.secagg_bits + 1)
    k = degree(args.clients, args.neighbours or default_neighbours(args.clients, defaults.secagg_threshold))
    t = threshold_for(k, defaults.secagg_threshold)
    session = (args.url, args.clients, args.rounds, work.epochs, work.batch_size)
    plain = run_amqp(*session, secure=False)
    secure = run_amqp(*session, secure=True)
    dropped = run_amqp(*session, secure=True, dropout=args.dropout)
    table = Table(
        title=f"secure aggregation over RabbitMQ, digits, {args.clients} clients, {args.rounds} rounds of "
        f"{work.epochs} epochs of {work.batch_size}, "
        f"{k} neighbours, threshold {t}"
    )
    columns = ("session", "rounds", "updates per round", "accuracy", "median round s", "wall s", "cpu s", "round cpu s")
    for col in (*columns, "max |diff| vs plain"):
        table.add_column(col, justify="right" if col != "session" else "left")
    for r in (plain, secure, dropped):
        d = "-" if r is plain else f"{diff(r.params, plain.params):.3g}"
        ups = f"{min(r.updates)}-{max(r.updates)}"
        times = (f"{r.median_round:.3f}", f"{r.wall_s:.1f}", f"{r.cpu_s:.1f}", f"{r.round_cpu_s:.2f}")
        table.add_row(r.name, str(r.rounds), ups, f"{r.accuracy:.4f}", *times, d)
    console = Console(width=160)
    console.print(table)
    for r in (secure, dropped):
        console.print(f"{r.name}: {r.steps}", highlight=False)
    summary = {
        "mode": "amqp",
        "clients": args.clients,
        "rounds": args.rounds,
        "epochs": work.epochs,
        "batch_size": work.batch_size,
        "neighbours": k,
        "threshold": t,
        "bound_per_round": bound,
        "final_max_abs_diff": diff(secure.params, plain.params),
        "final_max_abs_diff_with_dropout": diff(dropped.params, plain.params),
        "rounds_completed": {r.name: r.rounds for r in (plain, secure, dropped)},
        "updates_per_round_with_dropout": dropped.updates,
        "dropout": args.dropout,
        "accuracy": {r.name: r.accuracy for r in (plain, secure, dropped)},
        "median_round_s": {r.name: r.median_round for r in (plain, secure, dropped)},
        "round_time_ratio": secure.median_round / plain.median_round,
        "round_time_ratio_with_dropout": dropped.median_round / plain.median_round,
        "session_cpu_s": {r.name: r.cpu_s for r in (plain, secure, dropped)},
        "session_cpu_ratio": secure.cpu_s / plain.cpu_s,
        "round_cpu_s": {r.name: r.round_cpu_s for r in (plain, secure, dropped)},
        "round_cpu_ratio": secure.round_cpu_s / plain.round_cpu_s,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
