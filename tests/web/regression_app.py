"""A regression app for the dashboard's tests, installed on the platform (``fedhive serve --app``).

Linear least squares in numpy on rows drawn from the session seed and the site's partition. It
reports ``mse`` from round 1 and ``r2`` from round 2 on (train and evaluate), so a metric appears
mid-session. With ``gate`` in the run config, round 2's training waits (bounded) until that file
exists: a test holds the session after round 1 to look at the page, then lets it go on.
"""

from __future__ import annotations

from pathlib import Path

NAME = "regression-demo"

PYPROJECT = f"""
[project]
name = "{NAME}"
version = "0.1.0"

[tool.fedhive]
app = "regression_app.py:app"

[tool.fedhive.config]
gate = ""
gate_timeout_s = 90
"""

APP = """
import os
import time

import numpy as np

import fedhive

FEATURES = 4
TRUE_W = np.arange(1, FEATURES + 1, dtype=np.float32) / FEATURES
app = fedhive.ClientApp()


def rows(config, part):
    rng = np.random.default_rng([int(config["session_seed"]), part])
    x = rng.standard_normal((60, FEATURES)).astype(np.float32)
    return x, x @ TRUE_W + np.float32(0.1) * rng.standard_normal(60).astype(np.float32)


def figures(weights, x, y, rounds):
    mse = float(np.mean((x @ weights["w"] - y) ** 2))
    if rounds < 2:  # r2 first appears in round 2
        return {"mse": mse}
    return {"mse": mse, "r2": 1.0 - mse / float(np.var(y))}


def wait_for_gate(config):
    gate, deadline = str(config["gate"]), time.monotonic() + float(config["gate_timeout_s"])
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


@app.init
def init(weights, config, ctx):
    return {"w": np.zeros(FEATURES, np.float32)}


@app.train
def train(weights, config, ctx):
    if int(config["round"]) == 2:
        wait_for_gate(config)
    x, y = rows(config, int(ctx.node["partition_id"]))
    w = weights["w"].copy()
    for _ in range(int(config["epochs"])):
        w -= np.float32(0.1) * (x.T @ (x @ w - y)) / np.float32(len(y))
    ctx.state["rounds"] = int(ctx.state.get("rounds", 0)) + 1
    return fedhive.TrainResult({"w": w}, len(y), figures({"w": w}, x, y, int(config["round"])))


@app.evaluate
def evaluate(weights, config, ctx):
    x, y = rows(config, int(ctx.node["partition_id"]))
    return fedhive.EvalResult(len(y), figures(weights, x, y, int(ctx.state.get("rounds", 0))))
"""


def write_app(folder: Path) -> Path:
    """The app's project folder (what ``--app`` takes), written under ``folder``."""
    project = folder / NAME
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "regression_app.py").write_text(APP)
    return project
