"""``fedhive coordinator --report-to URL``: a command-line session shows on a running ``fedhive
serve`` (its REST API, hence its dashboard) like one the platform runs; a server that cannot be
reached costs the session nothing but one warning line; Cancel on the server stops the session."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from amqp_cluster import Cluster, demo_part, session_toml, slow_session

from fedhive.tracking.platform_report import INTERVAL_S
from fedhive.tracking.run_checkpoint import CHECKPOINT_FILE
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


def test_cancel_on_the_server_stops_the_command_line_session(
    cluster: Cluster, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel on the dashboard (``POST /sessions/{id}/cancel``): the server answers the next
    report, or the empty one sent every report interval, with 409 ``session_cancelled``; the
    coordinator sends STOP to its clients and exits 3, the session CANCELLED with the reason."""
    with httpx.Client(base_url=server.url, timeout=30) as api:
        login = {"email": "cy@example.org", "password": PASSWORD}
        assert api.post("/auth/signup", json=login).status_code == 201
        monkeypatch.setenv("FEDHIVE_REPORT_EMAIL", login["email"])
        monkeypatch.setenv("FEDHIVE_REPORT_PASSWORD", PASSWORD)
        idents = cluster.add_clients("c", 2)
        config = slow_session(tmp_path / "long.toml", "long-cancelled", rounds=500, min_clients=2, epochs=1)
        out = tmp_path / "net"
        coordinator = cluster.coordinator(config, out, "--report-to", server.url)
        clients = [cluster.client(ident, *demo_part(i, 2)) for i, ident in enumerate(idents, start=1)]
        auth = {"Authorization": f"Bearer {api.post('/auth/signin', json=login).json()['access_token']}"}
        deadline = time.monotonic() + 120
        while api.get("/sessions/long-cancelled", headers=auth).json().get("rounds_done", 0) < 1:
            assert time.monotonic() < deadline, coordinator.tail()
            assert coordinator.popen.poll() is None, coordinator.tail()
            time.sleep(0.2)  # polling the server's state, bounded by the deadline
        assert api.post("/sessions/long-cancelled/cancel", headers=auth).status_code in (200, 202, 204)
        cancelled_at = time.monotonic()
        assert coordinator.finish(60) == 3, coordinator.tail()
        took = time.monotonic() - cancelled_at
        assert any("cancelled on the server by its owner" in line for line in coordinator.err), coordinator.tail()
        for c in clients:  # STOP reached them: they end on their own
            c.finish(60)
            assert any("cancelled on the server by its owner" in line for line in c.out + c.err), c.tail()
        session = api.get("/sessions/long-cancelled", headers=auth).json()
        assert session["status"] == "CANCELLED" and session["rounds_done"] < 500, session
        assert not list(out.glob(f"*/{CHECKPOINT_FILE}"))  # never resumed by the same command
        print(f"cancel -> coordinator exit: {took:.1f} s (report interval {INTERVAL_S:g} s)")
