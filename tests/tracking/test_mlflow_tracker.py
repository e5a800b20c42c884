"""The MLflow observer against a real ``mlflow server`` (SQLite backend, local artifact store) that
the test starts: a simulated federation is tracked as one parent run with a child run per client,
and its final model comes back from the registry as a working pyfunc model."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS, CLIENTS = 3, 3


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
    plan = plan_builtin(config, data, CLIENTS)
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
    held_out = prepare(data, CLIENTS, config.seed).test  # the rows the coordinator evaluated on
    x, y = held_out.x.astype(np.float32), held_out.y
    accuracy = float(np.mean(model.predict(x) == y))
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-6)


async def test_the_best_rounds_model_is_a_version_tagged_best(mlflow_server: str) -> None:
    import mlflow

    from fedhive.tracking.mlflow_tracker import MlflowTracker

    rounds = 3
    config = make_config(rounds=rounds, min_clients=2, epochs=1, model="logreg", seed=0, key_metric="loss", mode="max")
    plan = plan_builtin(config, DataSpec(dataset="iris"), 2)
    # mode=max on the loss: the first round is the "best", not the last one.
    tracker = MlflowTracker(mlflow_server, experiment="test-best", register_as="best_model_test")
    result = await run_federation(
        plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator,
        observers=[tracker.attach],
    )  # fmt: skip
    assert result.best_round == 1
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(tracker.parent_run_id)
    assert run.data.tags["fedhive.best_round"] == "1"
    assert tracker.best_version is not None and tracker.best_version != tracker.model_version
    best = client.get_model_version("best_model_test", tracker.best_version)
    assert best.tags["fedhive.best"] == "true" and best.tags["fedhive.best_round"] == "1"


async def test_a_run_per_trainer_per_round_nested_in_each_clients_run(mlflow_server: str) -> None:
    import mlflow

    from fedhive.tracking.mlflow_tracker import MlflowTracker

    config = make_config(
        rounds=ROUNDS, min_clients=CLIENTS, epochs=1, model="logreg-np", seed=0, data={"dataset": "iris"}
    )
    plan = plan_builtin(config, DataSpec(dataset="iris", partition="iid"), CLIENTS)
    tracker = MlflowTracker(mlflow_server, experiment="test-per-round", run_per_round=True)
    await run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, observers=[tracker.attach])

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("test-per-round").experiment_id
    for cid, child in tracker.child_runs.items():
        rounds = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{child}'")
        assert sorted(int(r.data.tags["fedhive.round"]) for r in rounds) == list(range(1, ROUNDS + 1))
        for r in rounds:
            assert r.info.status == "FINISHED" and r.data.tags["fedhive.client_id"] == cid
            assert r.data.metrics["loss"] == pytest.approx(
                next(
                    m.value
                    for m in client.get_metric_history(child, "loss")
                    if m.step == int(r.data.tags["fedhive.round"])
                )
            )
