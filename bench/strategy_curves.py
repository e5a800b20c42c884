"""FedProx and FedAdam against FedAvg on very non-IID data: test accuracy per round, and a plot.

    python bench/strategy_curves.py [--rounds 30] [--clients 10] [--partition dirichlet:0.1]
                                    [--epochs 2] [--png docs/strategies_dirichlet01.png]

digits, softmax regression (numpy), the same split, initial model and seed for every strategy;
only the strategy differs. Prints the accuracy of every round as a table, saves the curves as a
PNG and, last, prints one JSON line with the curves and the final accuracies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation

STRATEGIES = {
    "FedAvg": "fedavg",
    "FedProx": "fedprox:mu=0.1",
    "FedAdam": "fedadam:lr=0.03,beta1=0.9,beta2=0.99,tau=1e-3",
}
COLORS = {"FedAvg": "#6b7280", "FedProx": "#d97706", "FedAdam": "#2563eb"}
STYLES = {"FedAvg": {"lw": 4, "alpha": 0.5}, "FedProx": {"lw": 1.5, "ls": "--"}, "FedAdam": {"lw": 1.5}}


def curve(strategy: str, a: argparse.Namespace) -> list[float]:
    config = make_config(
        rounds=a.rounds,
        min_clients=a.clients,
        model="logreg-np",
        lr=0.1,
        momentum=0.0,
        epochs=a.epochs,
        batch_size=32,
        seed=a.seed,
        strategy=strategy,
    )
    plan = plan_builtin(config, DataSpec(dataset="digits", partition=a.partition), a.clients)
    result = asyncio.run(
        run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator)
    )
    return [round(h["accuracy"], 4) for h in result.history]


def plot(curves: dict[str, list[float]], a: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), acc, label=f"{name} ({STRATEGIES[name]})", color=COLORS[name], **STYLES[name])
    low = min(min(c) for c in curves.values())
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(max(0.0, low - 0.05), 1.0))
    ax.set_title(f"digits, {a.partition}, {a.clients} clients, softmax regression, {a.epochs} local epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--partition", default="dirichlet:0.1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", type=Path, default=Path("docs/strategies_dirichlet01.png"))
    a = p.parse_args()
    curves = {name: curve(spec, a) for name, spec in STRATEGIES.items()}
    table = Table(title=f"test accuracy per round: digits, {a.partition}, {a.clients} clients")
    table.add_column("round")
    for name in curves:
        table.add_column(name)
    for i in range(a.rounds):
        table.add_row(str(i + 1), *(f"{c[i]:.4f}" for c in curves.values()))
    Console(stderr=True).print(table)
    plot(curves, a, a.png)
    final = {name: c[-1] for name, c in curves.items()}
    Console(stderr=True).print(f"final accuracy: {final}; plot in {a.png}")
    summary = {
        "partition": a.partition,
        "clients": a.clients,
        "rounds": a.rounds,
        "epochs": a.epochs,
        "seed": a.seed,
        "strategies": STRATEGIES,
        "final_accuracy": final,
        "best_accuracy": {name: max(c) for name, c in curves.items()},
        "curves": curves,
        "png": str(a.png),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
