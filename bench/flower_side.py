"""Flower's side of bench/compare_flower.py; runs inside bench/.flwr-venv as its own process.

    bench/.flwr-venv/bin/python bench/flower_side.py WORKLOAD CLIENTS ROUNDS [--data FILE.npz]

WORKLOAD is ``logreg``, ``copy`` or ``shards`` (see bench/workload.py; ``shards`` trains on the
shards that ``fedhive_side.py export`` wrote, from fedhive's own partition code), or a compute-bound
one: ``logreg-compute`` (``logreg`` with ``COMPUTE_STEPS``) or ``cnn`` (the PyTorch example app's
own ``task.py``, examples/torch_mnist, on mnist5k: the same split, parts, seeds and training loop
as fedhive's side runs through the app). Written the way Flower's
1.4x documentation writes an app: a ``ClientApp`` with a ``@app.train()`` function, a
``ServerApp`` whose main runs the message-API ``FedAvg`` strategy, started in-process with
``flwr.simulation.run_simulation`` on the Ray backend. Federated evaluation is off
(``fraction_evaluate=0``); the server-side ``evaluate_fn``, which Flower calls before round 1 and
after every round, marks the round boundaries (and computes the test accuracy for ``shards``).

Ray: one CPU per client (``client_resources.num_cpus=1``), so on a 2-core machine two actors
train in parallel; Flower's default of 2 CPUs per client would leave one. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

import workload

# The example app's own code (its task.py), in the driver and in every Ray worker that imports this.
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torch_mnist"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

client_app = ClientApp()
server_app = ServerApp()
_SHARDS: dict[str, np.lib.npyio.NpzFile] = {}  # per Ray worker process: the exported shards
_RUN: dict[str, Any] = {}  # this driver's settings and results (the ServerApp runs in a thread here)


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _shards(path: str) -> np.lib.npyio.NpzFile:
    if path not in _SHARDS:
        _SHARDS[path] = np.load(path)
    return _SHARDS[path]


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    index = int(context.node_config["partition-id"])
    config = msg.content["config"]
    arrays = _arrays(msg.content["arrays"])
    kind = str(config["workload"])
    if kind == "cnn":
        out, n, loss = _cnn_train(arrays, config, index)
        acc = 0.0
    elif kind in ("logreg", "logreg-compute"):
        x, y = workload.logreg_client_data(int(config["seed"]), index)
        w, b, loss, acc = workload.logreg_fit(
            arrays["weight"], arrays["bias"], x, y, int(config["steps"]), float(config["lr"])
        )
        out, n = {"weight": w, "bias": b}, len(y)
    elif kind == "copy":
        out, n, loss, acc = workload.copy_fit(arrays), workload.SAMPLES, 0.0, 0.0
    else:
        data = _shards(str(config["data"]))
        x, y = data[f"x{index}"], data[f"y{index}"]
        w, b, loss, acc = workload.softmax_fit(
            arrays["weight"],
            arrays["bias"],
            x,
            y,
            epochs=int(config["epochs"]),
            batch_size=int(config["batch_size"]),
            lr=float(config["lr"]),
            momentum=float(config["momentum"]),
            seed=workload.derive_seed(int(config["seed"]), int(config["server-round"]), index),
        )
        out, n = {"weight": w, "bias": b}, len(y)
    metrics = MetricRecord({"loss": loss, "accuracy": acc, "num-examples": n})
    return Message(content=RecordDict({"arrays": _record(out), "metrics": metrics}), reply_to=msg)


def _cnn_train(arrays: dict[str, np.ndarray], config: Any, index: int) -> tuple[dict[str, np.ndarray], int, float]:
    """Client ``index`` of the CNN case: what examples/torch_mnist/torch_mnist/app.py's ``train`` does."""
    import torch
    from torch_mnist import task

    torch.set_num_threads(1)
    seed, clients = int(config["data_seed"]), int(config["clients"])
    train_idx, _ = task.split(float(config["test_fraction"]), seed)
    mine = task.partition(train_idx, index, clients, seed)
    x, y = task.load_mnist()
    model = task.Net()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    loss = task.train(
        model,
        x[mine],
        y[mine],
        epochs=int(config["epochs"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        seed=workload.derive_seed(int(config["seed"]), int(config["server-round"]), index),
    )
    out = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return out, len(mine), loss


def _cnn_initial() -> dict[str, np.ndarray]:
    """The example app's ``init``: its CNN drawn from the session's seed."""
    import torch
    from torch_mnist import task

    torch.manual_seed(workload.SEED)
    return {k: v.detach().numpy().copy() for k, v in task.Net().state_dict().items()}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    clients, rounds, kind = int(_RUN["clients"]), int(_RUN["rounds"]), str(_RUN["workload"])
    stamps: list[float] = []
    accuracy: list[float] = []
    config: dict[str, int | float | str] = {"workload": kind, "seed": workload.SEED}
    test = None
    if kind in ("logreg", "logreg-compute"):
        initial = workload.logreg_initial()
        steps = workload.COMPUTE_STEPS if kind == "logreg-compute" else workload.STEPS
        config |= {"steps": steps, "lr": workload.LR}
    elif kind == "cnn":
        initial = _cnn_initial()
        config |= dict(workload.CNN_HP) | dict(workload.CNN_DATA) | {"clients": clients}
    elif kind == "copy":
        initial = workload.copy_initial()
    else:
        data = np.load(str(_RUN["data"]))
        initial = {"weight": data["init_weight"], "bias": data["init_bias"]}
        test = data["test_x"], data["test_y"]
        config |= dict(workload.SOFTMAX_HP) | {"data": str(_RUN["data"])}

    def boundary(rnd: int, record: ArrayRecord) -> MetricRecord | None:
        if test is not None and rnd > 0:
            a = _arrays(record)
            _loss, acc = workload.softmax_evaluate(a["weight"], a["bias"], *test)
            accuracy.append(acc)
        stamps.append(time.time())
        return None

    arrays = _record(initial)
    del initial  # the harness keeps no copy of its own: memory is the framework's (fedhive_side.py alike)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=rounds,
        train_config=ConfigRecord(config),
        evaluate_fn=boundary,
    )
    _RUN["stamps"], _RUN["accuracy"] = stamps, accuracy
    _RUN["norm"] = workload.norm(_arrays(result.arrays))


def cli() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["logreg", "copy", "shards", "logreg-compute", "cnn"])
    ap.add_argument("clients", type=int)
    ap.add_argument("rounds", type=int)
    ap.add_argument("--data", help="shards written by fedhive_side.py export")
    ap.add_argument("--dataset", help="ignored: the shard file says it all")
    ap.add_argument("--partition", help="ignored: the shard file says it all")
    ap.add_argument("--cpus-per-client", type=float, default=1.0)
    args = ap.parse_args()
    _RUN.update(vars(args))
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={
            "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1},
        },
    )
    stamps = list(_RUN.get("stamps", []))
    print(
        json.dumps(
            {
                "side": "flower",
                "round_s": [b - a for a, b in itertools.pairwise(stamps)],
                "round_end": stamps[1:],
                "accuracy": _RUN.get("accuracy", []),
                "norm": _RUN.get("norm"),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    cli()
