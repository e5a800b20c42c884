"""FedAvg aggregation versus a plain numpy weighted streaming sum, in one process.

    python bench/aggregate.py [--updates 100] [--size 1000000]

Prints a table and, last, one JSON line. Memory is measured with tracemalloc (numpy reports its
buffers to it) as the peak above what was allocated before aggregation started, in model copies
(one copy = the float32 model's bytes). Inputs are a small pool of pre-generated updates reused
round-robin, so neither side pays for generating data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc

import numpy as np
from rich.console import Console
from rich.table import Table

from fedhive.core.params import Params
from fedhive.strategies.base import Update
from fedhive.strategies.fedavg import WeightedMeanAggregator

POOL = 8


def make_pool(size: int, seed: int = 0) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [
        Update(f"c{i}", Params({"w": rng.standard_normal(size, dtype=np.float32)}), int(rng.integers(10, 500)))
        for i in range(POOL)
    ]


def numpy_baseline(pool: list[Update], n: int) -> np.ndarray:
    """What one would write by hand: a float64 running weighted sum, then divide."""
    size = pool[0].params["w"].size
    acc = np.zeros(size, np.float64)
    total = 0.0
    for i in range(n):
        u = pool[i % POOL]
        acc += u.params["w"] * float(u.num_examples)
        total += u.num_examples
    return (acc / total).astype(np.float32)


def exact_reference(pool: list[Update], n: int) -> np.ndarray:
    """The weighted mean with every product and sum in float64 (not timed): what FedAvg must give."""
    size = pool[0].params["w"].size
    acc = np.zeros(size, np.float64)
    total = 0.0
    for i in range(n):
        u = pool[i % POOL]
        acc += u.params["w"].astype(np.float64) * float(u.num_examples)
        total += u.num_examples
    return acc / total


def fedhive_fedavg(pool: list[Update], n: int) -> np.ndarray:
    agg = WeightedMeanAggregator(Params({"w": pool[0].params["w"]}))
    for i in range(n):
        agg.add(pool[i % POOL])
    return agg.result().params["w"]


def timed(fn, *args) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def peak_copies(fn, pool: list[Update], n: int) -> float:  # type: ignore[no-untyped-def]
    model_bytes = pool[0].params["w"].nbytes
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = fn(pool, n)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del out
    return (peak - base) / model_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pool = make_pool(args.size)
    fedhive_fedavg(pool, 4), numpy_baseline(pool, 4)  # warm up caches and allocators

    t_np, t_fh = [], []
    for _ in range(args.repeats):  # alternate so drift on a noisy machine hits both sides alike
        dt, ref = timed(numpy_baseline, pool, args.updates)
        t_np.append(dt)
        dt, got = timed(fedhive_fedavg, pool, args.updates)
        t_fh.append(dt)
    max_err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    exact = exact_reference(pool, args.updates)
    # Both results are float32: compare with the float64 mean rounded to float32 (0 = exact).
    err_fh = float(np.max(np.abs(got.astype(np.float64) - exact.astype(np.float32))))
    err_np = float(np.max(np.abs(ref.astype(np.float64) - exact.astype(np.float32))))
    mem_np = peak_copies(numpy_baseline, pool, args.updates)
    mem_fh = peak_copies(fedhive_fedavg, pool, args.updates)

    small = make_pool(100_000, seed=1)
    growth = {n: peak_copies(fedhive_fedavg, small, n) for n in (10, 100, 1000)}

    med_np, med_fh = statistics.median(t_np), statistics.median(t_fh)
    table = Table(title=f"FedAvg of {args.updates} updates x {args.size:,} float32 (median of {args.repeats})")
    for col in ("implementation", "seconds", "per update ms", "extra peak (model copies)"):
        table.add_column(col, justify="right")
    table.add_row(
        "numpy weighted streaming sum", f"{med_np:.3f}", f"{1000 * med_np / args.updates:.2f}", f"{mem_np:.2f}"
    )
    table.add_row("fedhive FedAvg", f"{med_fh:.3f}", f"{1000 * med_fh / args.updates:.2f}", f"{mem_fh:.2f}")
    console = Console()
    console.print(table)
    g = Table(title="fedhive FedAvg memory vs number of clients (100k-parameter model)")
    g.add_column("clients", justify="right")
    g.add_column("extra peak (model copies)", justify="right")
    for n, c in growth.items():
        g.add_row(str(n), f"{c:.2f}")
    console.print(g)
    console.print(f"max |fedhive - numpy| = {max_err:.2e}")
    console.print(f"max |result - float64 mean rounded to float32|: fedhive {err_fh:.2e}, numpy {err_np:.2e}")
    print(
        json.dumps(
            {
                "bench": "aggregate",
                "updates": args.updates,
                "size": args.size,
                "numpy_s": round(med_np, 4),
                "fedhive_s": round(med_fh, 4),
                "time_ratio": round(med_fh / med_np, 3),
                "fedhive_peak_copies": round(mem_fh, 2),
                "numpy_peak_copies": round(mem_np, 2),
                "peak_copies_by_clients": {str(k): round(v, 2) for k, v in growth.items()},
                "max_abs_error": max_err,
                "max_abs_error_vs_float64": {"fedhive": err_fh, "numpy": err_np},
            }
        )
    )


if __name__ == "__main__":
    main()
