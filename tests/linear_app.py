"""A small numpy app in both styles (decorators and a class), for the app API's tests.

Linear least squares on a synthetic regression task: each client holds its own rows, drawn from
its ``partition_id`` and the session seed, so a run is reproducible and needs no data files.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

import fedhive
from fedhive.app.loader import LoadedApp

FEATURES = 5
TRUE_W = np.arange(1, FEATURES + 1, dtype=np.float32) / FEATURES


def client_rows(ctx: fedhive.Context, config: Any) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([int(config["session_seed"]), int(ctx.node["partition_id"])])
    x = rng.standard_normal((40, FEATURES)).astype(np.float32)
    y = x @ TRUE_W + np.float32(0.01) * rng.standard_normal(40).astype(np.float32)
    return x, y


def initial(config: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(config["seed"]))
    return {"w": rng.standard_normal(FEATURES).astype(np.float32), "b": np.zeros(1, np.float32)}


def sgd(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    x, y = client_rows(ctx, config)
    w, b = weights["w"].copy(), weights["b"].copy()
    rng = np.random.default_rng(int(config["seed"]))
    lr = np.float32(config["lr"])
    for _ in range(int(config["epochs"])):
        for idx in np.array_split(rng.permutation(len(y)), 4):
            err = x[idx] @ w + b[0] - y[idx]
            w -= lr * (x[idx].T @ err) / len(idx)
            b -= lr * np.float32(err.mean())
    mse = float(np.mean((x @ w + b[0] - y) ** 2))
    return fedhive.TrainResult({"w": w, "b": b}, len(y), {"mse": mse})


def mse(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.EvalResult:
    x, y = client_rows(ctx, config)
    err = x @ weights["w"] + weights["b"][0] - y
    return fedhive.EvalResult(len(y), {"mse": float(np.mean(err**2))})


app = fedhive.ClientApp()


@app.init
def init(weights: Any, config: Any, ctx: fedhive.Context) -> dict[str, np.ndarray]:
    return initial(config)


@app.train
def train(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
    return sgd(weights, config, ctx)


@app.evaluate
def evaluate(weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.EvalResult:
    return mse(weights, config, ctx)


class LinearClient:
    """The same app as a class: what a Flower ``NumPyClient`` becomes by renaming ``fit``."""

    def init(self, weights: Any, config: Any, ctx: fedhive.Context) -> dict[str, np.ndarray]:
        return initial(config)

    def train(self, weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.TrainResult:
        return sgd(weights, config, ctx)

    def evaluate(self, weights: Any, config: Any, ctx: fedhive.Context) -> fedhive.EvalResult:
        return mse(weights, config, ctx)


def loaded(client_app: fedhive.ClientApp, name: str = "linear") -> LoadedApp:
    """``client_app`` as the loader would hand it over (a made-up digest)."""
    return LoadedApp(name, name, client_app, hashlib.sha256(name.encode()).hexdigest())
