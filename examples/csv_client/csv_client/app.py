"""A client that trains on its own CSV file: a numpy softmax regression, federated by fedhive.

    fedhive client --broker URL --id ID --secret S --app examples/csv_client --node data=/path/site.csv
    fedhive client ... --node data=/path/site.csv --node label=species      # label column (default label)

The file (``ctx.node["data"]``): a header row, numeric feature columns and a label column of class
ids 0 .. num_classes-1. The model's shape is the session's (``num_features``, ``num_classes`` in
the run config), so ``init`` needs no data and the coordinator can make the initial model without
any. ``train`` trains on the file's training share and reports its ``loss`` and ``accuracy``;
``evaluate`` scores the global model on the held-out share (``test_fraction``) of the same file.
Features are standardised with the site's own training rows. A file that does not fit is one
``fedhive.DataError`` line naming the row and column. Nothing is read at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import fedhive
from csv_client import task

app = fedhive.ClientApp()


def _site_data(
    config: Mapping[str, Any], ctx: fedhive.Context
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """((x, y) of the training share, (x, y) of the held-out share) of this site's file."""
    x, y, _ = task.read_csv(
        ctx.node["data"],
        ctx.node.get("label", "label"),
        num_features=int(config["num_features"]),
        num_classes=int(config["num_classes"]),
    )
    train_rows, test_rows = task.split(len(y), float(config["test_fraction"]), int(config["split_seed"]))
    x_train, x_test = task.standardise(x[train_rows], x[train_rows]), task.standardise(x[test_rows], x[train_rows])
    return (x_train.astype(np.float32), y[train_rows]), (x_test.astype(np.float32), y[test_rows])


@app.init
def init(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> Mapping[str, np.ndarray]:
    return task.init_model(int(config["num_features"]), int(config["num_classes"]))


@app.train
def train(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
    (x, y), _ = _site_data(config, ctx)
    model = {name: np.array(w, dtype=np.float32) for name, w in weights.items()}  # copies: ours to change
    task.train(
        model,
        x,
        y,
        epochs=int(config["epochs"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        seed=int(config["seed"]),
    )
    loss, accuracy = task.test(model, x, y)
    return fedhive.TrainResult(model, num_examples=len(y), metrics={"loss": loss, "accuracy": accuracy})


@app.evaluate
def evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model on the held-out share of this site's file (all of it if nothing is held out)."""
    train_share, test_share = _site_data(config, ctx)
    x, y = test_share if len(test_share[1]) else train_share
    loss, accuracy = task.test(dict(weights), x, y)
    return fedhive.EvalResult(num_examples=len(y), metrics={"loss": loss, "accuracy": accuracy})
