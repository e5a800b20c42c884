"""The main flow a user goes through, on SQLite and on PostgreSQL: sign up, an admin registers
peers, the peers come ONLINE, the user uploads a seed model and starts a session with a CSV,
follows it, the coordinator's records show up, the user cancels, deletes, downloads."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from api_harness import Api

from fedhive.core.codec import encode
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.artifacts import ref_for
from fedhive.storage.models import ClientStatus, ResultStatus, SessionStatus

CSV = b"".join([b"f1,f2,f3,species\n", *(f"{i % 7}.5,{i % 3},{i % 5}.25,{i % 2}\n".encode() for i in range(40))])


@pytest.mark.parametrize("settings", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_main_flow(api: Api) -> None:
    root = await api.admin()
    peers = []
    for name in ("site-a", "site-b", "site-c"):
        response = await api.client.post("/peers", json={"name": name}, headers=root)
        assert response.status_code == 201
        peers.append(response.json()["id"])
    with api.services.db.session() as s:  # their first heartbeats
        for peer in peers:
            users_repo.record_heartbeat(s, peer)

    ann = await api.user("ann@example.org")
    seed = encode({"linear.weight": np.zeros((2, 3), np.float32), "linear.bias": np.zeros(2, np.float32)})
    files = {"file": ("seed.safetensors", seed, "application/octet-stream")}
    model = await api.client.post("/models", data={"name": "flowers", "model_spec": "logreg"}, files=files, headers=ann)
    assert model.status_code == 201

    form = {"label": "species", "model_name": "flowers", "strategy": "fedavg", "rounds": "3", "min_peers": "4"}
    csv_file = {"dataset": ("flowers.csv", CSV, "text/csv")}
    too_few = await api.client.post("/sessions/start", data=form, files=csv_file, headers=ann)
    assert too_few.status_code == 400 and too_few.json() == {"detail": "not enough peers: 3 ONLINE, 4 needed"}
    response = await api.client.post("/sessions/start", data={**form, "min_peers": "3"}, files=csv_file, headers=ann)
    assert response.status_code == 201, response.text
    session = response.json()
    request = api.launcher.started[-1]
    assert request.initial_model == ("flowers", 1) and request.dataset_id == session["dataset_id"]
    dataset = (await api.client.get(f"/datasets/{session['dataset_id']}", headers=ann)).json()
    assert api.services.artifacts.get(ref_for(dataset["sha256"])) == CSV
    assert dataset["sha256"] == hashlib.sha256(CSV).hexdigest() and dataset["rows"] == 40

    sid = session["id"]
    with api.services.db.session() as s:  # what the coordinator records while it trains
        sessions_repo.set_session_status(s, sid, SessionStatus.RUNNING)
        users_repo.record_heartbeat(s, peers[0], epoch=1, epochs=1, metrics={"loss": 0.9, "accuracy": 0.5})
        sessions_repo.record_round(s, sid, 1, metrics={"accuracy": 0.55}, num_updates=3, duration_s=0.2)
        sessions_repo.record_client_result(s, sid, 1, peers[0], status=ResultStatus.ACCEPTED, num_examples=13)
    status = (await api.client.get(f"/sessions/{sid}/training-status", headers=ann)).json()
    assert (status["status"], status["round"], status["rounds_total"]) == ("RUNNING", 1, 3)
    assert {p["id"] for p in status["peers"]} == set(peers)
    assert status["last_round"]["metrics"] == {"accuracy": 0.55}
    bob = await api.user("bob@example.org")
    assert (await api.client.get(f"/sessions/{sid}/training-status", headers=bob)).status_code == 404

    assert (await api.client.delete(f"/sessions/{sid}", headers=ann)).status_code == 409
    cancelled = await api.client.post(f"/sessions/{sid}/cancel", headers=ann)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    with api.services.db.session(read_only=True) as s:
        assert {c.status for c in users_repo.list_clients(s, None)} == {ClientStatus.ONLINE}
    assert (await api.client.delete(f"/sessions/{sid}", headers=ann)).status_code == 204
    assert (await api.client.get("/sessions", headers=ann)).json() == []

    download = await api.client.get("/models/flowers/versions/1/download", headers=ann)
    assert download.status_code == 200 and download.content == seed
