"""``fedhive simulate``: a whole federation in one process, with a run directory and a table."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedhive.cli.progress import SessionProgress
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation
from fedhive.tracking.run_directory import RunDirectory


def simulate(
    dataset: Annotated[str, typer.Option(help="digits, iris, wine, breast-cancer, mnist5k or csv")] = "digits",
    csv: Annotated[Path | None, typer.Option("--csv", help="CSV file (implies --dataset csv)")] = None,
    label: Annotated[str | None, typer.Option(help="label column of the CSV")] = None,
    model: Annotated[str, typer.Option(help="simple-dnn[:128,64], logreg, cnn or logreg-np")] = "simple-dnn",
    clients: Annotated[int, typer.Option(help="number of virtual clients")] = 10,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 20,
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA, label-shards:K or label-range")] = "iid",
    epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option(help="local minibatch size")] = 32,
    lr: Annotated[float, typer.Option(help="local learning rate")] = 0.05,
    momentum: Annotated[float, typer.Option(help="local SGD momentum (0 for plain SGD)")] = 0.9,
    fraction: Annotated[float, typer.Option(help="share of clients selected each round")] = 1.0,
    strategy: Annotated[str, typer.Option(help="aggregation strategy")] = "fedavg",
    seed: Annotated[int, typer.Option(help="seed for data split, partition, init and training")] = 0,
    test_fraction: Annotated[float, typer.Option(help="held-out share of the data for global evaluation")] = 0.2,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/latest"),
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary as the last line of stdout")] = False,
) -> None:
    started = time.perf_counter()
    if csv is not None:
        dataset = "csv"
    config = make_config(
        rounds=rounds,
        min_clients=clients,
        fraction=fraction,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        model=model,
        strategy=strategy,
        data={"dataset": dataset, "partition": partition},
    )
    data = (
        DataSpec(
            dataset=dataset,
            csv=str(csv) if csv else None,
            label=label,
            partition=partition,
            test_fraction=test_fraction,
        )
        if 0 < test_fraction < 1
        else _bad_fraction(test_fraction)
    )
    plan = plan_simulation(config, data, clients)
    console = Console(stderr=as_json)
    run_dir = RunDirectory(out, {**config.model_dump(mode="json"), "clients": clients, **data.model_dump()})
    with SessionProgress(console, rounds) as progress:
        result = asyncio.run(
            run_federation(
                plan.config,
                plan.trainers,
                plan.num_examples,
                plan.initial_params,
                evaluator=plan.evaluator,
                observers=[run_dir.attach, progress.attach],
            )
        )
    wall = time.perf_counter() - started
    console.print(progress.table())
    m = result.metrics
    console.print(
        f"final accuracy [bold]{m.get('accuracy', float('nan')):.4f}[/], loss {m.get('loss', float('nan')):.4f} "
        f"after {result.rounds} rounds in {wall:.1f} s; results in [bold]{out}[/] "
        f"(config.json, rounds.csv, clients.csv, model.safetensors)"
    )
    if as_json:
        print(
            json.dumps(
                {
                    "accuracy": m.get("accuracy"),
                    "loss": m.get("loss"),
                    "rounds": result.rounds,
                    "clients": clients,
                    "wall_s": round(wall, 3),
                    "out": str(out),
                    "model": str(run_dir.model_path),
                }
            )
        )


def _bad_fraction(value: float) -> DataSpec:
    from fedhive.errors import ConfigError

    raise ConfigError(f"--test-fraction must be between 0 and 1, got {value}")
