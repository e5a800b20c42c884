"""Peer processes (``fedhive peer``) over RabbitMQ in a throw-away namespace, for the networked tests."""

from __future__ import annotations

import asyncio
import json
import sys
from uuid import uuid4

from amqp_cluster import Proc

from fedhive.transports.amqp import delete_namespace

PEER = [sys.executable, "-m", "fedhive.cli.main", "peer"]
SECRET = "5e" * 32
SETTINGS = {"model": "logreg-np", "lr": 0.1, "seed": 0, "epochs": 1, "batch_size": 32}


class Peers:
    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"test-{uuid4().hex[:8]}"
        self.procs: list[Proc] = []

    def start(self, n: int, rounds: int, *extra: str) -> list[Proc]:
        for i in range(1, n + 1):
            args = [
                *PEER,
                *("--broker", self.url, "--namespace", self.namespace, "--secret", SECRET),
                *("--dataset", "digits", "--partition", "dirichlet:0.5", "--part", f"{i}/{n}"),
                *("--min-peers", str(n), "--rounds", str(rounds), "--model", str(SETTINGS["model"])),
                *("--lr", str(SETTINGS["lr"]), "--seed", str(SETTINGS["seed"]), "--json"),
                # A peer silent for 5 s is gone: on a loaded 2-core machine (a CI run beside another
                # job) a live peer's process can be starved for over a second, and with 1.5 s the
                # others dropped it from their rounds (a gossiping peer then averaged with nobody).
                *("--beat", "0.5", "--peer-timeout", "5", "--round-timeout", "30", "--discovery-timeout", "60"),
                *extra,
            ]
            self.procs.append(Proc(f"peer-{i}", args))
        return self.procs

    def rounds(self, proc: Proc) -> dict[int, dict[str, object]]:
        rows = [json.loads(line) for line in proc.out if line.startswith("{")]
        return {int(r["round"]): r for r in rows}

    def teardown(self) -> None:
        ids = set()
        for p in self.procs:
            p.kill()
            ids |= {line.split()[1] for line in p.out + p.err if line.startswith("peer ")}  # stderr with --json
        asyncio.run(delete_namespace(self.url, self.namespace, ids))
