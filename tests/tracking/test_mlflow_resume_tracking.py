"""A session resumed after a crash goes on in the MLflow runs of the process that crashed: one
parent run per session, each client's metrics in one child run, steps continuing."""

from __future__ import annotations

import uuid

import pytest

from fedhive.learning.factory import build_trainer
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(240)]
MODEL = "simple-dnn:8"


async def replay(tracker: object, events: list[object]) -> None:
    bus = EventBus()
    tracker.attach(bus)  # type: ignore[attr-defined]
    for event in events:
        await bus.dispatch(event)


def round_done(rnd: int, accuracy: float, params: object) -> ev.RoundCompleted:
    return ev.RoundCompleted(rnd, params, {"accuracy": accuracy, "loss": 1.0 - accuracy}, {}, 2, 2, 20, 0.1)  # type: ignore[arg-type]


async def test_a_resumed_session_goes_on_in_its_runs(mlflow_server: str) -> None:
    import mlflow

    from fedhive.tracking.mlflow_tracker import MlflowTracker

    data = prepare(DataSpec(dataset="iris"), 2, 0)
    params = build_trainer(MODEL, data.test.x, data.test.y, data.num_classes).initial_params(0)
    sid = f"resumed-{uuid.uuid4().hex[:8]}"
    config: dict[str, object] = {"model": MODEL, "strategy": "fedavg", "rounds": 3}
    update = {"loss": 0.5, "accuracy": 0.5}

    first = MlflowTracker(mlflow_server, experiment="test-resume")
    await replay(
        first,
        [
            ev.SessionStarted(sid, config, ["c1", "c2"]),
            ev.UpdateAccepted(1, "c1", 10, update, 100),
            ev.UpdateAccepted(1, "c2", 10, update, 100),
            round_done(1, 0.6, params),
        ],
    )  # ... and the process is killed: no end event, its runs stay RUNNING
    second = MlflowTracker(mlflow_server, experiment="test-resume")
    await replay(
        second,
        [
            ev.SessionStarted(sid, config, ["c1", "c2"], start_round=2),
            ev.UpdateAccepted(2, "c1", 10, update, 100),
            round_done(2, 0.7, params),
            ev.UpdateAccepted(3, "c2", 10, update, 100),
            round_done(3, 0.8, params),
            ev.SessionCompleted(sid, 3, params, {"accuracy": 0.8}),
        ],
    )
    assert second.failure is None and first.failure is None
    assert second.parent_run_id == first.parent_run_id and second.child_runs == first.child_runs

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("test-resume")
    parents = client.search_runs([experiment.experiment_id], filter_string=f"tags.`fedhive.session_id` = '{sid}'")
    assert [p.info.run_id for p in parents] == [first.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    accuracy = client.get_metric_history(first.parent_run_id, "accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert [m.step for m in client.get_metric_history(first.child_runs["c1"], "loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(first.child_runs["c2"], "loss")] == [1, 3]
    assert all(client.get_run(r).info.status == "FINISHED" for r in first.child_runs.values())
