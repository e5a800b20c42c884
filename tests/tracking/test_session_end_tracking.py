"""A served session's MLflow runs follow the session (a real ``mlflow server``):

- cancelled: its parent run and its clients' runs end KILLED (not RUNNING for ever), the reason
  tagged; deleted from the platform: its runs are marked deleted;
- started from a registered MLflow model: its runs carry the ``use_case`` tag and tags linking
  the version it started from (and the run that produced it), and so does the version it
  registers, for both ways of naming the model (``mlflow_model`` and ``initial_model``).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation
from fedhive.service.session_manager import CANCELLED_REASON
from service.test_platform_flow import csv_bytes, platform, sign_up_and_in, wait_for
from tracking.conftest import mlflow_server  # noqa: F401  (fixture, found by name)
from web import regression_app

if TYPE_CHECKING:
    from mlflow.entities import Run

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(300)]


async def peers_online(http: httpx.AsyncClient, auth: dict[str, str], count: int = 3) -> None:
    async def online() -> bool:
        peers = (await http.get("/peers", headers=auth)).json()
        return bool(sum(p["status"] == "ONLINE" for p in peers) >= count)

    await wait_for(online)


async def runs_of(client: Any, sid: str) -> tuple[Run, list[Run]] | None:
    """The session's parent run and its clients' runs, deleted ones included."""
    from mlflow.entities import ViewType

    experiment = await asyncio.to_thread(client.get_experiment_by_name, "fedhive")
    if experiment is None:
        return None
    ids, every = [experiment.experiment_id], ViewType.ALL
    found = await asyncio.to_thread(
        client.search_runs, ids, f"tags.`fedhive.session_id` = '{sid}'", run_view_type=every
    )
    if not found:
        return None
    children = await asyncio.to_thread(
        client.search_runs, ids, f"tags.mlflow.parentRunId = '{found[0].info.run_id}'", run_view_type=every
    )
    return found[0], children


async def test_a_cancelled_sessions_runs_end_killed_and_a_deleted_ones_are_marked_deleted(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    gate = tmp_path / "go-on"  # round 2 waits for it: the session is RUNNING when it is cancelled
    installed = [str(regression_app.write_app(tmp_path / "apps"))]
    async with platform(tmp_path / "home", apps=installed, mlflow_tracking_uri=mlflow_server) as http:
        try:
            auth = await sign_up_and_in(http)
            await peers_online(http, auth)
            form = {
                "app": regression_app.NAME,
                "run_config": json.dumps({"gate": str(gate), "gate_timeout_s": 60}),
                "rounds": "4",
                "min_peers": "3",
            }
            r = await http.post("/sessions/start", headers=auth, data=form)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]

            async def tracked_round_1() -> tuple[Run, list[Run]] | None:
                runs = await runs_of(client, sid)
                if runs is None or len(runs[1]) < 3:
                    return None
                history = await asyncio.to_thread(client.get_metric_history, runs[0].info.run_id, "mse")
                return runs if history else None

            parent, children = await wait_for(tracked_round_1, deadline_s=120, every=0.5)
            assert {run.info.status for run in [parent, *children]} == {"RUNNING"}

            r = await http.post(f"/sessions/{sid}/cancel", headers=auth)
            assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text

            async def killed() -> tuple[Run, list[Run]] | None:
                runs = await runs_of(client, sid)
                done = runs is not None and {run.info.status for run in [runs[0], *runs[1]]} == {"KILLED"}
                return runs if done else None

            parent, children = await wait_for(killed, deadline_s=60, every=0.5)
            assert len(children) == 3
            assert parent.data.tags["fedhive.cancelled"] == CANCELLED_REASON
            assert parent.info.end_time is not None

            r = await http.delete(f"/sessions/{sid}", headers=auth)
            assert r.status_code == 204, r.text
            runs = await runs_of(client, sid)  # the delete answers once MLflow has been told
            assert runs is not None
            assert [run.info.lifecycle_stage for run in [runs[0], *runs[1]]] == ["deleted"] * 4
            assert (await http.get(f"/sessions/{sid}", headers=auth)).status_code == 404
        finally:
            gate.touch()  # the local peers' training threads stop waiting


@pytest.fixture(scope="module")
def seed_model(mlflow_server: str) -> str:  # noqa: F811
    """A short iris federation registered as ``seed_iris`` version 1, tagged use case iris;
    returns the run that produced it."""
    from fedhive.tracking.mlflow_tracker import MlflowTracker

    config = make_config(rounds=1, min_clients=2, epochs=1, model="simple-dnn:8", seed=0, data={"dataset": "iris"})
    plan = plan_builtin(config, DataSpec(dataset="iris"), 2)
    tracker = MlflowTracker(mlflow_server, experiment="seed-models", register_as="seed_iris", tags={"use_case": "iris"})
    run = run_federation(
        plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator,
        observers=[tracker.attach],
    )  # fmt: skip
    asyncio.run(run)
    assert tracker.model_version == "1" and tracker.parent_run_id is not None, tracker.failure
    return str(tracker.parent_run_id)


@pytest.mark.parametrize(
    "start_from",
    [{"mlflow_model": "seed_iris/1", "mlflow_use_case": "iris"}, {"initial_model": "models:/seed_iris/1"}],
    ids=["mlflow_model", "initial_model"],
)
async def test_a_session_started_from_a_registered_model_carries_its_use_case_and_version(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
    seed_model: str,
    start_from: dict[str, str],
) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    register_as = f"served_iris_{next(iter(start_from))}"
    settings = {"mlflow_tracking_uri": mlflow_server, "mlflow_register_as": register_as}
    async with platform(tmp_path / "home", local_clients=2, **settings) as http:
        auth = await sign_up_and_in(http)
        await peers_online(http, auth, 2)
        form = {"label": "kind", "rounds": "1", "epochs": "1", "min_peers": "2", **start_from}
        if "initial_model" in start_from:
            form["model"] = "simple-dnn:8"  # initial_model brings weights, not the architecture
        files = {"dataset": ("data.csv", io.BytesIO(csv_bytes()), "text/csv")}
        r = await http.post("/sessions/start", headers=auth, data=form, files=files)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> tuple[Run, list[Run]] | None:
            runs = await runs_of(client, sid)
            return runs if runs is not None and runs[0].info.status == "FINISHED" else None

        parent, children = await wait_for(finished, deadline_s=120, every=0.5)
    link = {
        "use_case": "iris",
        "fedhive.initial_model": "seed_iris/1",
        "fedhive.initial_model_uri": "models:/seed_iris/1",
        "fedhive.initial_model_run_id": seed_model,
    }
    assert link.items() <= parent.data.tags.items(), parent.data.tags
    assert children and all(run.data.tags.get("use_case") == "iris" for run in children)
    version = client.get_model_version(register_as, "1")
    assert version.run_id == parent.info.run_id
    assert link.items() <= version.tags.items(), version.tags


def test_a_runs_link_is_the_tracking_servers_page_without_credentials() -> None:
    from fedhive.tracking.session_runs import run_url

    assert run_url("http://user:pw@mlflow:5000/", "3", "ab12") == "http://mlflow:5000/#/experiments/3/runs/ab12"
    assert run_url("https://mlflow.example.org", "0", "x/y") == "https://mlflow.example.org/#/experiments/0/runs/x%2Fy"
    assert run_url("sqlite:////srv/fedhive/mlflow.db", "1", "ab12") is None  # a local store has no page
