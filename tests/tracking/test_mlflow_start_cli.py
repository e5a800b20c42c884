"""``fedhive simulate`` with MLflow, as a user runs it (a subprocess): a tracked run registers its
final model in a real ``mlflow server``; a second run starts from ``--mlflow-model NAME/1`` with
exactly those weights; every way of naming the model wrongly ends in one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhive.core import codec
from fedhive.tracking.mlflow_registry import MlflowModelRef, load_registered_model
from tracking.conftest import free_port

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(300)]
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
IRIS = ("--dataset", "iris", "--clients", "3", "--seed", "0", "--json")


def fedhive(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FEDHIVE_MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [*FEDHIVE, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env={**environ, **(env or {})}
    )


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def registered(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tracked 3-round iris run on the server, registered as iris_model version 1."""
    out = tmp_path_factory.mktemp("first") / "run"
    proc = fedhive(
        "simulate", *IRIS, "--model", "simple-dnn:8", "--rounds", "3", "--epochs", "5", "--out", str(out),
        "--mlflow-tracking-uri", mlflow_server, "--mlflow-register", "iris_model", "--mlflow-use-case", "iris",
    )  # fmt: skip
    result = summary(proc)
    assert result["mlflow_model_version"] == "1" and result["mlflow_run_id"]
    result["weights"] = codec.decode(Path(result["model"]).read_bytes(), max_bytes=1 << 24)
    return result


def test_a_run_starts_from_the_registered_model(mlflow_server: str, registered: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    # the registry holds exactly the weights the first run ended with, read back without pickle
    loaded = load_registered_model(mlflow_server, MlflowModelRef("iris_model", 1), use_case="iris")
    assert loaded.model_spec == "simple-dnn:8"
    assert list(loaded.params) == list(registered["weights"])
    for name, array in registered["weights"].items():
        np.testing.assert_array_equal(loaded.params[name], array)

    # tracking on from the environment variable; --model comes from the registered spec
    env = {"FEDHIVE_MLFLOW_TRACKING_URI": mlflow_server}
    args = ("--mlflow-model", "iris_model/1", "--mlflow-use-case", "iris", "--rounds", "1", "--epochs", "1")
    second = summary(fedhive("simulate", *IRIS, *args, "--out", str(tmp_path / "second"), env=env))
    assert second["initial_model"] == "iris_model/1"
    # same data, seed and held-out split: before training it scores what the first run ended with
    assert second["initial_accuracy"] == pytest.approx(registered["accuracy"], abs=1e-9)

    run = mlflow.MlflowClient(tracking_uri=mlflow_server).get_run(second["mlflow_run_id"])
    assert run.data.tags["fedhive.initial_model"] == "iris_model/1" and run.data.tags["use_case"] == "iris"
    assert run.data.params["model"] == "simple-dnn:8"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--mlflow-model", "iris_model"), "must be NAME/VERSION"),
        (("--mlflow-model", "iris_model/0"), "must be NAME/VERSION"),
        (("--mlflow-model", "no_such_model/1"), "no MLflow model named 'no_such_model'"),
        (("--mlflow-model", "iris_model/7"), "MLflow model 'iris_model' has no version 7 (newest: 1)"),
        (("--mlflow-model", "iris_model/1", "--mlflow-use-case", "wine"), "has use case 'iris', not the use case"),
        (("--mlflow-model", "iris_model/1", "--model", "logreg"), "give --model or --mlflow-model, not both"),
        (("--mlflow-model", "iris_model/1", "--dataset", "wine"), "hidden1.weight 8x4"),
    ],
)
def test_a_wrong_model_is_one_line(
    mlflow_server: str, registered: dict[str, Any], args: tuple[str, ...], expected: str
) -> None:
    proc = fedhive("simulate", *IRIS, "--rounds", "1", "--mlflow-tracking-uri", mlflow_server, *args)
    line = one_line_error(proc)
    assert expected in line
    if "--dataset" in args:  # both shapes are named: the model's (4 features) and the data set's (13)
        assert "hidden1.weight 8x13" in line and "'wine'" in line


def test_an_unreachable_server_fails_fast(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = fedhive("simulate", *IRIS, "--rounds", "1", "--mlflow-model", "iris_model/1", "--mlflow-tracking-uri", dead)
    assert "is unreachable" in one_line_error(proc) and dead in proc.stderr
    tracked = fedhive("simulate", *IRIS, "--rounds", "1", "--out", str(tmp_path / "r"), "--mlflow-tracking-uri", dead)
    assert "is unreachable" in one_line_error(tracked)
    assert time.monotonic() - started < 90  # the probe waits 5 s, not MLflow's minutes of retries


def test_local_store_needs_no_server(tmp_path: Path) -> None:
    """``--mlflow`` tracks into ./mlruns; a later run in the same directory starts from its model."""
    first = summary(fedhive("simulate", *IRIS, "--model", "logreg", "--rounds", "1", "--mlflow",
                            "--mlflow-register", "local_iris", cwd=tmp_path))  # fmt: skip
    assert first["mlflow_model_version"] == "1"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (tmp_path / "mlruns" / "mlflow-artifacts").is_dir()
    second = summary(fedhive("simulate", *IRIS, "--rounds", "1", "--mlflow-model", "local_iris/1", cwd=tmp_path))
    assert second["initial_accuracy"] == pytest.approx(first["accuracy"], abs=1e-9)
    other = tmp_path / "elsewhere"
    other.mkdir()
    elsewhere = fedhive("simulate", *IRIS, "--rounds", "1", "--mlflow-model", "local_iris/1", cwd=other)
    assert "no MLflow store at" in one_line_error(elsewhere)


def test_without_the_extra_the_message_says_how_to_install(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['mlflow'] = None; from fedhive.cli.main import main; main()"
    for flags in (("--mlflow",), ("--mlflow-model", "iris_model/1")):
        proc = subprocess.run(
            [sys.executable, "-c", hide, "simulate", *IRIS, "--rounds", "1", "--out", str(tmp_path / "r"), *flags],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert "pip install 'fedhive[mlflow]'" in one_line_error(proc)
