"""``fedhive agent`` over RabbitMQ with real processes: one agent takes part in two sessions (two
coordinator runs) with no restart, keeps ``ctx.state`` per app across them, and a SIGTERM in the
middle of a round reports its update lost while the coordinator's round goes on."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from amqp_cluster import Cluster

from fedhive.app.loader import load_app
from fedhive.app.state_store import StateStore
from fedhive.service.apps import state_folder_name
from processes import Proc

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

APP = """
import time
import numpy as np
import fedhive

app = fedhive.ClientApp()

@app.init
def init(weights, config, ctx):
    return {"w": np.zeros(4, np.float32)}

@app.train
def train(weights, config, ctx):
    ctx.state["rounds_seen"] = int(ctx.state.get("rounds_seen", 0)) + 1
    time.sleep(float(ctx.node.get("work_s", 0)))  # this site's own training time
    return fedhive.TrainResult({"w": weights["w"] + np.float32(0.5)}, 10, {"rounds_seen": ctx.state["rounds_seen"]})
"""

SESSION = {
    "rounds": 2,
    "min_clients": 1,
    "registration_timeout_s": 60,
    "round_timeout_s": 60,
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 10.0,  # no test here waits for a site to go OFFLINE: room for a loaded machine
}


def write_session(path: Path, app: Path, session_id: str, **settings: object) -> Path:
    values = {**SESSION, "session_id": session_id, **settings}
    lines = [f'app = "{app}"'] + [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def app_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site_app.py").write_text(APP)
    return folder / "site_app.py"


def start_agent(cluster: Cluster, ident: tuple[str, str], app: Path, state: Path, *extra: str) -> Proc:
    cid, secret = ident
    args = ["agent", *cluster.broker_args(), "--id", cid, "--secret", secret, "--app", f"{app}:app"]
    proc = cluster.start(cid, *args, "--state-dir", str(state), "--heartbeat-interval", "0.5", *extra)
    proc.wait_for("waiting for sessions")
    return proc


def finished(proc: Proc, timeout: float = 120) -> None:
    rc = proc.finish(timeout)
    assert rc == 0, proc.tail()


def test_an_agent_takes_part_in_two_sessions_without_a_restart_and_keeps_its_state(
    cluster: Cluster, tmp_path: Path
) -> None:
    (ident,) = cluster.add_clients("agent", 1)
    app = app_file(tmp_path / "site")
    state = tmp_path / "state"
    agent = start_agent(cluster, ident, app, state, "--dataset-name", "ward-7")  # idle: no coordinator yet

    first = cluster.coordinator(write_session(tmp_path / "a.toml", app, "first"), tmp_path / "run-a")
    finished(first)
    agent.wait_for("session first over after 2 rounds")

    second = cluster.coordinator(write_session(tmp_path / "b.toml", app, "second"), tmp_path / "run-b")
    finished(second)
    agent.wait_for("session second over after 2 rounds", timeout=30)
    assert agent.popen.poll() is None  # the same process throughout

    # ctx.state lives in a folder per app and went on counting across both sessions.
    kept = StateStore(state / state_folder_name(load_app(f"{app}:app").name)).load()
    assert kept["rounds_seen"] == 4

    agent.popen.send_signal(signal.SIGTERM)  # idle: nothing to report, a clean stop
    finished(agent, 30)
    assert any("stopped" in line for line in agent.out)


def test_sigterm_mid_round_reports_the_update_lost_and_the_round_goes_on(cluster: Cluster, tmp_path: Path) -> None:
    agent_ident, client_ident = cluster.add_clients("site", 2)
    app = app_file(tmp_path / "site")
    state = tmp_path / "agent-state"
    # min_round_clients 1: the session goes on with one site once the agent is gone.
    session = write_session(tmp_path / "s.toml", app, "sigterm", rounds=3, min_clients=2, min_round_clients=1)
    # The agent's training is far longer than the test: it is stopped in the middle of it.
    agent = start_agent(cluster, agent_ident, app, state, "--node", "work_s=600", "--stop-grace", "1")
    coordinator = cluster.coordinator(session, tmp_path / "run")
    client = cluster.client(client_ident, "--app", f"{app}:app", "--state-dir", str(tmp_path / "client-state"))

    agent.wait_for("round 1: training", timeout=90)
    agent.popen.send_signal(signal.SIGTERM)
    finished(agent, 60)
    assert any("did not finish" in line for line in agent.out), agent.tail()

    reason = coordinator.wait_for(f"client {agent_ident[0]} reports an error in round 1", stream="err", timeout=60)
    assert "SIGTERM" in reason and "update is lost" in reason
    finished(coordinator, 120)  # every round went on with the other site's update
    finished(client, 60)
    assert json.loads(coordinator.out[-1])["rounds"] == 3, coordinator.tail()

    # Killed mid-training, the agent left its state whole (or none at all), never half of a file.
    folder = state / state_folder_name(load_app(f"{app}:app").name)
    assert StateStore(folder).load().get("rounds_seen", 0) == 0  # round 1's training never ended
    assert not folder.exists() or [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
