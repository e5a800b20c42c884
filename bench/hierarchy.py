"""Hierarchical versus flat federation: what the coordinator receives per round, and round time.

    python bench/hierarchy.py [--clients 100] [--combiners 4] [--params 100000] [--rounds 5] [--exact]

Both runs use the same virtual clients (each adds a fixed random vector to the model: the work
is the messaging and aggregation, not training) on the memory transport with every message
encoded, signed and verified as on the wire, so "bytes" are real frame bytes. The coordinator of
the flat run receives one update per client; the hierarchical coordinator one partial per
combiner, the size of one update (sums in the model's dtype): expect a ratio of about
clients / combiners, half that with --exact (float64 sums). Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

import numpy as np
from rich.console import Console
from rich.table import Table

from fedhive.app.learner import EvalResult, FitConfig, FitResult, ProgressFn
from fedhive.core.params import Params
from fedhive.core.signing import Verifier
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hierarchy_simulation import run_hierarchy
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import run_federation
from fedhive.transports.memory import MemoryNetwork
from fedhive.transports.wire_codec import WireCodec

KEY = b"bench" * 8


class Shift:
    def __init__(self, seed: int, size: int) -> None:
        self.delta = np.random.default_rng(seed).normal(scale=0.01, size=size).astype(np.float32)
        self.num_examples = 10 + seed % 7

    def initial_params(self, seed: int) -> Params:
        return Params({"w": np.zeros(self.delta.size, np.float32)})

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        return FitResult(Params({"w": params["w"] + self.delta}), self.num_examples, {"loss": 1.0})

    def evaluate(self, params: Params) -> EvalResult:
        return EvalResult(1, {"loss": 0.0, "accuracy": 0.0})


class CountingNetwork(MemoryNetwork):
    """Counts the frame bytes delivered to the coordinator."""

    def __init__(self) -> None:
        super().__init__(codec_for=lambda _id: WireCodec(lambda _to: KEY, Verifier(lambda _s: KEY)), inbox_size=0)
        self.to_coordinator = 0

    async def deliver(self, to: str, item: object, *, must_exist: bool = True) -> None:
        if to == COORDINATOR_ID and isinstance(item, bytes):
            self.to_coordinator += len(item)
        await super().deliver(to, item, must_exist=must_exist)


async def run(mode: str, clients: int, combiners: int, size: int, rounds: int, exact: bool) -> dict[str, float]:
    trainers = [Shift(i, size) for i in range(clients)]
    config = SessionConfig(rounds=rounds, min_clients=clients, round_timeout_s=120, registration_timeout_s=120)
    net = CountingNetwork()
    durations: list[float] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, lambda e: durations.append(e.duration_s))

    args = (config, trainers, [t.num_examples for t in trainers], trainers[0].initial_params(0))
    if mode == "flat":
        # Client nodes, each sending its own UPDATE: the flat topology that combiners relieve.
        result = await run_federation(*args, observers=[watch], network=net, hosted=False)
    else:
        result = await run_hierarchy(*args, combiners=combiners, observers=[watch], network=net, exact_partials=exact)
    return {
        "bytes_per_round": net.to_coordinator / rounds,
        "round_s": statistics.median(durations[1:] or durations),
        "checksum": float(np.abs(result.params["w"]).sum(dtype=np.float64)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--combiners", type=int, default=4)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--exact", action="store_true", help="float64 partial sums on the wire")
    a = ap.parse_args()
    flat = asyncio.run(run("flat", a.clients, a.combiners, a.params, a.rounds, a.exact))
    nested = asyncio.run(run("hierarchy", a.clients, a.combiners, a.params, a.rounds, a.exact))
    ratio = flat["bytes_per_round"] / nested["bytes_per_round"]
    rel = abs(flat["checksum"] - nested["checksum"]) / flat["checksum"]
    table = Table(title=f"{a.clients} clients, {a.params} float32 parameters, {a.rounds} rounds")
    for col in ("topology", "MB to coordinator / round", "median round (s)"):
        table.add_column(col)
    table.add_row("flat", f"{flat['bytes_per_round'] / 1e6:.2f}", f"{flat['round_s']:.3f}")
    table.add_row(f"{a.combiners} combiners", f"{nested['bytes_per_round'] / 1e6:.2f}", f"{nested['round_s']:.3f}")
    Console().print(table)
    print(f"coordinator receives {ratio:.1f}x fewer bytes; models agree to {rel:.1e} (relative)")
    out = {"clients": a.clients, "combiners": a.combiners, "params": a.params, "bytes_ratio": ratio}
    out |= {"flat": flat, "hierarchy": nested, "relative_difference": rel}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
