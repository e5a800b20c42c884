"""The MLflow observer against a real ``mlflow server`` (SQLite backend, local artifact store) that
the test starts: a simulated federation is tracked as one parent run with a child run per client,
and its final model comes back from the registry as a working pyfunc model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(240)]
REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"
ROUNDS, CLIENTS = 3, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.exists() and shutil.which("mlflow") is None:
        if REQUIRE_SERVICES:
            pytest.fail("mlflow is not installed and FEDHIVE_REQUIRE_SERVICES=1")
        pytest.skip("mlflow is not installed: pip install 'fedhive[mlflow]'")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    cmd = [
        str(mlflow_bin if mlflow_bin.exists() else shutil.which("mlflow")),
        "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core CI box takes over a minute
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_session_tracked_and_model_registered(mlflow_server: str) -> None:
    import mlflow

    from fedhive.tracking.mlflow_tracker import MlflowTracker

    config = make_config(
        rounds=ROUNDS,
        min_clients=CLIENTS,
        epochs=5,
        lr=0.05,
        model="simple-dnn:8",
        seed=0,
        data={"dataset": "iris", "partition": "iid"},
    )
    data = DataSpec(dataset="iris", partition="iid")
    plan = plan_simulation(config, data, CLIENTS)
    tracker = MlflowTracker(mlflow_server, experiment="test-iris", register_as="iris_model", tags={"use_case": "iris"})
    result = await run_federation(
        plan.config,
        plan.trainers,
        plan.num_examples,
        plan.initial_params,
        evaluator=plan.evaluator,
        observers=[tracker.attach],
    )

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["strategy"] == "fedavg"
    assert parent.data.params["model"] == "simple-dnn:8"
    assert parent.data.params["data.partition"] == "iid"
    history = client.get_metric_history(parent.info.run_id, "accuracy")
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    assert history[-1].value == pytest.approx(result.metrics["accuracy"])

    assert len(tracker.child_runs) == CLIENTS
    for cid, run_id in tracker.child_runs.items():
        child = client.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["fedhive.client_id"] == cid
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, ROUNDS + 1))

    assert tracker.model_version == "1"
    version = client.get_model_version("iris_model", "1")
    assert version.tags["use_case"] == "iris"
    mlflow.set_tracking_uri(mlflow_server)  # the fluent loader reads it; set only in this test
    model = mlflow.pyfunc.load_model("models:/iris_model/1")
    x = plan.evaluator._x.numpy()  # the held-out rows, standardised as in training (torch tensors)
    y = plan.evaluator._y.numpy()
    accuracy = float(np.mean(model.predict(x) == y))
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-6)
