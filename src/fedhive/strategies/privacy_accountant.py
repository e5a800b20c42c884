"""Rényi-DP accounting for the (sampled) Gaussian mechanism, converted to (epsilon, delta).

One round of DP-FedAvg releases the clipped mean plus Gaussian noise of ``z`` times the
sensitivity: RDP of order ``a`` is ``a / (2 z^2)`` (Mironov 2017). When each client takes part
with probability ``q < 1`` independently (Poisson sampling), the sampled Gaussian mechanism's RDP
at integer orders is ``log(A_a) / (a - 1)`` with
``A_a = sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 z^2))`` (Mironov, Talwar, Zhang 2019),
evaluated in log space. RDP composes by addition over rounds; the conversion is the classical
``eps = min_a rdp(a) + log(1/delta) / (a - 1)`` (Mironov 2017, Proposition 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5,
    *(float(a) for a in range(5, 64)),
    128.0, 256.0, 512.0,
)  # fmt: skip


def gaussian_rdp(noise_multiplier: float, order: float) -> float:
    """RDP of one Gaussian mechanism with noise std ``noise_multiplier`` x sensitivity."""
    if noise_multiplier == 0:
        return math.inf
    return order / (2.0 * noise_multiplier**2)


def sampled_gaussian_rdp(sample_rate: float, noise_multiplier: float, order: int) -> float:
    """RDP at integer ``order`` >= 2 of the Gaussian mechanism on a Poisson sample of rate q."""
    q, z = sample_rate, noise_multiplier
    if q == 0:
        return 0.0
    if q == 1.0 or z == 0:
        return gaussian_rdp(z, order)
    log_q, log_1q = math.log(q), math.log1p(-q)
    log_a = -math.inf
    for k in range(order + 1):
        log_binom = math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
        term = log_binom + k * log_q + (order - k) * log_1q + (k * k - k) / (2.0 * z * z)
        log_a = float(np.logaddexp(log_a, term))
    return log_a / (order - 1)


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> tuple[float, float]:
    """(epsilon, the order attaining it) for the given ``delta``."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    best, best_order = math.inf, float(orders[0])
    for a, r in zip(orders, rdp, strict=True):
        eps = r + math.log(1.0 / delta) / (a - 1.0)
        if eps < best:
            best, best_order = eps, float(a)
    return best, best_order


class RdpAccountant:
    """Privacy spent after ``rounds`` identical rounds of the (sampled) Gaussian mechanism.

    Stateless apart from its parameters: the number of rounds is the only thing a checkpoint needs.
    """

    def __init__(
        self, noise_multiplier: float, sample_rate: float = 1.0, orders: Sequence[float] = DEFAULT_ORDERS
    ) -> None:
        if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample rate must be in [0, 1], got {sample_rate}")
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        if sample_rate < 1:  # the sampled bound above holds at integer orders only
            orders = [a for a in orders if float(a).is_integer() and a >= 2]
        if not orders:
            raise ValueError("no usable RDP orders")
        self.orders = tuple(float(a) for a in orders)
        self._per_round = np.array(
            [
                gaussian_rdp(noise_multiplier, a)
                if sample_rate == 1
                else sampled_gaussian_rdp(sample_rate, noise_multiplier, int(a))
                for a in self.orders
            ]
        )

    def rdp(self, rounds: int) -> np.ndarray:
        """Total RDP at each of ``self.orders`` after ``rounds`` rounds (composition adds)."""
        return np.asarray(self._per_round * rounds) if rounds else np.zeros(len(self.orders))

    def epsilon(self, rounds: int, delta: float) -> float:
        """Epsilon spent after ``rounds`` rounds for the given ``delta`` (0 before any round)."""
        if rounds == 0:
            return 0.0
        return rdp_to_epsilon(self.orders, self.rdp(rounds).tolist(), delta)[0]
