"""The figures of bench/compare_flower_apps.py, which runs Flower in an environment of its own (so
its quick mode costs a Ray install on a fresh machine: too slow for the suite): how it compares
models and curves, judges the targets, and records what Flower's strategies aggregated."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower side's recording uses flwr (pip install 'fedhive[flower]')")

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from flwr.app import DEFAULT_TTL, ArrayRecord, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.app.message import make_message  # noqa: E402
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters  # noqa: E402
from flwr.server import strategy as legacy  # noqa: E402
from flwr.serverapp import strategy as message  # noqa: E402

import compare_flower_apps as bench  # noqa: E402
import flower_apps_side  # noqa: E402

NUMPY, PYTORCH = bench.APPS[0], bench.APPS[2]


def test_weights_are_compared_per_tensor_relative_to_flowers() -> None:
    flower = {"0": np.array([3.0, 4.0]), "1": np.array([10.0])}
    assert bench.weights_difference({k: v.copy() for k, v in flower.items()}, flower) == 0.0
    # A change of 5e-6 in a tensor of norm 5 is 1e-6 relative; the other tensor is exact.
    near = {"0": np.array([3.0, 4.0 + 5e-6]), "1": np.array([10.0])}
    assert bench.weights_difference(near, flower) == pytest.approx(1e-6)
    far = {"0": np.array([3.0, 4.0]), "1": np.array([10.001])}
    assert bench.weights_difference(far, flower) == pytest.approx(1e-4)
    with pytest.raises(bench.RunFailed, match="tensors differ"):
        bench.weights_difference({"0": flower["0"]}, flower)
    with pytest.raises(bench.RunFailed, match="tensor '1'"):
        bench.weights_difference({"0": flower["0"], "1": np.zeros(2)}, flower)


def test_curves_are_compared_round_by_round_in_points() -> None:
    assert bench.curve_difference({1: 0.80, 2: 0.85}, {1: 0.80, 2: 0.855}) == pytest.approx(0.5)
    with pytest.raises(bench.RunFailed, match="rounds differ"):
        bench.curve_difference({1: 0.8}, {1: 0.8, 2: 0.9})


def test_the_targets_are_judged_per_app() -> None:
    good = {"speedup": 5.0, "memory_share": 0.25, "weights_rel_diff": 1e-5, "curve_max_diff_points": 1.0}
    assert bench.judge(NUMPY, good) == {"speedup_5x": True, "memory_quarter": True, "weights_1e-5": True}
    assert bench.judge(PYTORCH, good) == {"speedup_5x": True, "memory_quarter": True, "curve_1_point": True}
    bad = {"speedup": 4.9, "memory_share": 0.26, "weights_rel_diff": 2e-5, "curve_max_diff_points": 1.5}
    assert not any(bench.judge(NUMPY, bad).values()) and not any(bench.judge(PYTORCH, bad).values())


def test_a_target_is_met_only_when_every_app_ran_and_met_it() -> None:
    floor = {"floor_speedup": 7.0, "floor_memory_share": 0.15, "fedhive_over_floor": 1.1}
    met = {"speedup": 6.0, "memory_share": 0.2, "weights_rel_diff": 0.0, "met": {"speedup_5x": True}} | floor
    assert bench.summary({"numpy": met})["targets_met"] == {"speedup_5x": True}
    slow = met | {"speedup": 2.0, "met": {"speedup_5x": False}}
    assert bench.summary({"numpy": met, "pytorch": slow})["targets_met"] == {"speedup_5x": False}
    failed = {"status": "failed", "why": "exit 1"}
    assert bench.summary({"numpy": met, "sklearn": failed})["targets_met"] == {"speedup_5x": False}


def test_rounds_csv_columns_become_curves() -> None:
    rows = [{"round": "1", "accuracy": "0.5"}, {"round": "2", "accuracy": ""}, {"round": "3", "accuracy": "0.75"}]
    assert bench.rounds_metric(rows, "accuracy") == {1: 0.5, 3: 0.75}


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # The side wraps Flower's strategy classes for the whole process: undone after the test.
    wrapped = [(message.FedAvg, "aggregate_train"), (message.FedAvg, "aggregate_evaluate")]
    wrapped += [(legacy.FedAvg, "aggregate_fit"), (legacy.FedAvg, "aggregate_evaluate")]
    for cls, name in wrapped:
        monkeypatch.setattr(cls, name, getattr(cls, name))
    monkeypatch.setattr(flower_apps_side, "SEEN", {"evaluate": {}, "arrays": None})
    flower_apps_side._record_message_api()
    flower_apps_side._record_legacy()
    return flower_apps_side.SEEN


def reply(content: RecordDict) -> Message:
    # A node's reply as the server side receives it (metadata made here: no run is going on).
    metadata = Metadata(
        run_id=1,
        message_id=uuid.uuid4().hex,
        src_node_id=7,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type="train",
    )
    return make_message(metadata, content)


def test_the_flower_side_records_what_a_message_api_strategy_aggregated(recording: dict[str, Any]) -> None:
    strategy = message.FedAvg()
    replies = [
        reply(RecordDict({"arrays": ArrayRecord([np.full(2, v, np.float32)]), "m": MetricRecord({"num-examples": n})}))
        for v, n in ((1.0, 1), (4.0, 2))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(recording["arrays"]["0"], [3.0, 3.0])  # example-weighted by Flower
    evaluations = [
        reply(RecordDict({"m": MetricRecord({"acc": acc, "num-examples": n})})) for acc, n in ((0.5, 1), (0.8, 3))
    ]
    strategy.aggregate_evaluate(1, evaluations)
    assert recording["evaluate"][1]["acc"] == pytest.approx(0.725)


def test_the_flower_side_averages_a_legacy_clients_metrics_by_examples(recording: dict[str, Any]) -> None:
    strategy = legacy.FedAvg()
    ok = Status(Code.OK, "")
    fits = [(None, FitRes(ok, ndarrays_to_parameters([np.full(2, v)]), n, {})) for v, n in ((1.0, 1), (4.0, 2))]
    strategy.aggregate_fit(2, fits, [])
    np.testing.assert_allclose(recording["arrays"]["0"], [3.0, 3.0])
    results = ((1.0, 1, 0.5), (2.0, 3, 0.8))  # loss, examples, accuracy
    evaluations = [(None, EvaluateRes(ok, loss, n, {"accuracy": acc})) for loss, n, acc in results]
    strategy.aggregate_evaluate(2, evaluations, [])
    assert recording["evaluate"][2] == pytest.approx({"accuracy": 0.725, "loss": 1.75})


@pytest.mark.parametrize(
    ("folder", "metrics"), [("numpy_message", ["eval_mse"]), ("sklearn_legacy", ["accuracy", "loss"])]
)
def test_the_floor_runs_the_app_as_a_framework_would(tmp_path: Path, folder: str, metrics: list[str]) -> None:
    """bench/flower_app_floor.py, the no-framework side, does a run's work: from the ServerApp's
    initial model, with its round config, its last round's evaluation is fedhive's to the digit,
    so the floor measures the app's own cost and not a shortcut."""
    app = tmp_path / folder
    shutil.copytree(bench.APPS_DIR / folder, app, ignore=shutil.ignore_patterns("__pycache__"))
    command = [*bench.FEDHIVE, "simulate", "--flower-app", str(app), "--clients", "3", "--out", str(tmp_path / "o")]
    fedhive = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=240)
    assert fedhive.returncode == 0, fedhive.stderr[-2000:]
    summary = json.loads(fedhive.stdout.strip().splitlines()[-1])
    last = list(csv.DictReader((Path(summary["out"]) / "rounds.csv").open()))[-1]
    floor = subprocess.run(
        [sys.executable, str(BENCH / "flower_app_floor.py"), str(app), "3"], capture_output=True, text=True, timeout=240
    )
    assert floor.returncode == 0, floor.stderr[-2000:]
    evaluated = json.loads(floor.stdout.strip().splitlines()[-1])["evaluate"]
    for name in metrics:
        assert evaluated[name] == pytest.approx(float(last[name]), rel=1e-4), name
