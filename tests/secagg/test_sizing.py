"""How many neighbours: the default grows as log n, meets its stated failure bounds, and the bounds
are upper bounds on what a simulation of dropouts on the graph shows."""

from __future__ import annotations

import numpy as np

from fedhive.secagg.graph import neighbour_graph
from fedhive.secagg.sizing import (
    CORRECTNESS_BITS,
    SECURITY_BITS,
    default_neighbours,
    failure_bounds,
    threshold_for,
)


def test_the_default_meets_its_bounds_and_grows_slowly() -> None:
    ks = {n: default_neighbours(n, 0.5) for n in (100, 1000, 10_000, 100_000)}
    assert ks == {100: 36, 1000: 72, 10_000: 88, 100_000: 98}
    for n, k in ks.items():
        bounds = failure_bounds(n, k, threshold_for(k, 0.5))
        assert bounds.unrecoverable <= 2.0**-CORRECTNESS_BITS and bounds.exposed <= 2.0**-SECURITY_BITS
        smaller = failure_bounds(n, k - 2, threshold_for(k - 2, 0.5))
        assert smaller.unrecoverable > 2.0**-CORRECTNESS_BITS or smaller.exposed > 2.0**-SECURITY_BITS


def test_small_rounds_pair_everyone() -> None:
    assert [default_neighbours(n, 0.5) for n in (2, 3, 5)] == [1, 2, 4]


def test_the_threshold_is_a_share_of_k_and_at_least_two() -> None:
    assert threshold_for(36, 0.5) == 18
    assert threshold_for(7, 0.5) == 4
    assert threshold_for(1, 0.5) == 2


def _ring_trials(n: int, k: int, gone: int, trials: int, seed: int) -> tuple[float, float]:
    """Shares of trials where some client keeps fewer than ``k // 2`` live neighbours (with t =
    k // 2 + 1 of k + 1 holders, a dropped client's secret is lost), and where the live clients'
    graph falls apart, with ``gone`` clients drawn at random each time."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(n)]
    lost = apart = 0
    for trial in range(trials):
        graph = neighbour_graph(ids, k, trial.to_bytes(4, "big") + bytes([seed]))
        out = set(rng.choice(ids, size=gone, replace=False).tolist())
        t = threshold_for(k, 0.5)
        lost += any(len(graph[u] - out) < t for u in ids)
        live = [c for c in ids if c not in out]
        seen, todo = {live[0]}, [live[0]]
        while todo:
            for v in graph[todo.pop()] - out - seen:
                seen.add(v)
                todo.append(v)
        apart += len(seen) < len(live)
    return lost / trials, apart / trials


def test_the_bounds_hold_against_simulated_dropouts() -> None:
    # 60 clients, 6 neighbours, 20 % dropping (12) and, for the split, 10 % colluding on top (18 gone).
    k, t = 6, threshold_for(6, 0.5)
    bounds = failure_bounds(60, k, t, dropout=0.2, corrupt=0.1)
    assert bounds.unrecoverable < 1 and bounds.split < 1  # informative, not capped at 1
    lost, _ = _ring_trials(60, k, 12, 300, seed=1)
    _, apart = _ring_trials(60, k, 18, 300, seed=2)
    assert lost > 0.05 and apart > 0.05  # the events are real at this size ...
    assert lost <= bounds.unrecoverable and apart <= bounds.split  # ... and the bounds cover them
