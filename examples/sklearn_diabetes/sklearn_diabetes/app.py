"""The fedhive app: the SGDRegressor of ``task.py``, trained federated with ``fedhive.sklearn``.

    fedhive simulate --app examples/sklearn_diabetes --clients 5 --rounds 20

Each virtual client holds one IID part (``ctx.node["partition_id"]`` of ``num_partitions``) of the
training split and the same part of the held-out split; the server side scores the global model on
the whole held-out split (``central_evaluate``). Metrics: ``mse`` and ``r2``. Nothing is loaded at
import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import fedhive
import fedhive.sklearn
from sklearn_diabetes import task

app = fedhive.ClientApp()


def _split(config: Mapping[str, Any]) -> task.Split:
    return task.load_split(float(config["test_fraction"]), int(config["data_seed"]))


def _my_rows(n: int, config: Mapping[str, Any], ctx: fedhive.Context) -> np.ndarray:
    seed = int(config["data_seed"])
    return task.partition(n, int(ctx.node["partition_id"]), int(ctx.node["num_partitions"]), seed)


def _model(weights: fedhive.Weights, config: Mapping[str, Any]) -> Any:
    model = task.make_model(float(config["lr"]), int(config["seed"]))
    fedhive.sklearn.set_weights(model, weights)  # partial_fit goes on from the global model
    return model


@app.init
def init(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> Mapping[str, np.ndarray]:
    model = task.make_model(float(config["lr"]), int(config["session_seed"]))
    return fedhive.sklearn.init_weights(model, n_features=_split(config).x_train.shape[1])


@app.train
def train(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
    split = _split(config)
    rows = _my_rows(len(split.y_train), config, ctx)
    x, y = split.x_train[rows], split.y_train[rows]
    model = task.fit(_model(weights, config), split, x, y, epochs=int(config["epochs"]), seed=int(config["seed"]))
    return fedhive.TrainResult(
        fedhive.sklearn.get_weights(model), num_examples=len(rows), metrics=task.scores(model, split, x, y)
    )


@app.evaluate
def evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model on this client's share of the held-out split."""
    split = _split(config)
    rows = _my_rows(len(split.y_test), config, ctx)
    metrics = task.scores(_model(weights, config), split, split.x_test[rows], split.y_test[rows])
    return fedhive.EvalResult(num_examples=len(rows), metrics=metrics)


@app.central_evaluate
def central_evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model on the whole held-out split (the server side's data)."""
    split = _split(config)
    metrics = task.scores(_model(weights, config), split, split.x_test, split.y_test)
    return fedhive.EvalResult(num_examples=len(split.y_test), metrics=metrics)
