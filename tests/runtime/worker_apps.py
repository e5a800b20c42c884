"""Apps for the worker-process tests: tests/linear_app.py's least squares, plus state and misbehaviour.

Loaded by file path (``worker_apps.py:NAME``), in the test's process and in each worker process.
What they do wrong, they do only in a worker (``in_worker``), so the same app trains cleanly in one
process for the comparison.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import numpy as np

import fedhive
from linear_app import initial, mse, sgd


def in_worker() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", "") == "fedhive.runtime.training_worker"


def _init(weights: Any, config: Any, ctx: fedhive.Context) -> dict[str, np.ndarray]:
    return initial(config)


def _stateful_init(weights: Any, config: Any, ctx: fedhive.Context) -> dict[str, np.ndarray]:
    """A client's state starts in ``init`` (which the simulation's own process runs, to check the
    model fits the client): it must reach whichever worker trains the client."""
    if "partition_id" in ctx.node:
        ctx.state["rounds"] = int(ctx.node["partition_id"]) % 3
    return initial(config)


def _app(train: Any, init: Any = _init) -> fedhive.ClientApp:
    app = fedhive.ClientApp()
    app.init(init)
    app.train(train)
    app.evaluate(lambda w, config, ctx: mse(w, config, ctx))
    return app


def _stateful_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    """The update depends on what the client kept in ``ctx.state``: its rounds so far (a number)
    and a drift vector (an array), so a lost or stale state changes the model's bits."""
    seen = int(ctx.state.get("rounds", 0))
    drift = ctx.state.get("drift", np.zeros(len(weights["w"]), np.float32))
    result = sgd(weights, {**config, "lr": float(config["lr"]) / (1 + seen)}, ctx)
    new = dict(result.weights)
    new["w"] = new["w"] + drift
    ctx.state["rounds"] = seen + 1
    ctx.state["drift"] = (drift + np.float32(1e-3) * (new["w"] - weights["w"])).astype(np.float32)
    return fedhive.TrainResult(new, result.num_examples, result.metrics)


def _raising_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    if int(ctx.node["partition_id"]) == 1:
        raise ValueError(f"no data for client {ctx.client_id}")
    return sgd(weights, config, ctx)


def _killing_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    """Client 2 kills its worker process (as kill -9 would) in round 1."""
    if in_worker() and int(ctx.node["partition_id"]) == 2 and int(config["round"]) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return sgd(weights, config, ctx)


def _hanging_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    """Client 0 never finishes round 1 in a worker (an endless loop, as far as anyone can tell)."""
    if in_worker() and int(ctx.node["partition_id"]) == 0 and int(config["round"]) == 1:
        time.sleep(3600)
    return sgd(weights, config, ctx)


def _slow_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    time.sleep(0.03)  # work that takes its time, without burning a core of the test machine
    return sgd(weights, config, ctx)


stateful = _app(_stateful_train, _stateful_init)
raising = _app(_raising_train)
killing = _app(_killing_train)
hanging = _app(_hanging_train)
slow = _app(_slow_train)


def _reporting_train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    """Reports, as metrics, the GPU and the math threads its process was given."""
    result = sgd(weights, config, ctx)
    seen = {
        "visible_gpu": float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1")),
        "blas_threads": float(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
    }
    return fedhive.TrainResult(result.weights, result.num_examples, {**result.metrics, **seen})


reporting = _app(_reporting_train)

if in_worker() and os.environ.get("WORKER_APPS_BROKEN") == "1":
    raise RuntimeError("this machine has no licence for the app")
