"""User apps over RabbitMQ with real processes: a site runs only the app installed on it (a differing
one refuses the session in one line, and the coordinator names the client), and ``ctx.state``
survives a client process killed and started again."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from amqp_cluster import BASE_SESSION, Cluster

from session_results import latest_results

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
    time.sleep(float(config["work_s"]))  # the site's own training time
    new = weights["w"] + np.float32(config["step"])
    return fedhive.TrainResult({"w": new}, 10, {"rounds_seen": ctx.state["rounds_seen"]})
"""


def write_session(path: Path, app: Path, **settings: object) -> Path:
    values = {**BASE_SESSION, "heartbeat_timeout_s": 15.0, **settings}
    lines = [f"app = '{app}'"] + [f"{k} = {v!r}".replace("'", '"') for k, v in values.items() if k != "model"]
    lines += ["[run_config]", "step = 0.5", "work_s = 0.0"]
    path.write_text("\n".join(lines).replace("True", "true").replace("False", "false") + "\n")
    return path


def app_file(folder: Path, text: str = APP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site_app.py").write_text(text)
    return folder / "site_app.py"


def test_a_site_with_another_version_of_the_app_refuses_and_is_named(cluster: Cluster, tmp_path: Path) -> None:
    # min_clients 1: the session starts with whoever comes first; the other is enabled as a late
    # joiner. Rounds of a second each, so the session is still running when both have registered.
    session = write_session(tmp_path / "s.toml", app_file(tmp_path / "coord"), rounds=4, min_clients=1)
    session.write_text(session.read_text().replace("work_s = 0.0", "work_s = 1.0"))
    same, other = cluster.add_clients("site", 2)
    coordinator = cluster.coordinator(session, tmp_path / "run")
    honest = cluster.client(same, "--app", f"{app_file(tmp_path / 'a')}:app", "--state-dir", str(tmp_path / "sa"))
    changed = cluster.client(
        other, "--app", f"{app_file(tmp_path / 'b', APP + '# v2')}:app", "--state-dir", str(tmp_path / "sb")
    )
    assert changed.finish(timeout=120) == 2
    refusal = [line for line in changed.err if line.startswith("error:")]
    assert len(refusal) == 1 and f"{other[0]} refuses session" in refusal[0], changed.tail()
    assert "install the same version of the app" in refusal[0]
    coordinator.wait_for(f"client {other[0]} reports an error", stream="err", timeout=60)
    assert honest.finish(timeout=120) == 0, honest.tail()
    assert coordinator.finish(timeout=120) == 0, coordinator.tail()


def test_ctx_state_survives_a_client_process_killed_and_restarted(cluster: Cluster, tmp_path: Path) -> None:
    app = app_file(tmp_path / "app")
    session = write_session(tmp_path / "s.toml", app, rounds=5, min_clients=1, round_timeout_s=120.0)
    session.write_text(session.read_text().replace("work_s = 0.0", "work_s = 0.3"))
    (ident,) = cluster.add_clients("site", 1)
    state = tmp_path / "state"
    coordinator = cluster.coordinator(session, tmp_path / "run")
    args = ("--app", f"{app}:app", "--state-dir", str(state))
    first = cluster.client(ident, *args)
    first.wait_for("round 3: training", timeout=120)
    first.kill()
    assert (state / "state.safetensors").is_file()
    second = cluster.client(ident, *args)
    assert second.finish(timeout=180) == 0, second.tail()
    assert coordinator.finish(timeout=120) == 0, coordinator.tail()
    with (latest_results(tmp_path / "run") / "clients.csv").open() as f:
        seen = [float(r["rounds_seen"]) for r in csv.DictReader(f) if r["status"] == "accepted"]
    # One count per train call, across both processes: a state lost on restart would start at 1 again.
    assert len(seen) == 5 and seen == sorted(seen) and seen[0] == 1.0 and seen[-1] >= 5.0, seen
