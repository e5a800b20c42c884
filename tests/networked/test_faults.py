"""Faults with real processes and a real broker: kill -9 a client or the coordinator, a broker outage
(every connection cut by a proxy the test owns: the machine's RabbitMQ is shared, never stopped)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from amqp_cluster import Cluster, demo_part, session_toml

from session_results import latest_results
from tcp_proxy import TcpProxy

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

IID = {"dataset": "digits", "partition": "iid"}
# ~0.5-1 s of local training per round, so that "mid-round" is a wide window.
# Rounds of about half a second of training per client: long enough that a client killed when it
# says "round 2: training" has not sent its update yet, on a fast machine too.
SLOW_ROUNDS = {"epochs": 1000, "lr": 0.02}


def rounds_of(run: Path) -> list[dict[str, str]]:
    with (latest_results(run) / "rounds.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_client_killed_mid_round_leaves_the_round_to_the_others(cluster: Cluster, tmp_path: Path) -> None:
    idents = cluster.add_clients("client", 3)
    config = session_toml(tmp_path / "s.toml", rounds=3, min_clients=2, quorum=0.5, data=IID, **SLOW_ROUNDS)
    coordinator = cluster.coordinator(config, tmp_path / "run")
    clients = [cluster.client(ident, *demo_part(i, 3, "iid")) for i, ident in enumerate(idents, start=1)]
    victim = clients[2]
    victim.wait_for("round 2: training")
    victim.kill()  # SIGKILL: no goodbye, its update for round 2 never comes

    assert coordinator.finish(90) == 0, coordinator.tail()
    rounds = rounds_of(tmp_path / "run")
    assert [r["round"] for r in rounds] == ["1", "2", "3"]
    # (The session starts with the first two clients to register; the third joins the next round.)
    killed_in = rounds[1]
    # Round 2 completed with the others once it went OFFLINE.
    assert killed_in["missing"] == victim.name, f"the victim finished round 2 before it was killed: {rounds}"
    assert int(killed_in["updates"]) == int(killed_in["selected"]) - 1
    assert all(r["missing"] == "" and r["updates"] == r["selected"] == "2" for r in rounds[2:])  # not selected
    assert f"client {victim.name}: OFFLINE" in coordinator.err
    assert all(c.finish(30) == 0 for c in clients[:2])


def test_when_quorum_becomes_impossible_the_session_fails_with_a_reason(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.add_clients("client", 2)
    config = session_toml(
        tmp_path / "s.toml", rounds=4, min_clients=2, quorum=1.0, max_round_retries=1, data=IID, **SLOW_ROUNDS
    )
    coordinator = cluster.coordinator(config, tmp_path / "run")
    survivor, victim = cluster.client(a, *demo_part(1, 2, "iid")), cluster.client(b, *demo_part(2, 2, "iid"))
    victim.wait_for("round 2: training")
    victim.kill()

    assert coordinator.finish(90) == 1
    reason = "round 2: only 1 clients are ONLINE, fewer than min_clients=2"
    assert coordinator.err[-1] == f"error: session failed: {reason}"
    assert [r["round"] for r in rounds_of(tmp_path / "run")] == ["1"]
    # The coordinator tells its clients at once instead of leaving them to time out.
    assert survivor.finish(30) == 1
    assert survivor.err[-1] == f"error: session failed: the coordinator ended the session: {reason}"


def test_clients_give_up_on_a_coordinator_that_died(cluster: Cluster, tmp_path: Path) -> None:
    (ident,) = cluster.add_clients("client", 1)
    coordinator = cluster.coordinator(session_toml(tmp_path / "s.toml", min_clients=2), tmp_path / "run")
    client = cluster.client(ident, *demo_part(1, 2), extra=("--coordinator-timeout", "3"))
    client.wait_for("registered with the coordinator")
    coordinator.kill()
    assert client.finish(30) == 1
    assert len(client.err) >= 1 and client.err[-1].startswith("error: session failed: ")
    assert "no message from the coordinator for" in client.err[-1]


def test_too_few_clients_fail_the_session_at_the_registration_deadline(cluster: Cluster, tmp_path: Path) -> None:
    coordinator = cluster.coordinator(session_toml(tmp_path / "s.toml", registration_timeout_s=2), tmp_path / "run")
    assert coordinator.finish(30) == 1
    assert coordinator.err[-1] == "error: session failed: only 0 of the 2 required clients registered within 2 s"


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the shared broker: cutting it is a broker outage for our processes only."""
    broker = urlsplit(rabbitmq_url)
    with TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as p:
        yield p


# Long enough for every process to fail a few reconnection attempts (one a second). The heartbeat
# timeout is well above it: with 3 s, a loaded 2-core machine marked training clients OFFLINE in
# round 1, outage or not. (That the coordinator does not blame clients for an outage longer than the
# timeout is tested in-process, in tests/runtime/test_liveness.py.)
OUTAGE_S = 4.0


def test_the_session_survives_a_broker_restart(proxy: TcpProxy, cluster: Cluster, tmp_path: Path) -> None:
    # Only the fedhive processes go through the proxy; the cluster's teardown still reaches the broker.
    cluster.url = proxy.url_for(cluster.url) + ("&" if "?" in cluster.url else "?") + "reconnect_interval=1"
    idents = cluster.add_clients("client", 3)
    # A numpy model: a torch model's first round (the import, holding the interpreter) kept a
    # client from beating for 20 s on a loaded machine. The cut is instant, so rounds need not be slow.
    config = session_toml(
        tmp_path / "s.toml", session_id="broker-restart", rounds=5, min_clients=3, epochs=50,
        round_timeout_s=120, heartbeat_interval_s=0.5, heartbeat_timeout_s=20.0, data=IID,
    )  # fmt: skip
    coordinator = cluster.coordinator(config, tmp_path / "run")
    clients = [cluster.client(ident, *demo_part(i, 3, "iid")) for i, ident in enumerate(idents, start=1)]
    clients[0].wait_for("round 2: training", timeout=120)
    before = proxy.accepted
    proxy.cut()  # every connection is reset and new ones are refused, as when the broker goes down
    try:
        assert coordinator.popen.poll() is None, "the session ended before the outage; make rounds slower"
        assert len(rounds_of(tmp_path / "run")) < 5, "the session ended before the outage; make rounds slower"
        time.sleep(OUTAGE_S)  # the outage's length, not a wait for something to happen
        assert proxy.accepted == before, "a connection got through a cut proxy"
    finally:
        proxy.restore()
    proxy.wait_accepted(before + 4, timeout=60)  # the coordinator and the three clients reconnected

    assert coordinator.finish(120) == 0, coordinator.tail()
    assert json.loads(coordinator.out[-1])["rounds"] == 5
    assert [r["round"] for r in rounds_of(tmp_path / "run")] == [str(i) for i in range(1, 6)]
    assert any("reconnected to the AMQP broker" in line for line in coordinator.err), coordinator.tail()
    assert not [line for line in coordinator.err if ": OFFLINE" in line]
    for c in clients:
        assert c.finish(30) == 0, c.tail()
        assert c.out[-1].startswith("stopped by the coordinator after")
