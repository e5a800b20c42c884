"""examples/fedper_digits: FedPer (a federated body, a private head per client in ``ctx.state``) on
digits with a Dirichlet(0.1) label skew, against the global model of the same federation."""

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
from session_results import latest_results

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "fedper_digits"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
CLIENTS, ROUNDS, EPOCHS = 10, 10, 2


def test_the_app_loads_without_loading_data() -> None:
    check = (
        "import sys, fedhive\n"
        f"loaded = fedhive.load_app({str(PROJECT)!r})\n"
        "from fedper_digits import task\n"
        "assert task.load_data.cache_info().currsize == 0 and task.client_parts.cache_info().currsize == 0\n"
        "assert 'sklearn.datasets' not in sys.modules\n"
        "print(loaded.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fedper-digits"


def test_personalised_models_beat_the_global_model_on_label_skewed_digits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
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
            "--evaluate",
            "clients",
            "--run-config",
            "alpha=0.1",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    metrics = summary["metrics"]
    personal, global_ = float(metrics["personal_accuracy"]), float(metrics["global_accuracy"])
    message = (
        f"fedper_digits, Dirichlet(0.1), {CLIENTS} clients x {ROUNDS} rounds x {EPOCHS} epochs: mean local accuracy "
        f"personalised {personal:.4f} vs global {global_:.4f} (simulate {summary['wall_s']} s)"
    )
    print(message)
    assert personal > global_, message
    assert personal > 0.85, message

    out = latest_results(out)  # the session's own folder
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rounds] == list(range(1, ROUNDS + 1))
    assert float(rounds[-1]["personal_accuracy"]) == pytest.approx(personal, abs=1e-6)
    # The run's model is the federated one: body and global head, no private head.
    from fedhive.core import codec

    model = codec.decode((out / "model.safetensors").read_bytes(), max_bytes=1 << 24)
    assert sorted(model) == ["body.bias", "body.weight", "global_head.bias", "global_head.weight"]


def _config(loaded: fedhive.LoadedApp, **call: Any) -> dict[str, Any]:
    base = {"session_seed": 0, "seed": 0, "round": 1, "epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9}
    return {**loaded.run_config, **base, **call}


def test_the_private_head_stays_in_ctx_state() -> None:
    loaded = fedhive.load_app(str(PROJECT))
    init, train, evaluate = (loaded.app.hook(h) for h in ("init", "train", "evaluate"))
    ctx = fedhive.Context("client-3", {"partition_id": 3, "num_partitions": CLIENTS})

    weights = init(fedhive.Weights(), _config(loaded, round=0), fedhive.Context("server"))
    assert sorted(weights) == ["body.bias", "body.weight", "global_head.bias", "global_head.weight"]
    views = {}
    for name, w in weights.items():  # as the runtime hands them: read-only views
        view = w.view()
        view.flags.writeable = False
        views[name] = view

    first = train(fedhive.Weights(views), _config(loaded, round=1, seed=11), ctx)
    assert set(first.weights) == set(weights)  # the same federated tensors, nothing more
    assert not any("private" in name for name in first.weights)
    assert sorted(ctx.state) == ["private_head.bias", "private_head.weight"]
    head = np.array(ctx.state["private_head.weight"])
    assert not any(w.shape == head.shape and np.allclose(w, head) for w in first.weights.values())
    assert not np.allclose(first.weights["body.weight"], weights["body.weight"])  # the body did train

    # Round 2 starts from the head kept in ctx.state and leaves a newer one there.
    second = train(fedhive.Weights(first.weights), _config(loaded, round=2, seed=12), ctx)
    assert not any("private" in name for name in second.weights)
    assert not np.allclose(ctx.state["private_head.weight"], head)

    result = evaluate(fedhive.Weights(second.weights), _config(loaded), ctx)
    assert {"personal_accuracy", "global_accuracy"} <= set(result.metrics)
    assert result.num_examples > 0
