"""Steady per-round time over RabbitMQ versus the same run on the in-memory transport.

    python bench/amqp_round.py [--quick] [--url amqp://guest:guest@127.0.0.1:5672/]

Cases (each run once on the memory transport, ``run_federation(threaded=True)``, and once over
RabbitMQ, every node with its own ``AmqpTransport``, signing keys and a fresh namespace that is
deleted afterwards). Over RabbitMQ the coordinator runs in a child process (this script with
``--coordinator-child``), as deployed, and the clients in this one, each with its own connection;
with all eleven nodes in one process, their protocol work would share one core and one GIL:

- a) 10 clients, numpy softmax regression with 10,010 parameters, 6 rounds
  (target: RabbitMQ adds <= 30 ms per round);
- b) 100 clients, same model, 4 rounds (reported, no target);
- c) 10 clients, 25M float32 parameters (100 MB), a trainer whose update is the model plus a
  constant, 3 rounds, payloads through a ``LocalArtifactStore`` claim-check (target: round
  <= 2.5 s over RabbitMQ; Flower 1.42's in-process simulation takes 3.8 s on the reference machine).
  The coordinator's peak RSS (VmHWM) minus its RSS after imports and connecting, before the model
  exists, is reported in model copies (target: <= 4).

``--quick`` runs case a) only. ``--evaluate-every N``: the clients also evaluate the global model
every N rounds (federated evaluation: one EVALUATE broadcast and the answers per evaluated round),
on both transports. The round time is the median of rounds 2..R, from the coordinator's
RoundStarted (round 1) and RoundCompleted timestamps. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn, Trainer
from fedhive.core.params import Params
from fedhive.core.wire import MAX_ENVELOPE_BYTES
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.client import ClientNode
from fedhive.runtime.coordinator import COORDINATOR_ID, Coordinator
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.networked import BrokerSettings, client_codec, coordinator_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.amqp import delete_namespace
from simulate_overhead import CLASSES, FEATURES, SAMPLES  # same workload: run from bench/, as documented
from simulate_overhead import config as overhead_config
from simulate_overhead import make_trainers as logreg_trainers

BIG_PARAMS = 25_000_000
MODEL_COPY_BYTES = BIG_PARAMS * 4
RUN_TIMEOUT_S = 300.0
TARGET_ADDED_MS, TARGET_BIG_ROUND_S, TARGET_COPIES = 30.0, 2.5, 4.0


# -- workloads ---------------------------------------------------------------------------------------
class CopyTrainer:
    """The update is the model plus a small constant: the work is messaging and aggregation."""

    num_examples = 10

    def __init__(self, seed: int) -> None:
        self.delta = np.float32(1e-3 * (seed + 1))

    def initial_params(self, seed: int) -> Params:
        return big_params()

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        return FitResult(Params({"w": params["w"] + self.delta}), self.num_examples, {"loss": 1.0})

    def evaluate(self, params: Params) -> EvalResult:
        return EvalResult(1, {"loss": 0.0, "accuracy": 0.0})


def big_params() -> Params:
    return Params({"w": np.zeros(BIG_PARAMS, np.float32)})


EVALUATE_EVERY = "FEDHIVE_BENCH_EVALUATE_EVERY"  # also read by the coordinator child


def config(rounds: int, clients: int) -> SessionConfig:
    """simulate_overhead's session, with deadlines that fit a broker run."""
    every = int(os.environ.get(EVALUATE_EVERY, "0"))
    update = {"round_timeout_s": 120, "registration_timeout_s": 120, "evaluate_every": every}
    return overhead_config(rounds, clients).model_copy(update=update)


# -- timing --------------------------------------------------------------------------------------------
class Stamps:
    def __init__(self) -> None:
        self.t: list[float] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.RoundStarted, lambda e: self.t.append(time.perf_counter()) if e.round == 1 else None)
        bus.on(ev.RoundCompleted, lambda e: self.t.append(time.perf_counter()))

    def rounds(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.t)]


def steady(rounds: Sequence[float]) -> float:
    return statistics.median(rounds[1:] or rounds)


async def memory_run(cfg: SessionConfig, trainers: Sequence[Trainer], initial: Params) -> list[float]:
    stamps = Stamps()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await run_federation(
            cfg,
            trainers,
            [SAMPLES] * len(trainers),
            initial,
            observers=[stamps.attach],
            threaded=True,
            hosted=False,  # client nodes, as over RabbitMQ: the difference is the broker alone
        )
    return stamps.rounds()


# -- RabbitMQ ------------------------------------------------------------------------------------------
def new_store(root: Path, clients: int) -> tuple[CredentialStore, dict[str, bytes]]:
    store = CredentialStore(root / "clients.json")
    keys = {}
    for i in range(clients):
        cid, secret = store.add(f"bench{i:03d}")
        keys[cid] = parse_secret(secret)
    return store, keys


async def run_clients(
    broker: BrokerSettings, keys: dict[str, bytes], trainers: Sequence[Trainer], session: asyncio.Task[object]
) -> None:
    pool = ThreadPoolExecutor(1, thread_name_prefix="bench-clients")
    try:
        async with contextlib.AsyncExitStack() as stack:
            tasks = []
            for (cid, key), trainer in zip(keys.items(), trainers, strict=True):
                transport = broker.transport(cid, client_codec(cid, key, artifacts=broker.artifacts))
                await stack.enter_async_context(transport)
                node = ClientNode(
                    cid,
                    transport,
                    lambda _c, t=trainer: t,
                    num_examples=SAMPLES,
                    executor=pool,
                    register_timeout_s=60,
                    coordinator_timeout_s=60,
                )
                tasks.append(asyncio.ensure_future(node.run()))
            # Clients end on STOP (sent when the session ends, well or not); a stuck one is cancelled.
            await asyncio.wait([*tasks, session], return_when=asyncio.FIRST_EXCEPTION)
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def amqp_run(url: str, workload: str, rounds: int, n: int) -> tuple[list[float], float]:
    """Over RabbitMQ: the coordinator in a child process (as deployed: its own process, its own
    core), the clients here, each with its own connection. Returns round times and the
    coordinator's peak memory growth in model copies."""
    namespace = f"bench-{uuid.uuid4().hex[:10]}"
    trainers = workload_trainers(workload, n)
    with tempfile.TemporaryDirectory(prefix="fedhive-bench-") as tmp:
        store, keys = new_store(Path(tmp), n)
        artifacts = str(Path(tmp) / "artifacts")
        broker = BrokerSettings(url, namespace, artifacts=LocalArtifactStore(artifacts))
        args = [
            "--coordinator-child",
            workload,
            namespace,
            str(store.path),
            artifacts,
            str(rounds),
            str(n),
            "--url",
            url,
        ]
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                assert child.stdout is not None
                line = await child.stdout.readline()
                if line.strip() != b"READY":
                    raise RuntimeError(f"coordinator child did not start: {line!r}")
                session = asyncio.ensure_future(child.wait())
                await run_clients(broker, keys, trainers, session)
                out, _ = await child.communicate()
                if child.returncode != 0:
                    raise RuntimeError(f"coordinator child failed with exit status {child.returncode}")
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await delete_namespace(url, namespace, [COORDINATOR_ID, *keys])
    result = json.loads(out.decode().strip().splitlines()[-1])
    copy_bytes = workload_initial(workload).nbytes
    return result["rounds"], (result["peak_rss"] - result["base_rss"]) / copy_bytes


def workload_trainers(workload: str, n: int) -> Sequence[Trainer]:
    return [CopyTrainer(i) for i in range(n)] if workload == "big" else logreg_trainers(n)


def workload_initial(workload: str) -> Params:
    return big_params() if workload == "big" else logreg_trainers(1)[0].initial_params(0)


# -- case c): the coordinator in its own process ----------------------------------------------------------
def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ``ru_maxrss``: Linux keeps that across exec,
    so a child of a big parent would start with the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


async def coordinator_child(
    url: str, workload: str, namespace: str, store_path: str, artifacts: str, rounds: int, n: int
) -> None:
    cfg = config(rounds, n)
    store = CredentialStore(store_path)
    broker = BrokerSettings(url, namespace, artifacts=LocalArtifactStore(artifacts))
    codec = coordinator_codec(
        store, artifacts=broker.artifacts, max_message_bytes=cfg.max_update_bytes + MAX_ENVELOPE_BYTES
    )
    stamps = Stamps()
    async with asyncio.timeout(RUN_TIMEOUT_S), broker.transport(COORDINATOR_ID, codec) as transport:
        base = rss_bytes("VmRSS")  # after imports and connecting, before the model exists
        coordinator = Coordinator(cfg, transport, workload_initial(workload))
        stamps.attach(coordinator.bus)
        print("READY", flush=True)
        await coordinator.run()
    peak = rss_bytes("VmHWM")
    print(json.dumps({"rounds": stamps.rounds(), "base_rss": base, "peak_rss": peak}), flush=True)


# -- main ------------------------------------------------------------------------------------------------
def case(name: str, clients: int, params: int, memory: list[float], amqp: list[float]) -> dict[str, Any]:
    m, a = steady(memory), steady(amqp)
    return {
        "case": name,
        "clients": clients,
        "params": params,
        "rounds_measured": len(amqp) - 1,
        "memory_round_s": round(m, 4),
        "amqp_round_s": round(a, 4),
        "added_ms": round(1000 * (a - m), 1),
        "memory_rounds_s": [round(x, 4) for x in memory],
        "amqp_rounds_s": [round(x, 4) for x in amqp],
    }


async def bench(url: str, quick: bool) -> dict[str, Any]:
    small = FEATURES * CLASSES + CLASSES
    rows = []
    trainers = logreg_trainers(10)
    init = trainers[0].initial_params(0)
    amqp, _ = await amqp_run(url, "logreg", 6, 10)
    rows.append(case("a", 10, small, await memory_run(config(6, 10), trainers, init), amqp))
    copies = None
    if not quick:
        mem = await memory_run(config(4, 100), logreg_trainers(100), init)
        amqp, _ = await amqp_run(url, "logreg", 4, 100)
        rows.append(case("b", 100, small, mem, amqp))
        big = [CopyTrainer(i) for i in range(10)]
        mem = await memory_run(config(3, 10), big, big_params())
        amqp, copies = await amqp_run(url, "big", 3, 10)
        rows.append(case("c", 10, BIG_PARAMS, mem, amqp))
    by = {r["case"]: r for r in rows}
    targets: dict[str, Any] = {"a_added_ms_le_30": by["a"]["added_ms"] <= TARGET_ADDED_MS}
    if "c" in by:
        targets["c_round_s_le_2.5"] = by["c"]["amqp_round_s"] <= TARGET_BIG_ROUND_S
        targets["c_coordinator_copies_le_4"] = copies is not None and copies <= TARGET_COPIES
    return {"rows": rows, "coordinator_peak_copies_c": None if copies is None else round(copies, 2), "targets": targets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--quick", action="store_true", help="case a) only")
    ap.add_argument("--evaluate-every", type=int, default=0, help="federated evaluation every N rounds (0: none)")
    ap.add_argument("--coordinator-child", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.coordinator_child:
        workload, ns, store, artifacts, rounds, n = a.coordinator_child
        asyncio.run(coordinator_child(a.url, workload, ns, store, artifacts, int(rounds), int(n)))
        return
    os.environ[EVALUATE_EVERY] = str(a.evaluate_every)
    out = asyncio.run(bench(a.url, a.quick))
    t = Table(title="RabbitMQ versus memory transport: median round of rounds 2..R (shared machine: noisy)")
    for col in ("case", "clients", "params", "memory s/round", "RabbitMQ s/round", "added ms/round"):
        t.add_column(col, justify="right")
    for r in out["rows"]:
        t.add_row(
            str(r["case"]),
            str(r["clients"]),
            f"{r['params']:,}",
            f"{r['memory_round_s']:.4f}",
            f"{r['amqp_round_s']:.4f}",
            f"{r['added_ms']:.1f}",
        )
    Console().print(t)
    if out["coordinator_peak_copies_c"] is not None:
        print(f"case c coordinator peak memory growth: {out['coordinator_peak_copies_c']} model copies")
    print(json.dumps({"bench": "amqp_round", "evaluate_every": a.evaluate_every} | out))


if __name__ == "__main__":
    main()
