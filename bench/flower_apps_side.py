"""Flower's side of bench/compare_flower_apps.py: one Flower project run by Flower's simulation engine.

    bench/.flwr-venv/bin/python bench/flower_apps_side.py PROJECT CLIENTS WEIGHTS.npz [--cpus-per-client 1]

Runs the project as ``flwr run`` runs it in a local simulation: its ``pyproject.toml`` names the
ServerApp and ClientApp (``[tool.flwr.app.components]``), the run config is Flower's fusion of
``[tool.flwr.app.config]`` (with no overrides), and the apps are handed to Flower's Simulation
Runtime by reference with the project folder (``flwr.simulation.run_simulation._run_simulation``
with ``is_app=True``, what the ``flwr-simulation`` process calls), on the Ray backend with one CPU
per client. Nothing of the project is changed.

To see what the run produced without editing the apps, the strategy classes' aggregation methods
are wrapped in this process (the ServerApp runs in a thread here): each round's aggregated
evaluation metrics and the last aggregated model are recorded as Flower computed them. A legacy
strategy without an ``evaluate_metrics_aggregation_fn`` aggregates only the loss; its clients'
other metrics are averaged here, weighted by their example counts, as Flower's documentation's
``weighted_average`` does. Writes the final model to WEIGHTS.npz (plain arrays) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.common.config import get_fused_config_from_dir, get_project_config
from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

SEEN: dict[str, Any] = {"evaluate": {}, "arrays": None}


def _record_message_api() -> None:
    train, evaluate = message.FedAvg.aggregate_train, message.FedAvg.aggregate_evaluate

    @functools.wraps(train)
    def aggregate_train(self: Any, server_round: int, replies: Any) -> Any:
        arrays, metrics = train(self, server_round, replies)
        if arrays is not None:
            SEEN["arrays"] = {name: array.numpy() for name, array in arrays.items()}
        return arrays, metrics

    @functools.wraps(evaluate)
    def aggregate_evaluate(self: Any, server_round: int, replies: Any) -> Any:
        metrics = evaluate(self, server_round, replies)
        if metrics is not None:
            SEEN["evaluate"][server_round] = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        return metrics

    message.FedAvg.aggregate_train = aggregate_train  # type: ignore[method-assign]
    message.FedAvg.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]


def _record_legacy() -> None:
    fit, evaluate = legacy.FedAvg.aggregate_fit, legacy.FedAvg.aggregate_evaluate

    @functools.wraps(fit)
    def aggregate_fit(self: Any, server_round: int, results: Any, failures: Any) -> Any:
        parameters, metrics = fit(self, server_round, results, failures)
        if parameters is not None:
            SEEN["arrays"] = {str(i): a for i, a in enumerate(parameters_to_ndarrays(parameters))}
        return parameters, metrics

    @functools.wraps(evaluate)
    def aggregate_evaluate(self: Any, server_round: int, results: Any, failures: Any) -> Any:
        loss, metrics = evaluate(self, server_round, results, failures)
        total = sum(res.num_examples for _, res in results)
        if results and total:
            names = set.intersection(*(set(res.metrics) for _, res in results))
            averaged = {
                name: sum(res.num_examples * float(res.metrics[name]) for _, res in results) / total for name in names
            }
            SEEN["evaluate"][server_round] = {**averaged, **({"loss": float(loss)} if loss is not None else {})}
        return loss, metrics

    legacy.FedAvg.aggregate_fit = aggregate_fit  # type: ignore[method-assign]
    legacy.FedAvg.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("project", type=Path)
    ap.add_argument("clients", type=int)
    ap.add_argument("weights", type=Path)
    ap.add_argument("--cpus-per-client", type=float, default=1.0)
    args = ap.parse_args()
    project = args.project.resolve()
    components = get_project_config(project)["tool"]["flwr"]["app"]["components"]
    _record_message_api()
    _record_legacy()
    context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=get_fused_config_from_dir(project, {})
    )
    _run_simulation(
        num_supernodes=args.clients,
        exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
        server_app_attr=components["serverapp"],
        client_app_attr=components["clientapp"],
        app_dir=str(project),
        is_app=True,
        server_app_context=context,
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1},
        },
    )
    if SEEN["arrays"] is None:
        raise SystemExit("the Flower run aggregated no model")
    np.savez(args.weights, **SEEN["arrays"])
    evaluate = {str(r): m for r, m in sorted(SEEN["evaluate"].items())}
    print(json.dumps({"side": "flower", "evaluate": evaluate, "weights": str(args.weights)}), flush=True)


if __name__ == "__main__":
    main()
