"""``fedhive coordinator`` killed with SIGKILL mid-session and started again with the same command:
it resumes from the checkpoint in its session's folder (and goes on writing there), the client
processes that were training carry on with the new process, and every round runs exactly once."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from amqp_cluster import Cluster, Proc, demo_part, slow_session

from fedhive.core import codec
from fedhive.errors import FedhiveError
from fedhive.tracking.run_checkpoint import CHECKPOINT_FILE

pytestmark = [pytest.mark.amqp, pytest.mark.slow]
ROUNDS = 10


def checkpointed_round(path: Path) -> int:
    """The last round checkpointed in ``path`` (0 before the first): read while it may be replaced."""
    try:
        _, meta = codec.read_header(path.read_bytes(), max_bytes=1 << 30)
    except (FileNotFoundError, FedhiveError):
        return 0
    return int(meta["round"])


def kill_after_checkpoint(coordinator: Proc, checkpoint: Path, rounds: int, timeout_s: float) -> int:
    """Kill the coordinator (SIGKILL) once round 2 is checkpointed; returns the round it had."""
    deadline = time.monotonic() + timeout_s
    while (seen := checkpointed_round(checkpoint)) < 2:
        assert coordinator.popen.poll() is None, coordinator.tail()
        assert time.monotonic() < deadline, f"no checkpoint of round 2 within {timeout_s:.0f} s\n{coordinator.tail()}"
        time.sleep(0.05)
    coordinator.kill()
    assert seen < rounds, "the session finished before it could be interrupted; make rounds slower"
    return seen


def test_killed_coordinator_resumes_with_its_clients(cluster: Cluster, tmp_path: Path) -> None:
    config = slow_session(tmp_path / "session.toml", "restart-demo", ROUNDS, min_clients=3, epochs=4)
    runs = tmp_path / "run"
    out = runs / "restart-demo"  # the session's own folder, the same for both processes
    idents = cluster.add_clients("client", 3)
    first = cluster.coordinator(config, runs)
    clients = [
        cluster.client(ident, *demo_part(i, 3), extra=("--coordinator-timeout", "30"))
        for i, ident in enumerate(idents, start=1)
    ]
    seen = kill_after_checkpoint(first, out / CHECKPOINT_FILE, ROUNDS, timeout_s=120)
    # While the coordinator is down, one client dies too and is started again: it registers anew.
    clients[2].kill()
    clients[2] = cluster.client(idents[2], *demo_part(3, 3), extra=("--coordinator-timeout", "30"))

    second = cluster.coordinator(config, runs)  # the same command again
    resumed = second.wait_for("resuming session restart-demo at round", stream="err")
    assert int(resumed.split("at round ")[1].split()[0]) >= seen + 1, resumed
    assert second.finish(180) == 0, second.tail()
    for c in clients:
        assert c.finish(30) == 0, c.tail()
        assert c.out.count(f"registered with the coordinator as {c.name}") == 1
        assert c.out[-1].startswith("stopped by the coordinator after")
    # the two that kept running were taken back without registering again
    taken_back = {cid for cid, _ in idents if any(f"{cid} is in session restart-demo" in e for e in second.err)}
    assert taken_back == {cid for cid, _ in idents[:2]}, second.tail()

    summary = json.loads(second.out[-1])
    assert summary["rounds"] == ROUNDS and summary["session_id"] == "restart-demo"
    assert Path(summary["out"]) == out and sorted(p.name for p in runs.iterdir()) == ["latest", "restart-demo"]
    with (out / "rounds.csv").open() as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == list(range(1, ROUNDS + 1))
    model = codec.decode((out / "model.safetensors").read_bytes(), max_bytes=1 << 26)
    assert model["out.weight"].shape == (10, 256)
    assert not (out / CHECKPOINT_FILE).exists()  # the session is over: a new run starts afresh


def test_killed_hierarchical_coordinator_resumes_with_its_combiners(cluster: Cluster, tmp_path: Path) -> None:
    rounds = 6
    config = slow_session(tmp_path / "session.toml", "restart-tree", rounds, min_clients=4, epochs=3)
    runs = tmp_path / "run"
    out = runs / "restart-tree"
    combiner_ids = cluster.add_clients("comb", 2)
    idents = cluster.add_clients("client", 4)
    first = cluster.coordinator(config, runs, "--combiners", "2")
    # 30 s: clients training in a starved process (load 20-38 seen) went 15 s without a heartbeat.
    combiner_args = ["--store", str(cluster.store_path), "--heartbeat-interval", "1", "--heartbeat-timeout", "30"]
    combiners = [
        cluster.start(cid, "combiner", *cluster.broker_args(), "--id", cid, "--secret", secret, *combiner_args)
        for cid, secret in combiner_ids
    ]
    clients = [cluster.client(ident, *demo_part(i, 4), extra=("--via-combiner",)) for i, ident in enumerate(idents, 1)]
    seen = kill_after_checkpoint(first, out / CHECKPOINT_FILE, rounds, timeout_s=150)

    second = cluster.coordinator(config, runs, "--combiners", "2")  # the same command again
    resumed = second.wait_for("resuming session restart-tree at round", stream="err")
    assert int(resumed.split("at round ")[1].split()[0]) >= seen + 1, resumed
    assert second.finish(180) == 0, second.tail()
    for proc in [*combiners, *clients]:
        assert proc.finish(60) == 0, proc.tail()
    taken_back = {
        cid for cid, _ in combiner_ids if any(f"combiner {cid} is in session restart-tree" in e for e in second.err)
    }
    assert taken_back == {cid for cid, _ in combiner_ids}, second.tail()
    summary = json.loads(second.out[-1])
    assert summary["rounds"] == rounds and summary["session_id"] == "restart-tree" and Path(summary["out"]) == out
    with (out / "rounds.csv").open() as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == list(range(1, rounds + 1))
    assert not (out / CHECKPOINT_FILE).exists()
