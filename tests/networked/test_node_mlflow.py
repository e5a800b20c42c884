"""MLflow for every kind of node, against a real ``mlflow server``: a combiner tracks the session it
serves in a run of its own (its clients' counts and figures per round), a peer in a run of its
own with a step per round and, nested under it, a run per round; the coordinator's run stays the
one a session's id finds."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import pytest
from amqp_cluster import Cluster, demo_part, session_toml
from amqp_peers import Peers

from fedhive.tracking.session_runs import find_session_run
from tracking.conftest import mlflow_server  # noqa: F401  (fixture, found by name)

pytestmark = [pytest.mark.amqp, pytest.mark.slow, pytest.mark.mlflow]
ROUNDS = 2


def test_a_combiner_tracks_its_clients_per_round_beside_the_coordinators_run(
    cluster: Cluster,
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    mlflow = pytest.importorskip("mlflow")
    experiment = f"tree-{uuid4().hex[:6]}"
    tracking = ("--mlflow-tracking-uri", mlflow_server, "--mlflow-experiment", experiment)
    (combiner_id, secret), *_ = cluster.add_clients("comb", 1)
    idents = cluster.add_clients("client", 2)
    config = session_toml(tmp_path / "session.toml", rounds=ROUNDS, min_clients=2)
    coordinator = cluster.coordinator(config, tmp_path / "run", "--combiners", "1", *tracking)
    combiner = cluster.start(
        combiner_id, "combiner", *cluster.broker_args(), "--id", combiner_id, "--secret", secret,
        "--store", str(cluster.store_path), *tracking,
    )  # fmt: skip
    clients = [cluster.client(ident, *demo_part(i, 2), extra=("--via-combiner",)) for i, ident in enumerate(idents, 1)]
    assert coordinator.finish(180) == 0, coordinator.tail()
    for proc in [combiner, *clients]:
        assert proc.finish(60) == 0, proc.tail()
    summary = json.loads(coordinator.out[-1])
    sid = summary["session_id"]

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`fedhive.session_id` = '{sid}'")
    by_role = {r.data.tags.get("fedhive.role"): r for r in runs}
    assert set(by_role) == {"coordinator", "combiner"}, coordinator.tail()
    mine = by_role["combiner"]
    assert mine.data.tags["fedhive.combiner_id"] == combiner_id and "mlflow.parentRunId" not in mine.data.tags
    assert mine.info.status == "FINISHED"
    assert any(mine.info.run_id in line for line in combiner.out), combiner.tail()
    accepted = client.get_metric_history(mine.info.run_id, "clients_accepted")
    assert [(m.step, m.value) for m in accepted] == [(r, 2.0) for r in range(1, ROUNDS + 1)]
    examples = client.get_metric_history(mine.info.run_id, "examples")
    assert len(examples) == ROUNDS and all(m.value > 0 for m in examples)
    assert len(client.get_metric_history(mine.info.run_id, "loss")) == ROUNDS  # its clients' loss, by examples
    # A session's id still finds its coordinator's run (the dashboard's link), not the combiner's.
    found = find_session_run(mlflow_server, sid, experiment)
    assert found is not None and found.run_id == summary["mlflow_run_id"] == by_role["coordinator"].info.run_id


def test_each_peer_tracks_a_run_with_a_step_and_a_nested_run_per_round(
    peers: Peers,
    mlflow_server: str,  # noqa: F811
) -> None:
    mlflow = pytest.importorskip("mlflow")
    experiment, model = f"peers-{uuid4().hex[:6]}", f"peer-model-{uuid4().hex[:6]}"
    tracking = ("--mlflow-tracking-uri", mlflow_server, "--mlflow-experiment", experiment)
    procs = peers.start(2, ROUNDS, *tracking, "--mlflow-register", model)
    for p in procs:
        assert p.finish(timeout=180) == 0, p.tail()
        assert all(line.startswith("{") for line in p.out), p.tail()  # --json: the MLflow line went to stderr
        assert any("tracked in MLflow" in line for line in p.err), p.tail()
    digests = {r: row["digest"] for r, row in peers.rounds(procs[0]).items()}

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    tops = client.search_runs([exp.experiment_id], filter_string="tags.`fedhive.role` = 'peer'")
    assert sorted(r.info.run_name for r in tops) == ["peer-1-of-2", "peer-2-of-2"]
    for run in tops:
        assert run.info.status == "FINISHED"
        assert run.data.tags["fedhive.digest"] == digests[ROUNDS]  # the model every peer agreed on
        members = client.get_metric_history(run.info.run_id, "members")
        assert [(m.step, m.value) for m in members] == [(r, 2.0) for r in range(1, ROUNDS + 1)]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2]
        nested = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
        )
        rounds = {int(r.data.tags["fedhive.round"]): r for r in nested}
        assert sorted(rounds) == list(range(1, ROUNDS + 1))
        for rnd, child in rounds.items():
            assert child.data.tags["fedhive.digest"] == digests[rnd] and child.info.status == "FINISHED"
            assert "accuracy" in child.data.metrics
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == 2 and {v.tags["fedhive.digest"] for v in versions} == {digests[ROUNDS]}
