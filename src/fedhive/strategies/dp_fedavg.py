"""DP-FedAvg with central differential privacy and fixed or adaptive clipping (McMahan et al. 2018;
Andrew et al. 2021).

Each client's update ``delta = params - global`` is clipped to L2 norm ``clip`` (C); the server
takes the unweighted mean of the clipped deltas over the ``n`` clients aggregated (weights would
let one client's count raise its influence beyond C) and adds ``N(0, (z C / n)^2)`` noise to
every coordinate, z being the noise multiplier. Dividing by the actual ``n`` (not the expected
count) follows common practice (e.g. Flower's server-side fixed clipping). Client-level privacy
then follows from the Gaussian mechanism on a sum of sensitivity C.

Accounting (``privacy_accountant.py``, Google's ``dp-accounting``): RDP and PLD bounds for
``rounds`` rounds of the Gaussian mechanism, Poisson-subsampled at rate ``sample_rate`` when it is
below 1; the smaller epsilon is reported as ``epsilon``, both as ``epsilon_rdp``/``epsilon_pld``.
Subsampling is credited only when clients are drawn by Poisson sampling (each independently with
probability ``sample_rate``): ``client_sampling()`` says so to the runtime, which must then draw
with ``strategies.sampling.poisson_sample`` and report empty draws with ``empty_round``.

Adaptive clipping (``clip=adaptive`` in the spec; Andrew et al., "Differentially Private Learning
with Adaptive Clipping", 2021, Algorithm 1 with the geometric update): each round the server also
releases the noisy count of clients whose update norm was within C,
``b = (sum_i (1[|delta_i| <= C] - 1/2) + N(0, sigma_b^2)) / n + 1/2``, and moves the clip norm
towards the ``target_quantile`` (gamma) of update norms: ``C <- C * exp(-clip_lr * (b - gamma))``.
The two releases together are one Gaussian mechanism of noise multiplier ``z`` (their Theorem 1)
when the update noise uses ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, so the accountant is
unchanged; this needs ``2 sigma_b > z``. The count must see every client's norm, so adaptive
clipping does not merge partial aggregates from combiners (``mergeable`` is False).

What the guarantee covers: the float tensors of the model. Non-float tensors (counters) keep the
global value, since clients could otherwise move them without noise; the example counts and
training metrics clients report are not protected.

Noise for round r comes from ``SeedSequence(seed, spawn_key=(r,))`` (the count noise of adaptive
clipping from ``spawn_key=(r, 1)``): a resumed session draws the same noise. The seed is secret in
effect (anyone knowing it can subtract the noise), so by default it is drawn from the OS entropy
pool and carried in ``state`` for checkpoints; pass a seed only for reproducible experiments.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import AggregateResult, Aggregator, Partial, Strategy
from fedhive.strategies.clipping import ClippingAggregator
from fedhive.strategies.fedavg import WeightedMeanAggregator
from fedhive.strategies.privacy_accountant import PrivacyAccountant, PrivacySpent
from fedhive.strategies.sampling import POISSON, ClientSampling
from fedhive.strategies.server_optimizers import float64_template

_SEED_WORDS = 4  # the seed is stored as 4 x 32 bits


@dataclass(frozen=True, slots=True)
class AdaptiveClip:
    """Settings of adaptive clipping (Andrew et al. 2021); see the module docstring."""

    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float = 5.0  # sigma_b, std of the noise on the count of unclipped updates

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not self.clip_lr > 0:
            raise ValueError(f"clip_lr must be positive, got {self.clip_lr}")
        if not self.count_noise >= 0:
            raise ValueError(f"count_noise must be >= 0, got {self.count_noise}")

    def update_noise(self, z: float) -> float:
        """The update's noise multiplier that leaves the pair of releases at multiplier ``z``."""
        if z == 0:
            return 0.0
        if not 2 * self.count_noise > z:
            raise ValueError(
                f"adaptive clipping needs 2 * count_noise > noise, got count_noise={self.count_noise}, noise={z}"
            )
        return float((z**-2 - (2 * self.count_noise) ** -2) ** -0.5)


class _CountingClipper(ClippingAggregator):
    """Clips like ``ClippingAggregator`` and keeps the count adaptive clipping needs: it cannot
    take partial aggregates, whose clients' norms it has not seen."""

    def __init__(self, inner: Aggregator, global_params: Params, max_norm: float) -> None:
        super().__init__(inner, global_params, max_norm)
        self.mergeable = False

    def merge(self, partial: Partial) -> None:
        raise ConfigError("dp-fedavg with clip=adaptive needs every client update at the coordinator (no combiners)")

    @property
    def within(self) -> int:
        """Updates whose norm was within the clip norm (not scaled)."""
        return self.inner.count - self.clipped


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
        adaptive: AdaptiveClip | None = None,
    ) -> None:
        if not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.clip = clip  # the current clip norm (moves each round with adaptive clipping)
        self.initial_clip = clip
        self.noise = noise
        self.delta = delta
        self.sample_rate = sample_rate
        self.adaptive = adaptive
        self._update_noise = noise if adaptive is None else adaptive.update_noise(noise)
        self.seed = secrets.randbits(128) if seed is None else seed
        if not 0 <= self.seed < 1 << (32 * _SEED_WORDS):
            raise ValueError(f"seed must be in [0, 2**128), got {seed}")
        self.accountant = PrivacyAccountant(noise, sample_rate)
        self.rounds = 0  # rounds released so far (empty draws included): all the accountant needs
        self._open: _CountingClipper | None = None  # adaptive: the latest round's aggregator

    @property
    def mergeable(self) -> bool:
        return self.adaptive is None

    def aggregator(self, global_params: Params) -> Aggregator:
        mean = WeightedMeanAggregator(float64_template(global_params), weighted=False)
        if self.adaptive is None:
            return ClippingAggregator(mean, global_params, self.clip)
        self._open = _CountingClipper(mean, global_params, self.clip)
        return self._open

    def client_sampling(self) -> ClientSampling:
        """The accountant assumes Poisson sampling at ``sample_rate`` (1: every client, every round),
        drawn from the noise seed: who took part is as secret as the noise (``strategies.sampling``)."""
        return ClientSampling(POISSON, self.sample_rate, secret=self.seed)

    def apply(self, global_params: Params, aggregate: AggregateResult, round: int) -> Params:
        n = aggregate.count
        std = self._update_noise * self.clip / n
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
        if self.adaptive is not None:
            self._adapt_clip(n, round)
        self._count_round()
        return Params(out)

    def _adapt_clip(self, n: int, round: int) -> None:
        a = self.adaptive
        assert a is not None
        if self._open is None:
            raise RuntimeError("dp-fedavg: apply without the aggregator this strategy made for the round")
        centred = self._open.within - 0.5 * n  # sum over clients of (1[norm <= C] - 1/2)
        if self.noise > 0 and a.count_noise > 0:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(round, 1)))
            centred += float(rng.normal(0.0, a.count_noise))
        within = centred / n + 0.5  # noisy share of updates within the clip norm
        self.clip *= math.exp(-a.clip_lr * (within - a.target_quantile))
        self._open = None

    def empty_round(self, round: int) -> None:
        """A Poisson draw with nobody in it still counts as a round for the accountant."""
        self._open = None
        self._count_round()

    def _count_round(self) -> None:
        self.rounds += 1
        # Computed here, in the aggregation step, so that ``round_metrics`` finds it cached.
        self.accountant.spent(self.rounds, self.delta)

    def privacy_spent(self, delta: float | None = None) -> float:
        """Epsilon spent so far (the tighter of RDP and PLD), for ``delta`` (the configured one by default)."""
        return self.accountant.epsilon(self.rounds, self.delta if delta is None else delta)

    def privacy_report(self, delta: float | None = None) -> PrivacySpent:
        """Both accountants' epsilons so far, for ``delta`` (the configured one by default)."""
        return self.accountant.spent(self.rounds, self.delta if delta is None else delta)

    def round_metrics(self) -> dict[str, float]:
        """``epsilon`` (cumulative, the tighter bound), ``epsilon_rdp`` and ``epsilon_pld`` (both
        cumulative), ``epsilon_round`` (one round alone, tighter bound), ``delta``; with adaptive
        clipping also ``clip``, the clip norm for the next round."""
        total = self.privacy_report()
        one = self.accountant.spent(1, self.delta)
        out = {
            "epsilon": total.epsilon,
            "epsilon_rdp": total.epsilon_rdp,
            "epsilon_pld": total.epsilon_pld,
            "epsilon_round": one.epsilon,
            "delta": self.delta,
        }
        if self.adaptive is not None:
            out["clip_norm"] = self.clip
        return out

    def state(self) -> dict[str, np.ndarray]:
        words = [(self.seed >> (32 * i)) & 0xFFFFFFFF for i in range(_SEED_WORDS)]
        out: dict[str, np.ndarray] = {
            "dp/rounds": np.array(self.rounds, np.int64),
            "dp/seed": np.array(words, np.uint32),
        }
        if self.adaptive is not None:
            out["dp/clip"] = np.array(self.clip, np.float64)
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        unexpected = set(state) - {"dp/rounds", "dp/seed", "dp/clip"}
        if unexpected:
            raise ConfigError(f"{self.name}: unexpected state entry {min(unexpected)!r}; saved by another strategy?")
        if "dp/rounds" in state:
            self.rounds = int(state["dp/rounds"])
        if "dp/seed" in state:
            self.seed = sum(int(w) << (32 * i) for i, w in enumerate(np.asarray(state["dp/seed"]).tolist()))
        if "dp/clip" in state and self.adaptive is not None:
            self.clip = float(state["dp/clip"])

    def config(self) -> dict[str, object]:
        # The seed is left out on purpose: configs get logged and shown, and the seed is the noise.
        cfg: dict[str, object] = {
            "name": self.name,
            "clip": self.initial_clip,
            "noise": self.noise,
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "sampling": POISSON,
        }
        if self.adaptive is not None:
            cfg["adaptive_clip"] = {
                "target_quantile": self.adaptive.target_quantile,
                "clip_lr": self.adaptive.clip_lr,
                "count_noise": self.adaptive.count_noise,
            }
        return cfg
