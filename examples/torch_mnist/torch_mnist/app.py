"""The fedhive app: the CNN and training loop of ``task.py``, run as a federated client.

    fedhive simulate --app examples/torch_mnist --clients 5 --rounds 10

Each virtual client holds one IID part (``ctx.node["partition_id"]`` of ``num_partitions``) of the
training split and the same part of the held-out split; the server side evaluates the global model
on the whole held-out split (``central_evaluate``). Nothing is loaded at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import fedhive
import fedhive.torch
from torch_mnist import task

app = fedhive.ClientApp()


def _setup(config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One thread per client (a simulation runs several in one process) and the data split:
    (training indices, held-out indices), the same on every node for the same config."""
    torch.set_num_threads(1)
    return task.split(float(config["test_fraction"]), int(config["data_seed"]))


def _my_part(indices: np.ndarray, config: Mapping[str, Any], ctx: fedhive.Context) -> np.ndarray:
    seed = int(config["data_seed"])
    return task.partition(indices, int(ctx.node["partition_id"]), int(ctx.node["num_partitions"]), seed)


def _model(weights: fedhive.Weights) -> task.Net:
    model = task.Net()
    fedhive.torch.set_weights(model, weights)
    return model


@app.init
def init(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> Mapping[str, np.ndarray]:
    torch.manual_seed(int(config["session_seed"]))  # every node draws the same initial model
    return fedhive.torch.get_weights(task.Net())


@app.train
def train(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
    train_idx, _ = _setup(config)
    mine = _my_part(train_idx, config, ctx)
    x, y = task.load_mnist()
    device = fedhive.torch.pick_device(ctx.node.get("device", "auto"))
    model = _model(weights)
    loss = task.train(
        model,
        x[mine],
        y[mine],
        epochs=int(config["epochs"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        seed=int(config["seed"]),  # a seed of this client and round: shuffles differ between them
        device=device,
    )
    return fedhive.TrainResult(fedhive.torch.get_weights(model), num_examples=len(mine), metrics={"loss": loss})


@app.evaluate
def evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model on this client's share of the held-out split."""
    _, test_idx = _setup(config)
    mine = _my_part(test_idx, config, ctx)
    return _evaluate(weights, mine, ctx)


@app.central_evaluate
def central_evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model on the whole held-out split (the server side's data)."""
    _, test_idx = _setup(config)
    return _evaluate(weights, test_idx, ctx)


def _evaluate(weights: fedhive.Weights, rows: np.ndarray, ctx: fedhive.Context) -> fedhive.EvalResult:
    x, y = task.load_mnist()
    device = fedhive.torch.pick_device(ctx.node.get("device", "auto"))
    accuracy, loss = task.test(_model(weights), x[rows], y[rows], device)
    return fedhive.EvalResult(num_examples=len(rows), metrics={"accuracy": accuracy, "loss": loss})
