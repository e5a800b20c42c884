"""DP-FedAvg on digits: final accuracy and the epsilon spent, per noise multiplier, against FedAvg.

    python bench/dp_table.py [--clients 10] [--rounds 20] [--clip 0.5] [--noise 0.5 1.0 2.0]

Central DP: every client update is clipped to L2 norm ``clip`` and Gaussian noise of standard
deviation ``noise * clip`` is added to the sum (strategies/dp_fedavg.py); the accountant reports
epsilon for delta = 1e-5 after each round (every client takes part in every round: sampling rate
1). Same data split, model and seed for every row. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation

DELTA = 1e-5


def run(strategy: str, clients: int, rounds: int) -> dict[str, Any]:
    config = make_config(
        rounds=rounds,
        min_clients=clients,
        model="logreg-np",
        lr=0.1,
        momentum=0.0,
        epochs=1,
        batch_size=32,
        seed=0,
        strategy=strategy,
    )
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="iid"), clients)
    started = time.perf_counter()
    result = asyncio.run(
        run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator)
    )
    m = result.metrics
    return {
        "strategy": strategy,
        "accuracy": round(m["accuracy"], 4),
        "epsilon": round(m["epsilon"], 3) if "epsilon" in m else None,
        "wall_s": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clip", type=float, default=0.5)
    p.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    a = p.parse_args()
    rows = [run("fedavg", a.clients, a.rounds)]
    for z in a.noise:
        rows.append(run(f"dp-fedavg:clip={a.clip},noise={z},delta={DELTA},seed=0", a.clients, a.rounds))
        rows[-1]["noise"] = z
    table = Table(title=f"DP-FedAvg, digits, {a.clients} clients, {a.rounds} rounds, clip {a.clip}, delta {DELTA}")
    for col in ("strategy", "noise multiplier", "final accuracy", "epsilon", "wall s"):
        table.add_column(col)
    for r in rows:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        z = "-" if "noise" not in r else f"{r['noise']:g}"
        table.add_row(r["strategy"].split(":")[0], z, f"{r['accuracy']:.4f}", eps, f"{r['wall_s']:.1f}")
    Console(stderr=True).print(table)
    summary = {"clients": a.clients, "rounds": a.rounds, "clip": a.clip, "delta": DELTA, "rows": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
