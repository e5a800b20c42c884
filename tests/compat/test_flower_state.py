"""A Flower app's ``context.state`` on disk: every kind of record kept through fedhive's state
store (safetensors and JSON), taken up again by a new adapter (a restarted client process) in the
same session, and left behind by a new session, as Flower's SuperNode does; and a real client
process killed in the middle of a session over RabbitMQ, restarted, going on counting."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (pip install 'fedhive[flower]')")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedhive.app.learner import FitConfig
from fedhive.app.state_store import STATE_FILE, StateStore
from fedhive.compat.flower import load_flower_project
from fedhive.compat.flower.state import load_state, save_state
from fedhive.core.params import Params
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp, session_with_app
from networked.amqp_cluster import Cluster
from processes import Proc
from session_results import latest_results

APPS = Path(__file__).parent / "apps"


def test_every_kind_of_record_survives_the_state_store(tmp_path: Path) -> None:
    state = RecordDict(
        {
            "progress": ConfigRecord({"trained": 3, "lr": 0.5, "name": "x", "ok": True, "blob": b"\x00\xff"}),
            "lists": ConfigRecord({"ints": [1, 2], "flags": [True, False], "blobs": [b"a", b"bc"], "words": ["a"]}),
            "best": MetricRecord({"loss": 0.25, "count": 4, "curve": [0.5, 0.25], "steps": [1, 2]}),
            "personal": ArrayRecord({"head.weight": Array(np.arange(6, dtype=np.float32).reshape(2, 3))}),
            "odd": ArrayRecord(
                {
                    "bytes": Array("custom", (3,), "my.codec", b"\x01\x02\x03"),  # not a numpy array
                    "complex": Array(np.array([1 + 2j])),  # a dtype safetensors has not
                    "scalar": Array(np.array(7, dtype=np.int64)),
                }
            ),
            "empty": ArrayRecord(),
        }
    )
    held: dict[str, object] = {"an_app_key": 1}
    save_state(state, "session-1", held)
    StateStore(tmp_path).save(held)
    assert (tmp_path / STATE_FILE).read_bytes().find(b"pickle") < 0

    loaded = StateStore(tmp_path).load()
    again = load_state(loaded, "session-1")
    assert list(again) == list(state)  # the records, in order
    assert dict(again["progress"]) == dict(state["progress"])
    assert dict(again["lists"]) == dict(state["lists"])
    assert dict(again["best"]) == dict(state["best"])
    assert isinstance(again["personal"], ArrayRecord)
    np.testing.assert_array_equal(again["personal"]["head.weight"].numpy(), state["personal"]["head.weight"].numpy())
    odd = again["odd"]
    assert (odd["bytes"].dtype, odd["bytes"].shape, odd["bytes"].stype, odd["bytes"].data) == (
        "custom",
        (3,),
        "my.codec",
        b"\x01\x02\x03",
    )
    assert odd["complex"].numpy()[0] == 1 + 2j and odd["scalar"].numpy() == 7
    assert len(again["empty"]) == 0
    assert load_state(loaded, "session-2") == RecordDict()  # another run starts afresh
    assert loaded["an_app_key"] == 1  # the rest of ctx.state is left alone

    save_state(RecordDict({"progress": ConfigRecord({"trained": 4})}), "session-1", held)
    assert sorted(held) == ["an_app_key", "flwr.state"]  # the arrays of the old state are gone


def site(app: Path, state_dir: Path) -> SiteApp:
    # A new adapter every time, as a new client process makes one.
    project = load_flower_project(app, {})
    return SiteApp(project.loaded, "client-1", {"partition-id": 1, "num-partitions": 3}, state_dir)


def times_trained(site_app: SiteApp, session: SessionConfig, round: int) -> float:
    trainer = site_app.trainer_for(session_with_app(session, site_app.loaded))
    weights = Params({"0": np.zeros(5, np.float32), "1": np.zeros(1, np.float32)})
    return trainer.fit(weights, FitConfig(round=round)).metrics["times-trained"]


def test_a_restarted_client_takes_its_flower_state_up_in_the_same_session(tmp_path: Path) -> None:
    app = tmp_path / "numpy_message"
    shutil.copytree(APPS / "numpy_message", app, ignore=shutil.ignore_patterns("__pycache__"))
    state_dir = tmp_path / "state"
    session = SessionConfig(session_id="s1", rounds=5)

    first = site(app, state_dir)
    assert [times_trained(first, session, r) for r in (1, 2)] == [1.0, 2.0]

    restarted = site(app, state_dir)  # the process was killed; its state file is all that is left
    assert times_trained(restarted, session, 3) == 3.0

    other_session = SessionConfig(session_id="s2", rounds=5)
    assert times_trained(site(app, state_dir), other_session, 1) == 1.0  # a new run, a new Context


@pytest.fixture
def cluster(rabbitmq_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(rabbitmq_url, tmp_path)
    try:
        yield c
    finally:
        c.teardown()


def saved_count(state_dir: Path, session_id: str) -> int:
    progress = load_state(StateStore(state_dir).load(), session_id)["progress"]
    assert isinstance(progress, ConfigRecord)
    return int(progress["trained"])  # type: ignore[arg-type]


@pytest.mark.amqp
@pytest.mark.slow
def test_a_client_killed_mid_session_goes_on_with_its_flower_state(cluster: Cluster, tmp_path: Path) -> None:
    app = tmp_path / "numpy_message"
    shutil.copytree(APPS / "numpy_message", app, ignore=shutil.ignore_patterns("__pycache__"))
    # A long heartbeat timeout: the restarted client is back before it is missed, and is sent the
    # round it lost again (it was chosen for it and never answered).
    settings = {"session_id": '"restart"', "rounds": 4, "min_clients": 2, "heartbeat_interval_s": 0.5}
    settings |= {"heartbeat_timeout_s": 60, "round_timeout_s": 120, "registration_timeout_s": 120}
    (tmp_path / "session.toml").write_text(
        "\n".join([f'app = "flower:{app}"', *(f"{k} = {v}" for k, v in settings.items())]) + "\n"
    )
    coordinator = cluster.coordinator(tmp_path / "session.toml", tmp_path / "run")
    (victim_id, victim_secret), other = cluster.add_clients("site", 2)
    state_dir = tmp_path / "state" / victim_id

    def victim(*extra: str) -> Proc:
        node = ["--node", "partition-id=0", "--node", "num-partitions=2", *extra]
        args = ["--flower-app", str(app), *node, "--state-dir", str(state_dir)]
        return cluster.client((victim_id, victim_secret), extra=tuple(args))

    first = victim("--node", "stall-round=2")  # its round 2 never ends: killed in the middle of it
    cluster.client(other, extra=("--flower-app", str(app), "--node", "partition-id=1", "--node", "num-partitions=2"))
    first.wait_for("round 2: training", timeout=120)
    first.kill()
    # Round 1's state is on disk; round 2's training counted in memory, but never finished.
    assert saved_count(state_dir, "restart") == 1

    again = victim()
    again.wait_for("registered with the coordinator", timeout=120)
    summary = json.loads(coordinator.wait_for('"rounds": 4', timeout=180))
    assert summary["rounds"] == 4
    assert again.finish(60) == 0, again.tail()

    rows = list(csv.DictReader((latest_results(tmp_path / "run") / "clients.csv").open()))
    mine = [r for r in rows if r["client"] == victim_id and r["status"] == "accepted"]
    trained = {int(r["round"]): float(r["times-trained"]) for r in mine}
    # context.state went on from the saved count: each round is the node's round-th training (a
    # fresh state would have counted 1, 2, 3 from round 2 on).
    assert trained == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}, rows
    assert saved_count(state_dir, "restart") == 4
