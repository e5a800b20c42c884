"""Flower apps run unchanged by ``fedhive simulate --flower-app``, as a user runs it (a subprocess).

The apps (tests/compat/apps, docs/flower.md says why they are not ``flwr new`` templates) are
plain Flower projects: a Message API app on NumPy and one on PyTorch, a legacy ``NumPyClient`` on
scikit-learn. Each run checks what Flower users rely on: ``partition-id`` reaches the app,
``context.state`` lasts across rounds, the ServerApp's rounds and round config are used, and every
metric the app reports is in rounds.csv; a failing node costs its own update, in one line.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (docs/flower.md: .venv-flower)")

from session_results import latest_results

APPS = Path(__file__).parent / "apps"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def run_app(name: str, tmp_path: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    app = tmp_path / name
    shutil.copytree(APPS / name, app, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [*FEDHIVE, "simulate", "--flower-app", str(app), "--clients", "3", "--out", str(tmp_path / "out"), *extra]
    return subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def results(proc: subprocess.CompletedProcess[str], tmp_path: Path) -> tuple[dict, list[dict], list[dict]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    folder = latest_results(tmp_path / "out")
    rounds = list(csv.DictReader((folder / "rounds.csv").open()))
    clients = list(csv.DictReader((folder / "clients.csv").open()))
    return summary, rounds, clients


def trained(clients: list[dict]) -> list[dict]:
    return [row for row in clients if row["status"] == "accepted"]


def test_message_api_numpy_app_runs_unchanged(tmp_path: Path) -> None:
    summary, rounds, clients = results(run_app("numpy_message", tmp_path), tmp_path)
    assert summary["rounds"] == 3  # num-server-rounds, as the ServerApp would have run
    assert [r["round"] for r in rounds] == ["1", "2", "3"]
    # Every metric of the app's MetricRecord, client-weighted, plus its evaluation metric.
    for name in ("train_loss", "partition", "num-partitions", "times-trained", "server-round", "lr"):
        assert rounds[-1][f"train_{name}"] != "", name
    assert float(rounds[-1]["eval_mse"]) < float(rounds[0]["eval_mse"])  # it learns
    for row in trained(clients):
        client_index = int(row["client"].split("-")[1])
        assert float(row["partition"]) == client_index  # node_config["partition-id"]
        assert float(row["num-partitions"]) == 3
        assert float(row["times-trained"]) == float(row["round"])  # context.state persisted
        assert float(row["server-round"]) == float(row["round"])
        # The round's config (lr-decay from the ServerApp's train_config) reached the app.
        assert float(row["lr"]) == pytest.approx(0.05 * 0.9 ** (int(row["round"]) - 1))


def test_run_config_overrides_reach_the_flower_context(tmp_path: Path) -> None:
    _, _, clients = results(run_app("numpy_message", tmp_path, "--run-config", "learning-rate=0.01"), tmp_path)
    assert [float(r["lr"]) for r in trained(clients) if r["round"] == "1"] == pytest.approx([0.01] * 3)


def test_command_line_options_win_over_the_serverapp(tmp_path: Path) -> None:
    # Given options are told from defaults by their click parameter source (compared by name:
    # typer may carry its own copy of click).
    summary, rounds, _ = results(run_app("numpy_message", tmp_path, "--rounds", "2", "--evaluate", "none"), tmp_path)
    assert summary["rounds"] == 2 and [r["round"] for r in rounds] == ["1", "2"]  # not num-server-rounds (3)
    assert all(r.get("eval_mse", "") == "" for r in rounds)  # the ServerApp's clients would evaluate


def test_legacy_numpyclient_sklearn_app_runs_unchanged(tmp_path: Path) -> None:
    summary, rounds, clients = results(run_app("sklearn_legacy", tmp_path), tmp_path)
    assert summary["rounds"] == 3
    assert float(summary["accuracy"]) > 0.6  # the NumPyClient's evaluate: accuracy and loss
    assert rounds[-1]["loss"] != "" and rounds[-1]["train_train_accuracy"] != ""
    for row in trained(clients):
        assert float(row["partition"]) == int(row["client"].split("-")[1])
        assert float(row["times-trained"]) == float(row["round"])
        assert float(row["server-round"]) == float(row["round"])  # on_fit_config_fn's config


@pytest.mark.slow
def test_message_api_pytorch_app_runs_unchanged(tmp_path: Path) -> None:
    summary, rounds, clients = results(run_app("pytorch_message", tmp_path, timeout=600), tmp_path)
    assert summary["rounds"] == 2
    assert float(summary["metrics"]["eval_acc"]) > 0.7
    assert {"train_train_loss", "train_best_train_loss", "train_partition", "eval_loss"} <= set(rounds[-1])
    assert sorted(float(r["partition"]) for r in trained(clients) if r["round"] == "1") == [0, 1, 2]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("raise", "flhive-numpy train raised RuntimeError: partition 1 lost its data in round 2"),
        ("no-arrays", "flhive-numpy train (round 2): the reply must hold one ArrayRecord with the model, it holds 0"),
        ("no-num-examples", "flhive-numpy train (round 2): the reply has no MetricRecord with 'num-examples'"),
    ],
)
def test_a_failing_node_costs_its_update_in_one_line_and_the_round_goes_on(
    tmp_path: Path, fault: str, reason: str
) -> None:
    proc = run_app("numpy_message", tmp_path, "--run-config", "fail-partition=1", "--run-config", f"fault={fault}")
    summary, rounds, clients = results(proc, tmp_path)
    assert summary["rounds"] == 3 and rounds[1]["updates"] == "2"
    rejected = [row for row in clients if row["status"].startswith("rejected")]
    assert [(r["round"], r["client"]) for r in rejected] == [("2", "client-1")]
    assert rejected[0]["status"].startswith(f"rejected: {reason}")
    assert "\n" not in rejected[0]["status"]


def test_an_unknown_run_config_key_is_one_line(tmp_path: Path) -> None:
    proc = run_app("numpy_message", tmp_path, "--run-config", "no-such-key=1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--run-config: Key 'no-such-key' is not present" in proc.stderr
