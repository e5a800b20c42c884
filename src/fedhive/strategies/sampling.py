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

In a hierarchical session the clients are drawn where they are, by each combiner among its own
clients, at the same rate; every combiner gets every round's TRAIN (a ``fraction`` of combiners
would leave whole groups of clients out together). A client's inclusion is then Bernoulli(``q``)
independently of every other client's, provided no two draws share a uniform stream: each
combiner's stream is keyed by its id as well (``draw_rng``). A combiner whose draw is empty
answers with a "none" partial, and a round in which every combiner's draw was empty is an empty
round, as above.

Who was drawn must stay secret: the privacy credit of subsampling assumes that an observer of the
released models does not know whether a given client took part. The session's ``seed`` is no
secret (every client receives it), so a strategy that samples for privacy gives its own secret
(``ClientSampling.secret``: DP-FedAvg's noise seed, drawn from the OS entropy pool unless the
experiment fixes it) and the draw comes from it (``ClientSampling.stream``). A combiner parses the
strategy from the session's spec, so without a fixed seed each combiner draws a secret of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def draw_rng(seed: int, rnd: int, attempt: int, node: str | None = None) -> np.random.Generator:
    """The uniform stream of one round attempt's draw, made by ``node`` (None: a flat coordinator).

    A flat coordinator's stream is ``default_rng([seed, rnd, attempt])``, as it always was
    (recorded runs depend on it). Each combiner of a hierarchical session draws from a stream of
    its own: with a shared one, the i-th client (in sorted order) of every combiner would get the
    same uniform number, and those clients would take part together or not at all. The node's id
    is hashed (SHA-256, so the same in every process) into the ``spawn_key`` of the seed sequence,
    numpy's way of deriving independent streams from one entropy.
    """
    entropy = [seed, rnd, attempt]
    if node is None:
        return np.random.default_rng(entropy)
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=_node_words(node)))


def _node_words(node: str) -> tuple[int, ...]:
    digest = hashlib.sha256(node.encode()).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, len(digest), 4))


# Spawn-key tag of the draw streams under a strategy's secret: DP-FedAvg's noise for round r uses
# spawn keys (r,) and (r, 1) of the same secret, so the draws take (r, 2, ...).
_DRAW_TAG = 2


def secret_draw_rng(secret: int, rnd: int, attempt: int, node: str | None = None) -> np.random.Generator:
    """``draw_rng``'s stream under a strategy's secret instead of the session's seed."""
    key = (rnd, _DRAW_TAG, attempt, *(() if node is None else _node_words(node)))
    return np.random.default_rng(np.random.SeedSequence(secret, spawn_key=key))


@dataclass(frozen=True, slots=True)
class ClientSampling:
    """How a strategy needs clients drawn each round: ``kind`` with per-client rate ``rate``."""

    kind: Literal["poisson"]
    rate: float
    # Where the draw's randomness comes from, if not the session's (public) seed: see the module's
    # docstring. Left out of repr: it is what keeps the draw secret.
    secret: int | None = field(default=None, repr=False)

    def select(self, candidates: Sequence[str], rng: np.random.Generator) -> list[str]:
        return poisson_sample(candidates, self.rate, rng)

    def stream(self, seed: int, rnd: int, attempt: int, node: str | None = None) -> np.random.Generator:
        """The uniform stream of one round attempt's draw by ``node`` (None: a flat coordinator)."""
        if self.secret is None:
            return draw_rng(seed, rnd, attempt, node)
        return secret_draw_rng(self.secret, rnd, attempt, node)
