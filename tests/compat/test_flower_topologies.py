"""One Flower app, unchanged, in every topology over a real RabbitMQ: site agents, two combiners,
decentralised peers. Each run's accuracy is within 1 point of the star run (``fedhive simulate
--flower-app``) of the same app with the same partitions.

The app is the scikit-learn one (tests/compat/apps/sklearn_legacy, a legacy ``NumPyClient``): it
reports accuracy (the NumPy app reports only a squared error) and trains deterministically. Node
I gets ``partition-id`` I of 3, as client-I of the star run does. The coordinator reads the app
from its session file (``app = "flower:PATH"``) and runs the ServerApp's 3 rounds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (pip install 'fedhive[flower]')")

from networked.amqp_cluster import Cluster
from processes import Proc

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

APPS = Path(__file__).parent / "apps"
SITES = 3
ROUNDS = 3  # the ServerApp's num-server-rounds
TOLERANCE = 0.01  # 1 point of accuracy
# Fast liveness, with room for processes that import scikit-learn together on two cores.
SESSION = {
    "min_clients": SITES,
    "registration_timeout_s": 120,
    "round_timeout_s": 120,
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 15.0,
}


@pytest.fixture
def cluster(rabbitmq_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(rabbitmq_url, tmp_path)
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    copy = tmp_path / "sklearn_legacy"
    shutil.copytree(APPS / "sklearn_legacy", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def start_star(cluster: Cluster, app: Path, out: Path) -> Proc:
    """The star run, in the background: it runs while the topology's processes start."""
    args = ["simulate", "--flower-app", str(app), "--clients", str(SITES), "--out", str(out), "--json"]
    return cluster.start("simulate", *args)


def summary(proc: Proc, timeout: float = 240) -> dict[str, object]:
    assert proc.finish(timeout) == 0, proc.tail()
    return dict(json.loads(proc.out[-1]))


def accuracy(proc: Proc) -> float:
    return float(summary(proc)["accuracy"])  # type: ignore[arg-type]


def assert_close(topology: float, star: float) -> None:
    print(f"accuracy: this topology {topology:.4f}, the star run {star:.4f}")
    assert abs(topology - star) <= TOLERANCE, (topology, star)


def coordinator(cluster: Cluster, app: Path, tmp_path: Path, *extra: str) -> Proc:
    lines = [f'app = "flower:{app}"'] + [f"{k} = {v}" for k, v in SESSION.items()]
    (tmp_path / "session.toml").write_text("\n".join(lines) + "\n")
    return cluster.coordinator(tmp_path / "session.toml", tmp_path / "run", *extra)


def node(i: int) -> list[str]:
    return ["--node", f"partition-id={i}", "--node", f"num-partitions={SITES}"]


def test_site_agents_run_the_flower_app_as_the_star_run_does(cluster: Cluster, app: Path, tmp_path: Path) -> None:
    star = start_star(cluster, app, tmp_path / "star")
    agents = []
    for i, (cid, secret) in enumerate(cluster.add_clients("agent", SITES)):
        args = ["agent", *cluster.broker_args(), "--id", cid, "--secret", secret, "--flower-app", str(app), *node(i)]
        args += ["--state-dir", str(tmp_path / "state" / cid), "--heartbeat-interval", "0.5"]
        agents.append(cluster.start(cid, *args))
    for agent in agents:
        agent.wait_for("waiting for sessions", timeout=120)
    networked = summary(coordinator(cluster, app, tmp_path))
    for agent in agents:
        agent.wait_for(f"over after {ROUNDS} rounds of training", timeout=60)
    assert networked["rounds"] == ROUNDS and networked["clients"] == SITES
    assert_close(float(networked["accuracy"]), accuracy(star))  # type: ignore[arg-type]


def test_two_combiners_run_the_flower_app_as_the_star_run_does(cluster: Cluster, app: Path, tmp_path: Path) -> None:
    star = start_star(cluster, app, tmp_path / "star")
    combiners = cluster.add_clients("comb", 2)
    sites = cluster.add_clients("site", SITES)
    top = coordinator(cluster, app, tmp_path, "--combiners", "2")
    for cid, secret in combiners:
        args = ["combiner", *cluster.broker_args(), "--id", cid, "--secret", secret, "--store", str(cluster.store_path)]
        cluster.start(cid, *args, "--heartbeat-interval", "0.5", "--heartbeat-timeout", "15")
    clients = [
        cluster.client(ident, "--via-combiner", "--flower-app", str(app), *node(i)) for i, ident in enumerate(sites)
    ]
    networked = summary(top)
    for client in clients:
        assert client.finish(60) == 0, client.tail()
    assert networked["rounds"] == ROUNDS
    assert_close(float(networked["accuracy"]), accuracy(star))  # type: ignore[arg-type]


def test_decentralised_peers_run_the_flower_app_as_the_star_run_does(
    cluster: Cluster, app: Path, tmp_path: Path
) -> None:
    star = start_star(cluster, app, tmp_path / "star")
    secret = "5e" * 32
    peers = []
    for i in range(SITES):
        args = ["peer", *cluster.broker_args(), "--secret", secret, "--flower-app", str(app), *node(i)]
        args += ["--min-peers", str(SITES), "--json", "--beat", "0.2", "--peer-timeout", "3"]
        peers.append(cluster.start(f"peer-{i}", *args, "--round-timeout", "60", "--discovery-timeout", "120"))
    finals = []
    try:
        for peer in peers:
            assert peer.finish(240) == 0, peer.tail()
            rounds = [json.loads(line) for line in peer.out if line.startswith("{")]
            assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))  # the ServerApp's rounds
            finals.append(rounds[-1])
    finally:  # the peers' queues, for the namespace's clean-up
        cluster.node_ids |= {line.split()[1] for p in peers for line in p.err if line.startswith("peer ")}
    assert len({f["digest"] for f in finals}) == 1  # one model on every peer
    # Each peer evaluates the model on its own test split; the three splits are the same size
    # (120 digits each), so their plain mean is the star run's example-weighted accuracy.
    assert_close(sum(float(f["accuracy"]) for f in finals) / SITES, accuracy(star))
