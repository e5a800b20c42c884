"""A coordinator and its clients as separate OS processes over a real RabbitMQ."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from amqp_cluster import Cluster, Proc, demo_part, session_toml

from fedhive.core import codec
from session_results import latest_results

pytestmark = pytest.mark.amqp


def simulate(cluster: Cluster, out: Path, *args: str) -> Proc:
    """``fedhive simulate`` of the same session, in the background (killed in teardown if need be)."""
    return cluster.start("simulate", "simulate", "--out", str(out), "--json", *args)


def summary_of(proc: Proc, timeout: float = 120) -> dict[str, object]:
    assert proc.finish(timeout) == 0, proc.tail()
    return dict(json.loads(proc.out[-1]))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_five_client_processes_reach_the_accuracy_of_simulate(cluster: Cluster, tmp_path: Path) -> None:
    same = {"rounds": 20, "min_clients": 5, "model": "logreg-np", "lr": 0.1, "seed": 0}
    # The in-process simulation of the very same session, for comparison (started first: it runs
    # while the client processes start).
    reference = simulate(
        cluster,
        tmp_path / "sim",
        *("--dataset", "digits", "--partition", "dirichlet:0.5", "--clients", "5", "--rounds", "20"),
        *("--model", "logreg-np", "--lr", "0.1", "--seed", "0"),
    )
    idents = cluster.add_clients("client", 5)
    config = session_toml(tmp_path / "session.toml", **same)
    coordinator = cluster.coordinator(config, tmp_path / "net")
    clients = [cluster.client(ident, *demo_part(i, 5)) for i, ident in enumerate(idents, start=1)]

    assert coordinator.finish(180) == 0, coordinator.tail()
    for c in clients:
        assert c.finish(30) == 0, c.tail()
        assert c.out[0] == f"registered with the coordinator as {c.name}"
        assert c.out[-1] == "stopped by the coordinator after 20 rounds of training"
    networked = json.loads(coordinator.out[-1])
    simulated = summary_of(reference)
    print(f"accuracy: networked {networked['accuracy']:.4f}, simulate {simulated['accuracy']:.4f}")
    assert networked["rounds"] == 20 and networked["clients"] == 5
    assert abs(networked["accuracy"] - float(simulated["accuracy"])) <= 0.005  # type: ignore[arg-type]

    run = latest_results(tmp_path / "net")  # the layout of a simulate run directory
    assert run.name == networked["session_id"] and Path(networked["out"]) == run
    assert json.loads((run / "config.json").read_text())["namespace"] == cluster.namespace
    assert [(r["round"], r["updates"]) for r in rows(run / "rounds.csv")] == [(str(i), "5") for i in range(1, 21)]
    accepted = rows(run / "clients.csv")
    assert len(accepted) == 100 and {r["status"] for r in accepted} == {"accepted"}
    model = codec.decode((run / "model.safetensors").read_bytes(), max_bytes=1 << 24)
    assert model["weight"].shape == (64, 10)


@pytest.mark.slow
def test_virtual_clients_in_one_process(cluster: Cluster, tmp_path: Path) -> None:
    cluster.add_clients("v", 20)
    config = session_toml(tmp_path / "session.toml", rounds=3, min_clients=20, data={"dataset": "digits"})
    same = ("--clients", "20", "--rounds", "3", "--model", "logreg-np", "--lr", "0.1")
    reference = simulate(cluster, tmp_path / "sim", *same)
    coordinator = cluster.coordinator(config, tmp_path / "net")
    # The coordinator's own store doubles as the credentials file: parts go out in sorted id order.
    host = cluster.start(
        "virtual", "client", *cluster.broker_args(), "--virtual", "20", "--credentials", str(cluster.store_path),
        "--dataset", "digits",
    )  # fmt: skip
    assert coordinator.finish(120) == 0, coordinator.tail()
    assert host.finish(30) == 0, host.tail()
    assert "registered: 20 virtual clients" in host.out and host.out[-1].startswith("all 20 virtual clients stopped")
    networked = json.loads(coordinator.out[-1])
    assert networked["clients"] == 20
    assert abs(networked["accuracy"] - float(summary_of(reference)["accuracy"])) <= 0.005  # type: ignore[arg-type]


@pytest.mark.slow
def test_csv_clients_train_on_their_own_files(cluster: Cluster, tmp_path: Path) -> None:
    def write(name: str, start: int, count: int) -> Path:
        def row(i: int) -> str:
            x1, x2 = i % 11, (i * 7) % 5
            return f"{x1},{x2},{'high' if x1 + x2 > 7 else 'low'}"

        lines = ["x1,x2,label"] + [row(i) for i in range(start, start + count)]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    holdout = write("holdout.csv", 0, 200)
    config = session_toml(
        tmp_path / "session.toml", rounds=5, min_clients=2, epochs=5, data={"csv": holdout.name, "label": "label"}
    )
    a, b = cluster.add_clients("site", 2)
    coordinator = cluster.coordinator(config, tmp_path / "net")
    clients = [
        cluster.client(a, "--csv", str(write("a.csv", 200, 300)), "--label", "label"),
        cluster.client(b, "--csv", str(write("b.csv", 500, 300)), "--label", "label"),
    ]
    assert coordinator.finish(120) == 0, coordinator.tail()
    assert all(c.finish(30) == 0 for c in clients)
    assert json.loads(coordinator.out[-1])["accuracy"] > 0.8
