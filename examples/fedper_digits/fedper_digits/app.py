"""FedPer as a fedhive app: a federated body, a private head per client that never leaves it.

    fedhive simulate --app examples/fedper_digits --clients 10 --rounds 20 --evaluate clients

The network is ``body`` (64 -> hidden, ReLU) followed by a head (hidden -> 10). Each client has:

- ``body.*``: federated (sent, averaged, sent back);
- ``global_head.*``: a head that is federated too, only so that there is a *global model*
  (``body`` + ``global_head``, what plain FedAvg would give) to compare the personalised ones with;
- ``private_head.*``: this client's own head, kept ONLY in ``ctx.state`` (in memory in a
  simulation, in ``--state-dir`` for a client process). ``init`` does not give it and ``train`` never
  returns it: the coordinator never sees it.

``train`` trains the body and both heads on the client's local training rows (each head on its own
cross-entropy, the body on their sum), keeps the new private head in ``ctx.state`` and returns the
body and the global head. ``evaluate`` scores the global body on the client's local test rows twice:
with its private head (``personal_accuracy``) and with the global head (``global_accuracy``).

Each client's data: ``ctx.node["partition_id"]`` of ``num_partitions`` parts of the digits training
rows, drawn with a Dirichlet(``alpha``) label skew from ``config["session_seed"]``, then cut 80/20
into local train/test. Nothing is loaded at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import fedhive
from fedper_digits import task

app = fedhive.ClientApp()

BODY = "body"
GLOBAL_HEAD = "global_head"  # federated: the global model's head, for comparison
PRIVATE_HEAD = "private_head"  # ctx.state only


def _local_data(config: Mapping[str, Any], ctx: fedhive.Context) -> tuple[np.ndarray, np.ndarray]:
    """This client's (local train rows, local test rows): indices into ``task.load_data()``."""
    pid, parts = int(ctx.node["partition_id"]), int(ctx.node["num_partitions"])
    if not 0 <= pid < parts:
        raise fedhive.ConfigError(f"partition_id must be in [0, {parts}), got {pid}")
    seed = int(config["session_seed"])
    rows = task.client_parts(
        parts, float(config["alpha"]), int(config["min_rows"]), float(config["holdout_fraction"]), seed
    )[pid]
    return task.local_split(rows, float(config["local_test_fraction"]), seed=[seed, pid])


def _private_head(config: Mapping[str, Any], ctx: fedhive.Context) -> dict[str, np.ndarray]:
    """This client's head from ``ctx.state``; drawn (seeded by the session and the client's part)
    and stored there the first time it is needed."""
    names = (f"{PRIVATE_HEAD}.weight", f"{PRIVATE_HEAD}.bias")
    if not all(name in ctx.state for name in names):
        rng = np.random.default_rng([int(config["session_seed"]), int(ctx.node["partition_id"]), 1])
        ctx.state.update(task.init_head(PRIVATE_HEAD, int(config["hidden"]), rng))
    return {name: np.array(ctx.state[name], dtype=np.float32) for name in names}


@app.init
def init(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> Mapping[str, np.ndarray]:
    """The federated model: the body and the global head (never a private head)."""
    rng = np.random.default_rng(int(config["session_seed"]))  # every node draws the same model
    hidden = int(config["hidden"])
    return {**task.init_body(hidden, rng), **task.init_head(GLOBAL_HEAD, hidden, rng)}


@app.train
def train(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
    train_rows, _ = _local_data(config, ctx)
    x, y = task.load_data()
    params = {name: np.array(w, dtype=np.float32) for name, w in weights.items()}  # copies: ours to change
    params.update(_private_head(config, ctx))
    losses = task.train(
        params,
        (PRIVATE_HEAD, GLOBAL_HEAD),
        x[train_rows],
        y[train_rows],
        epochs=int(config["epochs"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        seed=int(config["seed"]),  # this client's and round's: shuffles differ between them
    )
    private = {name: params.pop(name) for name in list(params) if name.startswith(f"{PRIVATE_HEAD}.")}
    ctx.state.update(private)  # stays here
    return fedhive.TrainResult(
        params,  # body.* and global_head.*
        num_examples=len(train_rows),
        metrics={"personal_loss": losses[PRIVATE_HEAD], "global_loss": losses[GLOBAL_HEAD]},
    )


@app.evaluate
def evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global body on this client's local test rows, with its private head and with the global head."""
    _, test_rows = _local_data(config, ctx)
    x, y = task.load_data()
    params = {**weights, **_private_head(config, ctx)}
    personal_accuracy, personal_loss = task.test(params, PRIVATE_HEAD, x[test_rows], y[test_rows])
    global_accuracy, global_loss = task.test(params, GLOBAL_HEAD, x[test_rows], y[test_rows])
    return fedhive.EvalResult(
        num_examples=len(test_rows),
        metrics={
            "personal_accuracy": personal_accuracy,
            "global_accuracy": global_accuracy,
            "personal_loss": personal_loss,
            "global_loss": global_loss,
        },
    )


@app.central_evaluate
def central_evaluate(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.EvalResult:
    """The global model (body + global head) on the held-out rows, every class in its share: what a
    new client with no private head yet would get. Used by ``--evaluate central`` (or ``auto``)."""
    _, held = task.holdout_split(float(config["holdout_fraction"]), int(config["session_seed"]))
    x, y = task.load_data()
    accuracy, loss = task.test(weights, GLOBAL_HEAD, x[held], y[held])
    return fedhive.EvalResult(num_examples=len(held), metrics={"accuracy": accuracy, "loss": loss})
