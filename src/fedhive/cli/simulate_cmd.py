"""``fedhive simulate``: a whole federation in one process, with a run directory and a table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedhive.app.loader import BUILTIN, load_app
from fedhive.cli.event_loop import run_main
from fedhive.cli.flower_options import FlowerAppOption, flower_run
from fedhive.cli.initial_model import load_initial_model
from fedhive.cli.key_values import parse_pairs
from fedhive.cli.mlflow_cli import (
    MlflowExperimentOption,
    MlflowFlag,
    MlflowRegisterOption,
    MlflowRunPerRoundFlag,
    MlflowUriOption,
    report_tracking,
)
from fedhive.cli.progress import SessionProgress
from fedhive.errors import ConfigError
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.models import parse_model_spec
from fedhive.runtime.async_rounds import staleness_settings
from fedhive.runtime.heterogeneity import Heterogeneity
from fedhive.runtime.population_simulation import (
    PopulationPlan,
    is_population,
    plan_population,
    population_node,
    refuse_population,
    run_population,
)
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import client_id, launch_early, plan_simulation, run_federation, start_workers
from fedhive.runtime.worker_devices import one_thread_per_trainer
from fedhive.tracking.mlflow_options import MlflowOptions
from fedhive.tracking.mlflow_registry import check_fits
from fedhive.tracking.run_directory import RunDirectory
from fedhive.tracking.session_folders import new_session_folder

DEFAULT_MODEL = "simple-dnn"


def simulate(
    ctx: typer.Context,
    app: Annotated[
        str, typer.Option(help="the app: module:attr, file.py:attr, a project folder, or builtin (the model zoo)")
    ] = BUILTIN,
    flower_app: FlowerAppOption = None,
    node: Annotated[
        list[str] | None, typer.Option("--node", help="site setting every client's ctx.node gets, key=value")
    ] = None,
    run_config: Annotated[
        list[str] | None, typer.Option("--run-config", help="app setting (its config), key=value; repeatable")
    ] = None,
    evaluate: Annotated[
        str, typer.Option(help="global model evaluation: auto, central, clients (their own data) or none")
    ] = "auto",
    dataset: Annotated[str, typer.Option(help="digits, iris, wine, breast-cancer, mnist5k or csv")] = "digits",
    csv: Annotated[Path | None, typer.Option("--csv", help="CSV file (implies --dataset csv)")] = None,
    label: Annotated[str | None, typer.Option(help="label column of the CSV")] = None,
    model: Annotated[
        str | None, typer.Option(help="simple-dnn[:128,64], logreg, cnn or logreg-np  [default: simple-dnn]")
    ] = None,
    clients: Annotated[
        int, typer.Option(help="number of virtual clients; from 10,001 on, a population made only when sampled")
    ] = 10,
    per_round: Annotated[
        int | None, typer.Option(help="clients trained per round, at most (a cap on --fraction's share)")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="worker processes that train the clients; 1: in this process  "
            "[default: one per core, or per GPU for a torch app]"
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 20,
    partition: Annotated[str, typer.Option(help="iid, dirichlet:ALPHA, label-shards:K or label-range")] = "iid",
    epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option(help="local minibatch size")] = 32,
    lr: Annotated[float, typer.Option(help="local learning rate")] = 0.05,
    momentum: Annotated[float, typer.Option(help="local SGD momentum (0 for plain SGD)")] = 0.9,
    fraction: Annotated[float, typer.Option(help="share of clients selected each round")] = 1.0,
    strategy: Annotated[str, typer.Option(help="aggregation strategy")] = "fedavg",
    compression: Annotated[str, typer.Option(help="update compression: none, float16, int8, topk:F")] = "none",
    secure_aggregation: Annotated[
        bool, typer.Option("--secure-aggregation", help="secure aggregation: the coordinator learns only the sum")
    ] = False,
    secagg_clip: Annotated[
        float | None, typer.Option(help="secure aggregation: clip each update change to [-C, C]  [default: 4.0]")
    ] = None,
    secagg_bits: Annotated[
        int | None, typer.Option(help="secure aggregation: fixed-point fraction bits  [default: 28]")
    ] = None,
    secagg_threshold: Annotated[
        float | None,
        typer.Option(help="secure aggregation: share of a client's neighbours needed to unmask it  [default: 0.5]"),
    ] = None,
    secagg_neighbours: Annotated[
        int | None,
        typer.Option(help="secure aggregation (SecAgg+): neighbours each client pairs with  [default: from --clients]"),
    ] = None,
    secagg_dropout: Annotated[
        float, typer.Option(help="secure aggregation test: share of clients that vanish after their masked update")
    ] = 0.0,
    local_dp_clip: Annotated[
        float | None,
        typer.Option(help="local DP: each client clips its change to this L2 norm and adds noise before sending it"),
    ] = None,
    local_dp_noise: Annotated[
        float | None, typer.Option(help="local DP: noise standard deviation over --local-dp-clip  [default: 1.0]")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed for data split, partition, init and training")] = 0,
    # Asynchronous aggregation and heterogeneous clients (docs/async.md).
    aggregation: Annotated[
        str, typer.Option(help="sync (rounds) or async (FedBuff: clients train continuously)")
    ] = "sync",
    buffer_size: Annotated[int | None, typer.Option(help="async: updates per model version  [default: 10]")] = None,
    max_staleness: Annotated[
        int | None, typer.Option(help="async: reject updates trained this many versions ago  [default: 10]")
    ] = None,
    staleness_weighting: Annotated[
        str | None, typer.Option(help="async: constant or polynomial[:EXPONENT]  [default: polynomial:0.5]")
    ] = None,
    client_speed: Annotated[
        str | None, typer.Option(help="client slowdowns: lognormal:SIGMA or slow:SHARExFACTOR, optionally @BASE")
    ] = None,
    availability: Annotated[
        str | None, typer.Option(help="share of clients online (0.8, 0.8:PERIOD_S) or a CSV of client,start_s,end_s")
    ] = None,
    key_metric: Annotated[
        str | None, typer.Option(help="metric that judges the best round [default: accuracy, else loss]")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="min or max: which end of --key-metric is best")] = None,
    patience: Annotated[int | None, typer.Option(help="stop after this many rounds without a new best")] = None,
    test_fraction: Annotated[float, typer.Option(help="held-out share of the data for global evaluation")] = 0.2,
    out: Annotated[
        Path, typer.Option(help="results: each session gets a folder of its own here, named by its id")
    ] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary as the last line of stdout")] = False,
    mlflow: MlflowFlag = False,
    mlflow_tracking_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = "fedhive",
    mlflow_register: MlflowRegisterOption = None,
    mlflow_run_per_round: MlflowRunPerRoundFlag = False,
    mlflow_model: Annotated[
        str | None, typer.Option(help="start from a registered MLflow model NAME/VERSION, e.g. iris_model/1")
    ] = None,
    initial_model: Annotated[
        str | None, typer.Option(help="start from these weights: a file, s3://bucket/key or models:/NAME/VERSION")
    ] = None,
    mlflow_use_case: Annotated[
        str | None, typer.Option(help="use case: the --mlflow-model must carry it; tags runs and the new version")
    ] = None,
) -> None:
    started = time.perf_counter()
    one_thread_per_trainer()  # as in the workers: the same bits, whatever the number of workers
    overrides = parse_pairs(run_config, "--run-config")
    flower = flower_run(ctx, flower_app, overrides, Console(stderr=True)) if flower_app else None
    if flower is not None:  # the Flower app's ServerApp settings, under the options given here
        rounds, strategy, fraction, evaluate = flower.rounds, flower.strategy, flower.fraction, flower.evaluate
    ml = MlflowOptions(
        mlflow_tracking_uri,
        mlflow,
        mlflow_model,
        mlflow_use_case,
        mlflow_register,
        mlflow_experiment,
        run_per_round=mlflow_run_per_round,
    )
    start = ml.load()  # before any data is loaded: a wrong name fails in seconds
    if initial_model is not None and mlflow_model is not None:
        raise ConfigError("give --initial-model or --mlflow-model, not both")
    if start is not None and model is not None:
        raise ConfigError("give --model or --mlflow-model, not both: the registered model's spec decides")
    model = start.model_spec if start is not None else model or DEFAULT_MODEL
    builtin = app == BUILTIN and flower is None
    if builtin:
        parse_model_spec(model)
    if csv is not None:
        dataset = "csv"
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
    data.check()
    site = (
        {**data.model_dump(exclude_none=True), **parse_pairs(node, "--node")}
        if builtin
        else parse_pairs(node, "--node")
    )
    # With --workers N the workers start first: their imports overlap this process's loading the app.
    paced = bool(client_speed or availability)  # paced clients (below) are nodes of their own
    early = None if flower is not None or paced or is_population(clients) else launch_early(workers, app, site, clients)
    loaded = flower.loaded if flower is not None else load_app(app)
    config = make_config(
        rounds=rounds,
        min_clients=clients,
        fraction=fraction,
        max_clients=per_round,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        seed=seed,
        key_metric=key_metric,
        mode=mode,
        patience=patience,
        model=model,
        run_config=parse_pairs(run_config, "--run-config"),
        strategy=strategy,
        compression=compression,
        secure_aggregation=secure_aggregation,
        secagg_clip=secagg_clip,
        secagg_bits=secagg_bits,
        secagg_threshold=secagg_threshold,
        secagg_neighbours=secagg_neighbours,
        local_dp_clip=local_dp_clip,
        local_dp_noise=local_dp_noise,
        data={"dataset": dataset, "partition": partition} if builtin else {},
        aggregation=aggregation,
        buffer_size=buffer_size,
        max_staleness=max_staleness,
        **staleness_settings(staleness_weighting),
    )
    # A population (runtime.population): clients made only when sampled, bookkeeping in columns.
    population = is_population(clients)
    if population:
        if client_speed or availability:
            raise ConfigError(
                f"--client-speed and --availability pace a node per client: not with a population of {clients:,}"
            )
        refuse_population(config)
        site = population_node(site)
    # Worker processes load the app while this one plans.
    pool, why_not = (
        (None, "paced clients train in this process")
        if paced
        else start_workers(workers, loaded, site, clients, config, early)
    )
    if why_not is not None and workers is not None and workers > 1:
        Console(stderr=True).print(f"[yellow]--workers {workers}: {escape(why_not)}[/]", soft_wrap=True)
    planned = (plan_population if population else plan_simulation)(
        config, loaded, clients, node=site, evaluate=evaluate
    )
    initial, ml_summary = planned.initial_params, dict[str, object]()
    if initial_model is not None:
        initial = load_initial_model(initial_model, initial.spec, mlflow_uri=mlflow_tracking_uri)
        ml_summary = {"initial_model": initial_model}
    if start is not None:
        check_fits(start, initial.spec, f"data set {dataset!r}")
        initial = start.params
        before = planned.evaluator.evaluate(initial).metrics if planned.evaluator else {}
        ml_summary = {"initial_model": str(start.ref), "initial_accuracy": before.get("accuracy", float("nan"))}
    tracker = ml.tracker(start)
    console = Console(stderr=as_json)
    if start is not None:
        console.print(
            f"starting from MLflow model [bold]{start.ref}[/] ({start.model_spec}): "
            f"accuracy {ml_summary['initial_accuracy']:.4f} before training"
        )
    settings = {**planned.config.model_dump(mode="json"), "clients": clients}
    # Heterogeneous clients: paced trainers and transports, each client a node of its own.
    ids = [client_id(i, clients) for i in range(clients)] if paced else []
    het = Heterogeneity(ids, seed, speed=client_speed, online=availability) if client_speed or availability else None
    if het is not None:
        settings |= {"client_speed": client_speed, "availability": availability}
    folder = new_session_folder(out, planned.config.session_id)
    run_dir = RunDirectory(folder, {**settings, **data.model_dump()} if builtin else {**settings, "node": site})
    with SessionProgress(console, rounds) as progress:
        try:
            observers = [run_dir.attach, progress.attach, *([tracker.attach] if tracker else [])]
            if isinstance(planned, PopulationPlan):
                run = run_population(planned, initial_params=initial, observers=observers, workers=pool)
            else:
                run = run_federation(
                    planned.config,
                    het.trainers(planned.trainers) if het else planned.trainers,
                    planned.num_examples,
                    initial,
                    evaluator=planned.evaluator,
                    observers=observers,
                    secagg_dropout=_dropout(secagg_dropout, secure_aggregation),
                    network=het.network() if het else None,
                    hosted=False if het else None,
                    workers=pool,
                )
            result = run_main(run)
        finally:
            if pool is not None:
                pool.close()
    wall = time.perf_counter() - started
    console.print(progress.table())
    m = result.metrics
    console.print(
        f"final {_metrics_text(m)} "
        f"after {result.rounds} rounds in {wall:.1f} s; results in [bold]{escape(str(folder))}[/] "
        f"(config.json, rounds.csv, clients.csv, model.safetensors)"
    )
    if tracker is not None:
        ml_summary |= report_tracking(console, tracker, ml)
    if as_json:
        print(
            json.dumps(
                {
                    "accuracy": m.get("accuracy"),
                    "loss": m.get("loss"),
                    "metrics": m,
                    "app": planned.config.app,
                    "rounds": result.rounds,
                    "best_round": result.best_round,
                    "key_metric": result.key_metric,
                    "stopped_early": result.stopped_early,
                    "best_model": str(run_dir.best_path) if result.best_round else None,
                    "clients": clients,
                    "clients_trained": planned.population.trained() if isinstance(planned, PopulationPlan) else None,
                    "wall_s": round(wall, 3),
                    "compression": config.compression,
                    "aggregation": config.aggregation,
                    "secure_aggregation": config.secure_aggregation,
                    "bytes_received": run_dir.bytes_received,
                    "compression_ratio": round(run_dir.float32_bytes / max(run_dir.bytes_received, 1), 3),
                    "session_id": planned.config.session_id,
                    "out": str(folder),
                    "model": str(run_dir.model_path),
                    **ml_summary,
                }
            )
        )


def _dropout(share: float, secure: bool) -> float:
    if share and not secure:
        raise ConfigError("--secagg-dropout needs --secure-aggregation")
    if not 0 <= share < 1:
        raise ConfigError(f"--secagg-dropout must be in [0, 1), got {share}")
    return share


def _bad_fraction(value: float) -> DataSpec:
    from fedhive.errors import ConfigError

    raise ConfigError(f"--test-fraction must be between 0 and 1, got {value}")


def _metrics_text(metrics: dict[str, float]) -> str:
    if not metrics:
        return "model (no evaluation)"
    return ", ".join(f"{name} [bold]{value:.4f}[/]" for name, value in metrics.items())
