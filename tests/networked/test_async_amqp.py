"""An asynchronous (FedBuff) session over a real RabbitMQ: a coordinator process and three client
processes, the same commands and wire protocol as a synchronous session."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from amqp_cluster import Cluster, demo_part, session_toml

from session_results import latest_results

pytestmark = pytest.mark.amqp


@pytest.mark.slow
def test_three_client_processes_train_continuously(cluster: Cluster, tmp_path: Path) -> None:
    idents = cluster.add_clients("client", 3)
    config = session_toml(
        tmp_path / "session.toml",
        rounds=6,
        min_clients=3,
        aggregation="async",
        buffer_size=2,
        max_staleness=4,
        epochs=2,
    )
    coordinator = cluster.coordinator(config, tmp_path / "net")
    clients = [cluster.client(ident, *demo_part(i, 3)) for i, ident in enumerate(idents, start=1)]

    assert coordinator.finish(180) == 0, coordinator.tail()
    for c in clients:
        assert c.finish(30) == 0, c.tail()
        assert c.out[-1].startswith("stopped by the coordinator after"), c.tail()
    summary = json.loads(coordinator.out[-1])
    assert summary["rounds"] == 6 and summary["accuracy"] > 0.5

    run = latest_results(tmp_path / "net")
    with (run / "rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    assert [(r["round"], r["updates"]) for r in rounds] == [(str(v), "2") for v in range(1, 7)]
    with (run / "clients.csv").open() as f:
        accepted = [r for r in csv.DictReader(f) if r["status"] == "accepted"]
    assert len(accepted) == 12  # two per version, from whichever clients answered first
    assert {r["client"] for r in accepted} == {cid for cid, _ in idents}  # every one took part
    assert json.loads((run / "config.json").read_text())["aggregation"] == "async"
