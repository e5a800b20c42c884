"""How many neighbours each client needs, and what a choice of ``k`` and ``t`` risks.

Assumptions (the defaults; docs/secure_aggregation.md, "Neighbours and threshold"): in a round of
``n`` clients at most ``ASSUMED_DROPOUT * n`` drop out (at any step) and at most
``ASSUMED_CORRUPT * n`` collude with an honest-but-curious server, both chosen without knowing the
ring order (the graph seed is drawn after the ids are fixed, once per session: colluders are who
they are when the session starts, ``server.session_graph_seed``). The order is a uniformly random
permutation, so the clients around any one client are a uniformly random ``k``-subset of the
others, and the dropped or colluding ones among them are hypergeometric.

Two ways a round can go wrong, each bounded by a union bound over the clients:

- **unrecoverable** (the round fails and is retried): some client's secret has fewer than ``t``
  live holders, i.e. more than ``k - t`` of its neighbours dropped out;
- **exposed** (privacy): some honest client has ``t`` or more colluding neighbours (they hold
  enough shares of both its secrets), or the graph of honest clients still in the round falls
  apart (the server then learns the sum of each part, not just the total). On the ring, with
  neighbours up to ``k // 2`` places away, it can fall apart only where two runs of ``k // 2``
  consecutive clients are all dropped or colluding: at most ``n^2 / 2`` pairs of such runs.

``default_neighbours`` is the smallest even ``k`` that keeps the first below 2**-20 and the second
below 2**-40 per round (``n - 1``, everyone with everyone, when none smaller does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from fedhive.secagg.graph import degree

SECURITY_BITS = 40  # exposure at most 2**-40 a round
CORRECTNESS_BITS = 20  # a failed (retried) round at most 2**-20 a round
ASSUMED_DROPOUT = 0.2
ASSUMED_CORRUPT = 0.1


def threshold_for(k: int, fraction: float) -> int:
    """Shares that unmask a client's secret: ``ceil(fraction * k)``, at least 2 (one share alone
    would be a neighbour holding the secret). Its ``k + 1`` holders are its neighbours and itself."""
    if not 0 < fraction <= 1:
        raise ValueError(f"threshold fraction must be in (0, 1], got {fraction}")
    return max(2, math.ceil(fraction * k))


@dataclass(frozen=True, slots=True)
class FailureBounds:
    """Per round, upper bounds on the chance of each failure (see the module's docstring)."""

    unrecoverable: float  # some secret has fewer than t live holders: the round fails
    colluding: float  # some honest client has t or more colluding neighbours
    split: float  # the honest clients left fall into parts, whose sums the server learns

    @property
    def exposed(self) -> float:
        """More than the sum of the honest clients' updates is revealed."""
        return min(1.0, self.colluding + self.split)


def _count(fraction: float, n: int) -> int:
    return min(n, math.ceil(round(fraction * n, 9)))


def _tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X hypergeometric: ``draws`` from ``population`` with ``marked`` marked."""
    if at_least <= 0:
        return 1.0
    top = min(marked, draws)
    if at_least > top:
        return 0.0
    hits = sum(math.comb(marked, x) * math.comb(population - marked, draws - x) for x in range(at_least, top + 1))
    return hits / math.comb(population, draws)


@lru_cache(maxsize=4096)
def failure_bounds(
    n: int, k: int, t: int, dropout: float = ASSUMED_DROPOUT, corrupt: float = ASSUMED_CORRUPT
) -> FailureBounds:
    """Upper bounds on the two failures above for ``n`` clients, ``k`` neighbours, threshold ``t``."""
    k = degree(n, k)
    if n < 2:
        return FailureBounds(0.0, 0.0, 0.0)
    dropped, colluding = _count(dropout, n), _count(corrupt, n)
    unrecoverable = n * _tail(n - 1, dropped, k, k - t + 1)
    collusion = n * _tail(n - 1, colluding, k, t)
    gone, run = dropped + colluding, k // 2
    split = 0.0
    if k < n - 1 and 2 * run <= gone:  # the complete graph stays connected whoever leaves it
        split = n * (n - 1) * math.comb(gone, 2 * run) / (2 * math.comb(n, 2 * run))
    return FailureBounds(min(1.0, unrecoverable), min(1.0, collusion), min(1.0, split))


@lru_cache(maxsize=1024)
def default_neighbours(n: int, fraction: float) -> int:
    """The smallest even ``k`` whose failure bounds meet ``CORRECTNESS_BITS`` and ``SECURITY_BITS``
    under the assumed dropout and collusion, or ``n - 1`` (everyone) when none below it does."""
    for k in range(2, n - 1, 2):
        bounds = failure_bounds(n, k, threshold_for(k, fraction))
        if bounds.unrecoverable <= 2.0**-CORRECTNESS_BITS and bounds.exposed <= 2.0**-SECURITY_BITS:
            return k
    return max(1, n - 1)
