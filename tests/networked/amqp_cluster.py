"""Coordinator and client OS processes on a real RabbitMQ, each test in its own AMQP namespace.

``Cluster`` starts ``fedhive`` subprocesses, reads their output lines as they come (the readiness
signals: "coordinator ready", "registered", "round 2: training"), and in teardown kills what is
still running, by process id, and deletes the namespace's queues and exchanges.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from uuid import uuid4

from fedhive.app.loader import BUILTIN
from fedhive.cli.session_file import parse_session
from fedhive.cli.site_options import build_site
from fedhive.errors import TransportError
from fedhive.learning.local_data import LocalData
from fedhive.runtime.coordinator import COORDINATOR_ID, SessionResult
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.networked import BrokerSettings, ClientSettings, Observer, run_client, run_coordinator
from fedhive.transports.amqp import delete_namespace
from processes import Proc

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]

# Liveness for tests: OFFLINE after 10 s of silence instead of 20. Not less: training processes on
# a loaded 2-core machine miss beats for seconds (3 s marked training clients OFFLINE in round 1 in CI).
BASE_SESSION = {
    "rounds": 3,
    "min_clients": 2,
    "registration_timeout_s": 60,
    "round_timeout_s": 30,
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 10.0,
    "model": "logreg-np",
    "lr": 0.1,
    "seed": 0,
}


def session_toml(path: Path, data: dict[str, object] | None = None, **settings: object) -> Path:
    values = {**BASE_SESSION, **settings}
    lines = [f"{k} = {_toml(v)}" for k, v in values.items()]
    lines.append("[data]")
    data = data or {"dataset": "digits", "partition": "dirichlet:0.5"}
    lines += [f"{k} = {_toml(v)}" for k, v in data.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def slow_session(path: Path, session_id: str, rounds: int, min_clients: int, epochs: int, **settings: object) -> Path:
    """Rounds slow enough (a wide model, small batches) to interrupt the session in the middle."""
    data = settings.pop("data", None)
    values: dict[str, object] = {
        "session_id": session_id,
        "rounds": rounds,
        "min_clients": min_clients,
        "model": "simple-dnn:256,256",
        "epochs": epochs,
        "batch_size": 16,
        "lr": 0.02,
        "heartbeat_interval_s": 1.0,
        "heartbeat_timeout_s": 15.0,  # several training processes share two cores here
    }
    return session_toml(path, data, **{**values, **settings})  # type: ignore[arg-type]


def _toml(v: object) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


class Cluster:
    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root
        self.namespace = f"test-{uuid4().hex[:8]}"
        self.store_path = root / "clients.json"
        self.store = CredentialStore(self.store_path)
        self.procs: list[Proc] = []
        self.node_ids = {COORDINATOR_ID}

    def add_clients(self, name: str, count: int) -> list[tuple[str, str]]:
        """Identities whose sorted order is their creation order (part I/N goes to the I-th)."""
        width = len(str(count))
        out = [self.store.add(f"{name}{i:0{width}d}") for i in range(1, count + 1)]
        self.node_ids.update(cid for cid, _ in out)
        return out

    def broker_args(self) -> list[str]:
        return ["--broker", self.url, "--namespace", self.namespace]

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [*FEDHIVE, *args])
        self.procs.append(proc)
        return proc

    def coordinator(self, config: Path, out: Path, *extra: str) -> Proc:
        args = ["coordinator", *self.broker_args(), "--config", str(config), "--store", str(self.store_path)]
        proc = self.start("coordinator", *args, "--out", str(out), "--json", *extra)
        proc.wait_for("coordinator ready", stream="err")
        return proc

    def client(self, ident: tuple[str, str], *data: str, extra: tuple[str, ...] = ()) -> Proc:
        cid, secret = ident
        return self.start(cid, "client", *self.broker_args(), "--id", cid, "--secret", secret, *data, *extra)

    def teardown(self) -> None:
        for p in self.procs:
            p.kill()
        for attempt in range(3):  # the broker may still be coming back from a restart
            try:
                asyncio.run(delete_namespace(self.url, self.namespace, self.node_ids))
                return
            except TransportError:
                if attempt == 2:
                    raise
                time.sleep(2)


def demo_part(i: int, n: int, partition: str = "dirichlet:0.5") -> tuple[str, ...]:
    return ("--dataset", "digits", "--partition", partition, "--part", f"{i}/{n}")


class Net:
    """For tests that run the coordinator and clients in this process (to watch their buses): a
    namespace on the broker, a client store, and the ids to clean up afterwards."""

    def __init__(self, url: str, root: Path) -> None:
        self.broker = BrokerSettings(url, f"test-{uuid4().hex[:8]}")
        self.store = CredentialStore(root / "clients.json")
        self.root = root
        self.ids = {COORDINATOR_ID}

    def add(self, name: str) -> tuple[str, bytes]:
        cid, secret = self.store.add(name)
        self.ids.add(cid)
        return cid, parse_secret(secret)

    def coordinator(self, *observers: Observer, **settings: object) -> asyncio.Task[SessionResult]:
        """The coordinator of a digits session (logreg-np), in this process; ``ready`` is set once
        it listens."""
        raw = {"rounds": 2, "min_clients": 2, "model": "logreg-np", "lr": 0.1, "round_timeout_s": 30, **settings}
        session = parse_session({**raw, "data": {"dataset": "digits"}}, self.root / "session.toml")
        self.ready = asyncio.Event()
        run = run_coordinator(session, self.store, self.broker, observers=observers, on_ready=self.ready.set)
        return asyncio.create_task(run)

    def honest(
        self, ident: tuple[str, bytes], part: str, settings: ClientSettings = ClientSettings(register_timeout_s=30)
    ) -> asyncio.Task[int]:
        site = build_site(ident[0], BUILTIN, None, LocalData(dataset="digits", part=part))
        return asyncio.create_task(run_client(ident[1], site, self.broker, settings))
