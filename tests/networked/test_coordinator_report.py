"""``fedhive coordinator --report-to URL``: a command-line session shows on a running ``fedhive
serve`` (its REST API, hence its dashboard) like one the platform runs; a server that cannot be
reached costs the session nothing but one warning line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from amqp_cluster import Cluster, demo_part, session_toml

from service.serve_process import Server  # tests/ is on the path (rootdir conftest)

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

PASSWORD = "correct horse battery"
ROUNDS = 3


@pytest.fixture
def server(tmp_path: Path) -> Server:
    s = Server(tmp_path / "platform", {}, local_clients=0)
    yield s  # type: ignore[misc]
    s.stop()


def test_a_reported_session_shows_on_the_platform(
    cluster: Cluster, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as api:
        assert api.post("/auth/signup", json={"email": "ann@example.org", "password": PASSWORD}).status_code == 201
        # The credentials travel in the environment, never on the command line.
        monkeypatch.setenv("FEDHIVE_REPORT_EMAIL", "ann@example.org")
        monkeypatch.setenv("FEDHIVE_REPORT_PASSWORD", PASSWORD)
        idents = cluster.add_clients("c", 2)
        config = session_toml(tmp_path / "digits.toml", rounds=ROUNDS, min_clients=2)
        coordinator = cluster.coordinator(config, tmp_path / "net", "--report-to", server.url)
        clients = [cluster.client(ident, *demo_part(i, 2)) for i, ident in enumerate(idents, start=1)]
        assert coordinator.finish(180) == 0, coordinator.tail()
        for c in clients:
            assert c.finish(60) == 0, c.tail()
        summary = json.loads(coordinator.out[-1])
        troubles = ("no longer reporting", "cannot be reached", "not delivered", "refused")
        assert not [line for line in coordinator.err if any(t in line for t in troubles)], coordinator.tail()

        token = api.post("/auth/signin", json={"email": "ann@example.org", "password": PASSWORD}).json()
        ann = {"Authorization": f"Bearer {token['access_token']}"}
        sid = summary["session_id"]
        session = api.get(f"/sessions/{sid}", headers=ann).json()
        assert (session["status"], session["rounds_done"], session["reason"]) == (
            "COMPLETED", ROUNDS, f"completed all {ROUNDS} rounds",
        )  # fmt: skip
        assert session["name"] == "digits (command line)"
        rounds = api.get(f"/sessions/{sid}/rounds", headers=ann).json()
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        assert rounds[-1]["metrics"]["accuracy"] == pytest.approx(summary["accuracy"])
        assert all(r["metrics"]["bytes_received"] > 0 for r in rounds)
        status = api.get(f"/sessions/{sid}/training-status", headers=ann).json()
        assert sorted((r["client_id"], r["status"]) for r in status["last_results"]) == [
            (cid, "ACCEPTED") for cid, _ in sorted(idents)
        ]
        # Read-only for anyone else; the dashboard's session page lists it for its owner.
        api.post("/auth/signup", json={"email": "bob@example.org", "password": PASSWORD})
        bob_token = api.post("/auth/signin", json={"email": "bob@example.org", "password": PASSWORD}).json()
        bob = {"Authorization": f"Bearer {bob_token['access_token']}"}
        assert api.get(f"/sessions/{sid}", headers=bob).status_code == 404


def test_an_unreachable_server_costs_one_warning_line(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("FEDHIVE_REPORT_TOKEN", "not-checked-by-anyone")
    idents = cluster.add_clients("c", 2)
    config = session_toml(tmp_path / "session.toml", rounds=2, min_clients=2)
    coordinator = cluster.coordinator(config, tmp_path / "net", "--report-to", url)
    clients = [cluster.client(ident, *demo_part(i, 2)) for i, ident in enumerate(idents, start=1)]
    assert coordinator.finish(180) == 0, coordinator.tail()
    for c in clients:
        assert c.finish(60) == 0, c.tail()
    assert json.loads(coordinator.out[-1])["rounds"] == 2
    unreachable = [line for line in coordinator.err if "cannot be reached" in line]
    assert len(unreachable) == 1 and url in unreachable[0], coordinator.tail()
    assert any("not delivered" in line for line in coordinator.err), coordinator.tail()


def test_missing_credentials_are_one_line_before_anything_connects(cluster: Cluster, tmp_path: Path) -> None:
    config = session_toml(tmp_path / "session.toml")
    proc = cluster.start(
        "coordinator", "coordinator", *cluster.broker_args(), "--config", str(config), "--out", str(tmp_path / "o"),
        "--report-to", "http://127.0.0.1:9",
    )  # fmt: skip
    assert proc.finish(60) == 2
    assert any("--report-to needs credentials" in line for line in proc.err), proc.tail()
    assert not any("Traceback" in line for line in proc.err)
