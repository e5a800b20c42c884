"""DP-FedAvg with central differential privacy and fixed clipping (McMahan et al. 2018).

Each client's update ``delta = params - global`` is clipped to L2 norm ``clip`` (C); the server
takes the unweighted mean of the clipped deltas over the ``n`` clients aggregated (weights would
let one client's count raise its influence beyond C) and adds ``N(0, (z C / n)^2)`` noise to
every coordinate, z being the noise multiplier. Dividing by the actual ``n`` (not the expected
count) follows common practice (e.g. Flower's server-side fixed clipping). Client-level privacy
then follows from the Gaussian mechanism on a sum of sensitivity C; ``privacy_spent(delta)`` gives
epsilon after the rounds so far (``sample_rate`` < 1 assumes each client joins each round
independently with that probability).

What the guarantee covers: the float tensors of the model. Non-float tensors (counters) keep the
global value, since clients could otherwise move them without noise; the example counts and
training metrics clients report are not protected.

Noise for round r comes from ``SeedSequence(seed, spawn_key=(r,))``: a resumed session draws the
same noise. The seed is secret in effect (anyone knowing it can subtract the noise), so by default
it is drawn from the OS entropy pool and carried in ``state`` for checkpoints; pass a seed only for
reproducible experiments.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import AggregateResult, Aggregator, Strategy
from fedhive.strategies.clipping import ClippingAggregator
from fedhive.strategies.fedavg import WeightedMeanAggregator
from fedhive.strategies.privacy_accountant import RdpAccountant
from fedhive.strategies.server_optimizers import float64_template

_SEED_WORDS = 4  # the seed is stored as 4 x 32 bits


class DPFedAvg(Strategy):
    name = "dp-fedavg"

    def __init__(
        self,
        *,
        clip: float = 1.0,
        noise: float = 1.0,
        delta: float = 1e-5,
        sample_rate: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.clip = clip
        self.noise = noise
        self.delta = delta
        self.sample_rate = sample_rate
        self.seed = secrets.randbits(128) if seed is None else seed
        if not 0 <= self.seed < 1 << (32 * _SEED_WORDS):
            raise ValueError(f"seed must be in [0, 2**128), got {seed}")
        self.accountant = RdpAccountant(noise, sample_rate)
        self.rounds = 0  # rounds released so far: all the accountant needs

    def aggregator(self, global_params: Params) -> Aggregator:
        mean = WeightedMeanAggregator(float64_template(global_params), weighted=False)
        return ClippingAggregator(mean, global_params, self.clip)

    def apply(self, global_params: Params, aggregate: AggregateResult, round: int) -> Params:
        std = self.noise * self.clip / aggregate.count
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(round,)))
        out: dict[str, np.ndarray] = {}
        for name, g in global_params.items():
            if g.dtype.kind != "f":
                out[name] = g.copy()
                continue
            new = np.array(aggregate.params[name], np.float64)  # global + clipped mean delta
            if std > 0:
                new += rng.normal(0.0, std, g.shape)
            out[name] = new.astype(g.dtype, copy=False)
        self.rounds += 1
        return Params(out)

    def privacy_spent(self, delta: float | None = None) -> float:
        """Epsilon spent so far, for ``delta`` (the configured one by default)."""
        return self.accountant.epsilon(self.rounds, self.delta if delta is None else delta)

    def round_metrics(self) -> dict[str, float]:
        return {"epsilon": self.privacy_spent(), "delta": self.delta}

    def state(self) -> dict[str, np.ndarray]:
        words = [(self.seed >> (32 * i)) & 0xFFFFFFFF for i in range(_SEED_WORDS)]
        return {"dp/rounds": np.array(self.rounds, np.int64), "dp/seed": np.array(words, np.uint32)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        unexpected = set(state) - {"dp/rounds", "dp/seed"}
        if unexpected:
            raise ConfigError(f"{self.name}: unexpected state entry {min(unexpected)!r}; saved by another strategy?")
        if "dp/rounds" in state:
            self.rounds = int(state["dp/rounds"])
        if "dp/seed" in state:
            self.seed = sum(int(w) << (32 * i) for i, w in enumerate(np.asarray(state["dp/seed"]).tolist()))

    def config(self) -> dict[str, object]:
        # The seed is left out on purpose: configs get logged and shown, and the seed is the noise.
        return {
            "name": self.name,
            "clip": self.clip,
            "noise": self.noise,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
        }
