"""Which sessions secure aggregation can serve, and its fixed point from a session's settings."""

from __future__ import annotations

from fedhive.errors import ConfigError
from fedhive.secagg.quantise import FixedPoint
from fedhive.strategies.base import Strategy
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.server_optimizers import ServerOptimizer

FEDAVG_FAMILY = "fedavg, fedprox, fedavgm, fedadam, fedyogi or fedadagrad"


def secure_weighting(strategy: Strategy) -> bool:
    """Whether clients weigh their updates by their example counts (else each counts once).

    Secure aggregation gives the server a weighted sum and nothing else, so only strategies that
    need no more than that can run on it: FedAvg and the server optimisers built on its mean. A
    median, Krum, a trimmed mean, server-side clipping or DP-FedAvg's per-client clipping need each
    client's update and are refused in one line.
    """
    if isinstance(strategy, FedAvg | ServerOptimizer):
        return strategy.weighted
    raise ConfigError(
        f"strategy {strategy.name!r} needs each client's update, which secure aggregation hides: use {FEDAVG_FAMILY}"
    )


def fixed_point(clip: float, frac_bits: int) -> FixedPoint:
    return FixedPoint(clip=clip, frac_bits=frac_bits)
