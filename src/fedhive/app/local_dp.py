"""Client-side (local) differential privacy: each site clips and noises its own update before it
leaves, so not even the coordinator sees it in the clear.

A site whose session sets ``local_dp_clip`` trains as usual, then sends
``global + clip(update - global, C) + N(0, (sigma * C)^2)`` instead of its update: the L2 norm of
its change to the global model is scaled down to at most ``C`` (``local_dp_clip``) and every
coordinate gets Gaussian noise of standard deviation ``sigma * C`` (``local_dp_noise``). Each round
is then a Gaussian mechanism of sensitivity ``C`` on whatever the site's data could change, so what
the site releases over ``k`` rounds is ``(epsilon, delta)``-DP for the site's whole data set (a
user-level guarantee that does not trust the server), with ``epsilon`` the exact figure for ``k``
compositions of the Gaussian mechanism (``gaussian_epsilon``). The site reports it as the train
metric ``local_dp_epsilon`` after every round it takes part in.

The noise comes from the operating system's entropy, never from the session's seed: the coordinator
sends that seed, and noise it can regenerate protects nothing. So runs with local DP are not
bitwise reproducible, by design. Compare central DP (``dp-fedavg``: the coordinator noises the sum,
far less noise for the same epsilon, but it sees each update) and secure aggregation (the
coordinator sees only the sum, without noise); local DP composes with both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fedhive.app.contract import EvalResult
from fedhive.app.learner import FitConfig, FitResult, ProgressFn, Trainer
from fedhive.core.params import Params


class LocalDP:
    """A ``Trainer`` whose updates leave clipped and noised (see the module docstring); anything
    else (evaluation, the initial model, the parameter spec) is the wrapped trainer's own."""

    def __init__(
        self,
        inner: Trainer,
        *,
        clip: float,
        noise: float,
        delta: float,
        rng: Callable[[], np.random.Generator] = np.random.default_rng,
    ) -> None:
        self.inner = inner
        self.clip = clip
        self.noise = noise
        self.delta = delta
        self._rng = rng  # a fresh generator from the OS's entropy per round (see the module docstring)
        self.rounds_released = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # param_spec, state hooks: the wrapped trainer's

    def initial_params(self, seed: int) -> Params:
        return self.inner.initial_params(seed)

    def evaluate(self, params: Params) -> EvalResult:
        return self.inner.evaluate(params)

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        result = self.inner.fit(params, config, progress)
        released = privatise(params, result.params, self.clip, self.noise, self._rng())
        self.rounds_released += 1
        metrics = dict(result.metrics)
        metrics["local_dp_epsilon"] = gaussian_epsilon(self.noise, self.rounds_released, self.delta)
        return FitResult(released, result.num_examples, metrics)


def privatise(base: Params, trained: Params, clip: float, noise: float, rng: np.random.Generator) -> Params:
    """``base + clip(trained - base) + N(0, (noise * clip)^2)``, each tensor in its own dtype.
    The change is computed and clipped in float64, so that the norm is exact whatever the dtype."""
    deltas = {name: trained[name].astype(np.float64) - base[name] for name in base}
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    sigma = noise * clip
    out: dict[str, np.ndarray] = {}
    for name, d in deltas.items():
        d *= scale
        if sigma > 0:
            d += rng.normal(0.0, sigma, size=d.shape)
        d += base[name]
        out[name] = d.astype(base[name].dtype, copy=False)
    return Params(out)


def gaussian_epsilon(noise: float, rounds: int, delta: float) -> float:
    """The smallest ``epsilon`` for which ``rounds`` releases by the Gaussian mechanism with noise
    multiplier ``noise`` (standard deviation over sensitivity) are ``(epsilon, delta)``-DP.

    Exact: the ``rounds``-fold composition is ``mu``-GDP with ``mu = sqrt(rounds) / noise`` (Dong,
    Roth and Su 2019), and ``delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu -
    mu/2)`` (Balle and Wang 2018), solved for ``epsilon`` by bisection. ``inf`` without noise."""
    if rounds <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    mu = math.sqrt(rounds) / noise

    def delta_of(eps: float) -> float:
        return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)

    if delta_of(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while delta_of(high) > delta:
        if high >= _MAX_EPSILON:  # e^epsilon would overflow: no meaningful guarantee
            return math.inf
        low, high = high, min(2 * high, _MAX_EPSILON)
    for _ in range(100):  # delta_of falls as epsilon grows: halve the bracket down to float precision
        mid = (low + high) / 2
        if delta_of(mid) > delta:
            low = mid
        else:
            high = mid
    return high


_MAX_EPSILON = 700.0


def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2))
