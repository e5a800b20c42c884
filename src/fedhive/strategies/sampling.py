"""Client sampling that a strategy's privacy accounting depends on.

DP-FedAvg's accountant (``privacy_accountant.py``) credits subsampling only for Poisson sampling:
each eligible client takes part in a round independently with probability ``q``. A fixed-size
sample drawn without replacement (the runtime's ``fraction`` selection) is a different mechanism,
so a DP session with ``sample_rate < 1`` must draw its clients with ``poisson_sample``.

A Poisson sample may be empty (probability ``(1 - q)^n`` with ``n`` candidates). Such a round
trains nobody and releases no new model (the global model stays as it is), but it still counts as
a round for the accountant (``Strategy.empty_round``): the draw took place, and skipping it or
drawing again until someone is chosen would condition the sample on its size, which the Poisson
bound does not cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

POISSON: Literal["poisson"] = "poisson"


def poisson_sample(candidates: Sequence[str], q: float, rng: np.random.Generator) -> list[str]:
    """Each of ``candidates`` independently with probability ``q``, in the given order.

    ``q = 1`` returns every candidate and ``q = 0`` none, without drawing. Otherwise exactly one
    uniform number is drawn per candidate, so the result is a function of the generator's state
    and the candidates' order (pass them sorted for a reproducible selection). May be empty.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"sampling probability must be in [0, 1], got {q}")
    if q == 1:
        return list(candidates)
    if q == 0 or not candidates:
        return []
    keep = rng.random(len(candidates)) < q
    return [c for c, k in zip(candidates, keep.tolist(), strict=True) if k]


@dataclass(frozen=True, slots=True)
class ClientSampling:
    """How a strategy needs clients drawn each round: ``kind`` with per-client rate ``rate``."""

    kind: Literal["poisson"]
    rate: float

    def select(self, candidates: Sequence[str], rng: np.random.Generator) -> list[str]:
        return poisson_sample(candidates, self.rate, rng)
