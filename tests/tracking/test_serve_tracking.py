"""``fedhive serve`` with an MLflow tracking server: a session started over the REST API is
tracked (a parent run with its rounds, a child run per peer) and its final model registered."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.test_platform_flow import csv_bytes, platform, sign_up_and_in, wait_for

if TYPE_CHECKING:
    from mlflow.entities import Run

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS, PEERS = 2, 2


async def test_a_served_session_is_tracked_and_its_model_registered(tmp_path: Path, mlflow_server: str) -> None:
    import mlflow

    async with platform(
        tmp_path, local_clients=PEERS, mlflow_tracking_uri=mlflow_server, mlflow_register_as="served_model"
    ) as http:
        auth = await sign_up_and_in(http)

        async def peers_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= PEERS

        await wait_for(peers_online)
        form = {"label": "kind", "model": "simple-dnn:8", "rounds": str(ROUNDS), "epochs": "2", "min_peers": str(PEERS)}
        files = {"dataset": ("data.csv", io.BytesIO(csv_bytes()), "text/csv")}
        r = await http.post("/sessions/start", headers=auth, data=form, files=files)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        assert (await wait_for(finished, deadline_s=120))["status"] == "COMPLETED"
        rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
        client = mlflow.MlflowClient(tracking_uri=mlflow_server)

        async def parent_run() -> Run | None:
            experiment = await asyncio.to_thread(client.get_experiment_by_name, "fedhive")
            if experiment is None:
                return None
            found = await asyncio.to_thread(
                client.search_runs, [experiment.experiment_id], f"tags.`fedhive.session_id` = '{sid}'"
            )
            return found[0] if found and found[0].info.status == "FINISHED" else None

        # The tracker closes its runs and registers the model in a worker thread after the end.
        parent = await wait_for(parent_run, deadline_s=60, every=0.5)
        experiment_id = parent.info.experiment_id
    assert parent.data.params["model"] == "simple-dnn:8"
    history = client.get_metric_history(parent.info.run_id, "accuracy")
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    assert history[-1].value == pytest.approx(rounds[-1]["metrics"]["accuracy"])
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == PEERS
    version = client.get_model_version("served_model", "1")
    assert version.run_id == parent.info.run_id
