"""examples/sklearn_diabetes: a scikit-learn regressor federated by ``fedhive simulate`` (open
metrics ``mse`` and ``r2``, no accuracy), against the same model fitted centrally on the union of
the clients' training data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedhive
import fedhive.sklearn
from session_results import latest_results

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "sklearn_diabetes"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
CLIENTS, ROUNDS, EPOCHS, SEED = 5, 20, 1, 0


def test_the_app_loads_without_loading_data() -> None:
    # A fresh interpreter: importing the app defines things and loads no data.
    check = (
        "import fedhive\n"
        f"loaded = fedhive.load_app({str(PROJECT)!r})\n"
        "from sklearn_diabetes import task\n"
        "assert task.load_split.cache_info().currsize == 0\n"
        "print(loaded.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sklearn-diabetes"]
    loaded = fedhive.load_app(str(PROJECT))
    assert all(loaded.app.has(hook) for hook in ("init", "train", "evaluate", "central_evaluate"))
    assert loaded.run_config == {"lr": 0.01, "test_fraction": 0.2, "data_seed": 42}


def test_federated_r2_is_within_005_of_centralised(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--clients", str(CLIENTS), "--rounds", str(ROUNDS), "--epochs", str(EPOCHS)]  # lr: the project's
    proc = subprocess.run(
        [*FEDHIVE, "simulate", "--app", str(PROJECT), *args, "--seed", str(SEED), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = summary["metrics"]
    assert set(metrics) == {"mse", "r2"}  # central_evaluate's own metrics, no accuracy anywhere
    assert summary["accuracy"] is None

    # rounds.csv carries the app's open metrics: r2 (and mse) of the global model every round.
    rounds = list(csv.DictReader((latest_results(out) / "rounds.csv").open()))
    assert [int(r["round"]) for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["r2"] and r["mse"] for r in rounds), rounds
    assert not any(r["accuracy"] for r in rounds)
    assert float(rounds[-1]["r2"]) == pytest.approx(metrics["r2"], abs=1e-6)
    federated = float(metrics["r2"])

    centralised = _fit_centrally(fedhive.load_app(str(PROJECT)).run_config)
    message = (
        f"sklearn_diabetes: federated R2 {federated:.4f} ({CLIENTS} clients x {ROUNDS} rounds x {EPOCHS} epoch), "
        f"centralised R2 {centralised:.4f} ({ROUNDS * EPOCHS} epochs) on the same held-out split"
    )
    print(message)
    assert federated > 0.3, message
    assert abs(federated - centralised) <= 0.05, message


def _fit_centrally(run_config: dict[str, Any]) -> float:
    """The example's own model and fitting loop on the union of every client's part, the same
    number of passes over it (rounds x local epochs), from the same initial weights."""
    from sklearn_diabetes import task  # on sys.path: fedhive.load_app put the project folder there

    split = task.load_split(float(run_config["test_fraction"]), int(run_config["data_seed"]))
    n = len(split.y_train)
    parts = [task.partition(n, i, CLIENTS, int(run_config["data_seed"])) for i in range(CLIENTS)]
    union = np.sort(np.concatenate(parts))
    assert np.array_equal(union, np.arange(n))  # the clients' parts cover the training split exactly once
    model = task.make_model(float(run_config["lr"]), SEED)
    fedhive.sklearn.set_weights(model, fedhive.sklearn.init_weights(model, n_features=split.x_train.shape[1]))
    task.fit(model, split, split.x_train[union], split.y_train[union], epochs=ROUNDS * EPOCHS, seed=SEED)
    return task.scores(model, split, split.x_test, split.y_test)["r2"]
