"""``fedhive coordinator --mlflow-tracking-uri``: a networked session is tracked in MLflow as a
simulated one is, with a parent run per session (the global metrics per round) and a child run
per client process (its own training metrics per round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from amqp_cluster import Cluster, demo_part, session_toml

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

ROUNDS = 3


def test_a_networked_session_is_tracked_with_a_run_per_client(cluster: Cluster, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    idents = cluster.add_clients("c", 2)
    config = session_toml(tmp_path / "session.toml", rounds=ROUNDS, min_clients=2)
    coordinator = cluster.coordinator(
        config, tmp_path / "net", "--mlflow-tracking-uri", uri, "--mlflow-experiment", "networked"
    )
    clients = [cluster.client(ident, *demo_part(i, 2)) for i, ident in enumerate(idents, start=1)]
    assert coordinator.finish(180) == 0, coordinator.tail()
    for c in clients:
        assert c.finish(60) == 0, c.tail()
    summary = json.loads(coordinator.out[-1])

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["fedhive.session_id"] == summary["session_id"]
    history = client.get_metric_history(parent.info.run_id, "accuracy")
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    assert history[-1].value == pytest.approx(summary["accuracy"])
    experiment = client.get_experiment_by_name("networked")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["fedhive.client_id"] for r in children) == sorted(cid for cid, _ in idents)
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, ROUNDS + 1))
