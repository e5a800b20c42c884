"""A tiny numpy app installed on the platform in tests (``fedhive serve --app FOLDER``).

Written into a project folder (``pyproject.toml`` with ``[tool.fedhive]`` and a default run
config) so each test installs its own copy. Its metrics say what reached it: ``marker`` is the
run config's ``marker``, ``partition`` the site's ``ctx.node["partition_id"]``, ``rounds`` how
many rounds ``ctx.state`` has counted at this site.
"""

from __future__ import annotations

from pathlib import Path

NAME = "linear-demo"
DEFAULT_RUN_CONFIG = {"marker": 7, "rows": 40}

PYPROJECT = f"""
[project]
name = "{NAME}"
version = "0.1.0"

[tool.fedhive]
app = "linear_app.py:app"

[tool.fedhive.config]
marker = {DEFAULT_RUN_CONFIG["marker"]}
rows = {DEFAULT_RUN_CONFIG["rows"]}
"""

APP = """
import time

import numpy as np

import fedhive

FEATURES = 4
TRUE_W = np.arange(1, FEATURES + 1, dtype=np.float32) / FEATURES
app = fedhive.ClientApp()


def rows(config, part):
    rng = np.random.default_rng([int(config["session_seed"]), part])
    x = rng.standard_normal((int(config["rows"]), FEATURES)).astype(np.float32)
    return x, x @ TRUE_W


def mse(weights, x, y):
    return float(np.mean((x @ weights["w"] - y) ** 2))


@app.init
def init(weights, config, ctx):
    return {"w": np.zeros(FEATURES, np.float32)}


@app.train
def train(weights, config, ctx):
    part = int(ctx.node["partition_id"])
    x, y = rows(config, part)
    w = weights["w"].copy()
    for _ in range(int(config["epochs"])):
        w -= np.float32(config["lr"]) * (x.T @ (x @ w - y)) / np.float32(len(y))
    time.sleep(float(config.get("sleep_s", 0)))  # a slow site, for tests that kill the server mid-session
    ctx.state["rounds"] = int(ctx.state.get("rounds", 0)) + 1
    metrics = {
        "mse": mse({"w": w}, x, y),
        "marker": float(config["marker"]),
        "partition": float(part),
        "rounds": float(ctx.state["rounds"]),
    }
    return fedhive.TrainResult({"w": w}, len(y), metrics)


@app.evaluate
def evaluate(weights, config, ctx):
    x, y = rows(config, int(ctx.node["partition_id"]))
    return fedhive.EvalResult(len(y), {"mse": mse(weights, x, y)})


@app.central_evaluate
def central_evaluate(weights, config, ctx):
    x, y = rows(config, 10_000)
    return fedhive.EvalResult(len(y), {"mse": mse(weights, x, y), "marker": float(config["marker"])})
"""


def write_app(folder: Path) -> Path:
    """The app's project folder (what ``--app`` takes), written under ``folder``."""
    project = folder / "linear-demo"
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "linear_app.py").write_text(APP)
    return project
