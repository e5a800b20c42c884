"""A Flower app run unchanged by networked sites: ``fedhive client --flower-app`` against a
coordinator on a real RabbitMQ, and the one-line refusals of its options."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from uuid import uuid4

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (pip install 'fedhive[flower]')")

from fedhive.cli.flower_options import load_flower_app
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.credentials import CredentialStore
from fedhive.runtime.networked import BrokerSettings, run_coordinator
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.site_app import session_with_app
from fedhive.transports.amqp import delete_namespace
from processes import Proc

APPS = Path(__file__).parent / "apps"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def copy_app(name: str, tmp_path: Path) -> Path:
    app = tmp_path / name
    shutil.copytree(APPS / name, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def test_flower_clients_train_a_networked_session(rabbitmq_url: str, tmp_path: Path) -> None:
    app = copy_app("numpy_message", tmp_path)
    loaded = load_flower_app(app)  # the coordinator's copy: the same name and code digest as the sites'
    config = SessionConfig(rounds=2, min_clients=2, round_timeout_s=120, registration_timeout_s=120)
    session = SessionFile(tmp_path / "session.toml", session_with_app(config, loaded), {}, loaded, {})
    broker = BrokerSettings(rabbitmq_url, f"test-{uuid4().hex[:8]}")
    store = CredentialStore(tmp_path / "clients.json")
    idents = [store.add(f"site{i}") for i in range(2)]
    procs: list[Proc] = []
    rounds: list[ev.RoundCompleted] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, rounds.append)

    async def run() -> SessionResult:
        ready = asyncio.Event()
        coordinator = run_coordinator(session, store, broker, observers=[watch], on_ready=ready.set)
        task = asyncio.create_task(coordinator)
        await asyncio.wait_for(ready.wait(), 60)
        for i, (cid, secret) in enumerate(idents):
            args = ["client", "--broker", rabbitmq_url, "--namespace", broker.namespace, "--id", cid]
            args += ["--flower-app", str(app), "--node", f"partition-id={i}", "--node", "num-partitions=2"]
            args += ["--state-dir", str(tmp_path / "state" / cid)]
            procs.append(Proc(cid, [*FEDHIVE, *args], env={"FEDHIVE_CLIENT_SECRET": secret}))
        return await asyncio.wait_for(task, 300)

    try:
        result = asyncio.run(run())
        for proc in procs:
            proc.wait_for("stopped by the coordinator after 2 rounds of training", timeout=60)
            assert proc.finish() == 0, proc.tail()
    finally:
        for proc in procs:
            proc.kill()
        asyncio.run(delete_namespace(rabbitmq_url, broker.namespace, {COORDINATOR_ID, *(c for c, _ in idents)}))
    assert result.rounds == 2 and [r.round for r in rounds] == [1, 2]
    last = rounds[-1].train_metrics
    # The app's own MetricRecord, weighted over both sites: its context.state counter says each
    # site trained twice, and each got the round's config from the ServerApp (server-round).
    assert last["times-trained"] == pytest.approx(2.0), last
    assert last["server-round"] == pytest.approx(2.0), last
    assert last["num-partitions"] == pytest.approx(2.0), last
    assert 0 < last["partition"] < 1, last  # both sites' partition-id (0 and 1), example-weighted


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--app", "builtin:app", "--flower-app", "APP"], "give --app or --flower-app, not both"),
        (["--flower-app", "APP", "--dataset", "digits"], "a Flower app reads its own data"),
        (["--flower-app", "MISSING"], "is not a Flower project"),
    ],
)
def test_client_flower_option_mistakes_are_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    app = copy_app("numpy_message", tmp_path)
    args = [str(app) if a == "APP" else str(tmp_path / "nothing") if a == "MISSING" else a for a in extra]
    cmd = [*FEDHIVE, "client", "--broker", "amqp://guest:guest@127.0.0.1:1/", "--id", "x", "--secret", "ab" * 32]
    proc = Proc("client", [*cmd, *args])
    assert proc.finish(timeout=120) == 2, proc.tail()
    lines = [line for line in proc.err if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.tail()
