"""``bench/secagg.py --amqp``: secure aggregation against plain FedAvg over RabbitMQ.

Three sessions, one after the other, each in a fresh namespace of the broker (deleted afterwards):
plain FedAvg, secure aggregation, and secure aggregation with ``--dropout`` of each round's
clients vanishing after their masked input (they send no unmasking shares; drawn per round from
the seed, as ``simulate --secagg-dropout`` draws them). The coordinator is ``fedhive coordinator``
in a child process with a session file, as deployed; the ``--clients`` clients run in this one as
virtual clients (``fedhive client --virtual``'s way: each its own AMQP connection, identity and
signature, training in one shared worker thread). Digits (iid parts ``i/N``), simple-dnn, FedAvg,
seed 0, the local epochs and batch size ``bench/secagg.py`` passes. The round time is the median of
rounds 2..R from the coordinator's ``rounds.csv``.
"""

from __future__ import annotations

import asyncio
import csv
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhive.app.loader import BUILTIN
from fedhive.cli.site_options import build_site
from fedhive.core import codec
from fedhive.core.envelope import Kind, Message
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.networked import BrokerSettings, client_codec
from fedhive.transports.amqp import delete_namespace
from fedhive.transports.base import Transport, TransportWrapper

SEED = 0


@dataclass
class AmqpRun:
    name: str
    params: dict[str, np.ndarray]
    rounds: int
    updates: list[int]
    round_s: list[float]
    accuracy: float
    wall_s: float
    cpu_s: float  # CPU of both processes (clients, coordinator) over the session: less swayed by other work
    round_cpu_s: float  # the same per round, rounds 2..R-1 (no start-up, registration or last round)
    steps: str  # the coordinator's log line of the last secure round: each step's time

    @property
    def median_round(self) -> float:
        return statistics.median(self.round_s[1:] or self.round_s)


class DropsUnmasking(TransportWrapper):
    """A client that vanishes after its masked input in the rounds it is drawn for: its
    unmasking shares never leave (it is back for the next round, as in ``simulate``)."""

    def __init__(self, inner: Transport, drops_in: set[int]) -> None:
        super().__init__(inner)
        self.drops_in = drops_in

    async def send(self, to: str, message: Message) -> None:
        secagg = message.envelope.body.get("secagg")
        if message.kind is Kind.UPDATE and secagg == "unmask" and message.envelope.round in self.drops_in:
            return
        await self.inner.send(to, message)


def dropped_rounds(ids: list[str], rounds: int, share: float) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {c: set() for c in ids}
    k = int(share * len(ids))
    for rnd in range(1, rounds + 1):
        rng = np.random.default_rng([SEED, rnd, 0, 0x5EC])
        for c in rng.choice(sorted(ids), size=k, replace=False).tolist():
            out[c].add(rnd)
    return out


def _cpu_of(pid: int) -> float:
    """A child's CPU seconds so far (Linux: /proc), read while it runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _clients(
    idents: list[tuple[str, bytes]], broker: BrokerSettings, drops: dict[str, set[int]], marks: dict[int, float],
    coordinator_pid: int,
) -> None:  # fmt: skip
    def mark(e: ev.TrainingStarted) -> None:  # CPU of both processes when a round's first TRAIN arrives
        if e.round not in marks:
            marks[e.round] = time.process_time() + _cpu_of(coordinator_pid)

    pool = ThreadPoolExecutor(1, thread_name_prefix="bench-virtual-clients")
    n = len(idents)

    async def one(i: int, cid: str, key: bytes) -> None:
        site = build_site(cid, BUILTIN, None, LocalData(dataset="digits", partition="iid", part=f"{i}/{n}"))
        async with broker.transport(cid, client_codec(cid, key), declares=False) as inner:
            link = DropsUnmasking(inner, drops.get(cid, set())) if drops.get(cid) else inner
            node = ClientNode(
                cid, link, site.trainer_for, num_examples=site.num_examples, label_counts=site.label_counts,
                executor=pool, register_timeout_s=300, coordinator_timeout_s=120,
            )  # fmt: skip
            node.bus.on(ev.TrainingStarted, mark)
            await node.run()

    try:
        await asyncio.gather(*(one(i, cid, key) for i, (cid, key) in enumerate(idents, start=1)))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def session_file(path: Path, clients: int, rounds: int, epochs: int, batch_size: int, secure: bool) -> Path:
    path.write_text(
        "\n".join(
            [
                'session_id = "bench-secagg-amqp"',
                f"rounds = {rounds}",
                f"min_clients = {clients}",
                f"seed = {SEED}",
                f"epochs = {epochs}",
                f"batch_size = {batch_size}",
                'model = "simple-dnn"',
                "round_timeout_s = 300",
                "registration_timeout_s = 300",
                "heartbeat_timeout_s = 120",
                f"secure_aggregation = {str(secure).lower()}",
                "[data]",
                'dataset = "digits"',
                'partition = "iid"',
            ]
        )
        + "\n"
    )
    return path


def run_amqp(
    url: str, clients: int, rounds: int, epochs: int, batch_size: int, *, secure: bool, dropout: float = 0.0
) -> AmqpRun:
    root = Path(tempfile.mkdtemp(prefix="bench-secagg-amqp-"))
    store = CredentialStore(root / "clients.json")
    idents = [(cid, parse_secret(s)) for cid, s in (store.add(f"v{i:04d}") for i in range(1, clients + 1))]
    idents.sort()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = BrokerSettings(url, namespace)
    config = session_file(root / "session.toml", clients, rounds, epochs, batch_size, secure)
    cmd = [sys.executable, "-m", "fedhive.cli.main", "coordinator", "--broker", url, "--namespace", namespace]
    cmd += ["--config", str(config), "--store", str(root / "clients.json"), "--out", str(root / "out"), "--json"]
    drops = dropped_rounds([c for c, _ in idents], rounds, dropout) if dropout else {}
    started, cpu_started = time.perf_counter(), time.process_time()
    marks: dict[int, float] = {}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = (root / "coordinator.log").open("w")  # its log: each secure round's time per step
    coordinator = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        asyncio.run(_clients(idents, broker, drops, marks, coordinator.pid))
        out, _ = coordinator.communicate(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        asyncio.run(delete_namespace(url, namespace, {COORDINATOR_ID, *(c for c, _ in idents)}))
        log.close()
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    cpu = time.process_time() - cpu_started + child_cpu
    if coordinator.returncode != 0:
        raise SystemExit(f"the coordinator failed (exit {coordinator.returncode}): {out[-2000:]}")
    run = next((root / "out").glob("*/rounds.csv")).parent
    with (run / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    params = dict(codec.decode((run / "model.safetensors").read_bytes(), max_bytes=1 << 28))
    name = "plain fedavg" if not secure else f"secure, {dropout:.0%} dropout" if dropout else "secure"
    accuracy = float(rows[-1]["accuracy"] or "nan")
    logged = [line for line in (root / "coordinator.log").read_text().splitlines() if "secure sum of" in line]
    shutil.rmtree(root, ignore_errors=True)
    return AmqpRun(
        name, params, len(rows), [int(r["updates"]) for r in rows], [float(r["duration_s"]) for r in rows],
        accuracy, wall, cpu, (marks[rounds] - marks[2]) / (rounds - 2) if rounds > 2 else float("nan"),
        logged[-1].split("fedhive.secagg: ")[-1] if logged else "",
    )  # fmt: skip


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) for n in a)
