"""Privacy accounting for DP-FedAvg with Google's ``dp-accounting`` library.

One round of DP-FedAvg releases the clipped sum plus Gaussian noise of ``z`` times the sensitivity
(the clip norm), on the clients that took part. With ``sample_rate = q < 1`` each client is assumed
to take part independently with probability ``q`` (Poisson sampling, see ``strategies/sampling.py``),
so one round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``; with ``q = 1`` (every client in
every round) it is the plain ``GaussianDpEvent(z)``. ``rounds`` identical rounds are that event
``SelfComposedDpEvent``-composed ``rounds`` times.

Two accountants bound the (epsilon, delta) of that composition:

- RDP (``dp_accounting.rdp.RdpAccountant``, Mironov 2017; Mironov, Talwar, Zhang 2019), with the
  library's default orders (fractional ones included) and its tight RDP-to-DP conversion;
- PLD (``dp_accounting.pld.PLDAccountant``, privacy loss distributions, Koskela et al. 2020;
  Doroshenko et al. 2022), with the library's default discretisation (pessimistic: it rounds the
  privacy loss up, so its epsilon is an upper bound).

Both are valid upper bounds, so the smaller one is reported as ``epsilon``; both are kept in
``PrivacySpent`` (and in DP-FedAvg's round metrics) so that a reader can see which one it was.
Adjacency is add-or-remove one client (the library's default, the one Poisson sampling needs).

The PLD accountant costs about a second per evaluation at typical settings (more when epsilon is in
the hundreds): results are cached per ``(rounds, delta)``, and DP-FedAvg computes them in ``apply``
(the aggregation step, off the coordinator's event loop) rather than in ``round_metrics``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # loaded on first use: dp_accounting and scipy.signal take 0.6 s and 60 MB to import,
    import dp_accounting  # which every fedhive process would pay for, DP or not

SAMPLING = "poisson"
"""How clients must be drawn for the accountant's bound to hold when ``sample_rate < 1``."""

Tightest = Literal["rdp", "pld", "none"]


@dataclass(frozen=True, slots=True)
class PrivacySpent:
    """(epsilon, delta) after ``rounds`` rounds, from both accountants."""

    rounds: int
    delta: float
    epsilon_rdp: float
    epsilon_pld: float
    rdp_order: float  # the RDP order attaining ``epsilon_rdp`` (nan before any round)

    @property
    def epsilon(self) -> float:
        """The reported epsilon: the tighter (smaller) of the two bounds."""
        return min(self.epsilon_rdp, self.epsilon_pld)

    @property
    def tightest(self) -> Tightest:
        """Which accountant gave ``epsilon`` (PLD on a tie; ``none`` before any round)."""
        if self.rounds == 0:
            return "none"
        return "rdp" if self.epsilon_rdp < self.epsilon_pld else "pld"


def dp_event(noise_multiplier: float, sample_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of ``rounds`` rounds of the (Poisson-sampled) Gaussian mechanism."""
    import dp_accounting

    one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        one = dp_accounting.PoissonSampledDpEvent(sample_rate, one)
    return dp_accounting.SelfComposedDpEvent(one, rounds)


class _QuietFractionalOrders(logging.Filter):
    """The RDP accountant logs a warning for each small fractional order whose series does not
    converge with sampling (it then leaves that order out, which is safe). One line per order per
    evaluation would flood a session's log, so those are dropped; other messages pass."""

    _pattern = re.compile(r"failed to converge")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._pattern.search(record.getMessage())


@contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    f = _QuietFractionalOrders()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


class PrivacyAccountant:
    """Privacy spent after ``rounds`` identical rounds of the (Poisson-sampled) Gaussian mechanism.

    Stateless apart from its parameters (and a cache): the number of rounds is the only thing a
    checkpoint needs.
    """

    sampling = SAMPLING

    def __init__(self, noise_multiplier: float, sample_rate: float = 1.0) -> None:
        if noise_multiplier < 0 or not math.isfinite(noise_multiplier):
            raise ValueError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample rate must be in [0, 1], got {sample_rate}")
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self._cache: dict[tuple[int, float], PrivacySpent] = {}

    def event(self, rounds: int) -> dp_accounting.DpEvent:
        return dp_event(self.noise_multiplier, self.sample_rate, rounds)

    def spent(self, rounds: int, delta: float) -> PrivacySpent:
        """Both bounds after ``rounds`` rounds for ``delta`` (epsilon 0 before any round)."""
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        key = (int(rounds), float(delta))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if rounds == 0 or self.sample_rate == 0:
            out = PrivacySpent(rounds, delta, 0.0, 0.0, math.nan)
        elif self.noise_multiplier == 0:
            out = PrivacySpent(rounds, delta, math.inf, math.inf, math.nan)
        else:
            from dp_accounting import pld, rdp

            event = self.event(rounds)
            with _quiet_absl():
                r = rdp.RdpAccountant()
                r.compose(event)
                eps_rdp, order = r.get_epsilon_and_optimal_order(delta)
            p = pld.PLDAccountant()
            p.compose(event)
            eps_pld = p.get_epsilon(delta)
            out = PrivacySpent(rounds, delta, float(eps_rdp), float(eps_pld), float(order))
        self._cache[key] = out
        return out

    def epsilon(self, rounds: int, delta: float) -> float:
        """The reported epsilon (the tighter bound) after ``rounds`` rounds."""
        return self.spent(rounds, delta).epsilon

    def epsilon_rdp(self, rounds: int, delta: float) -> float:
        return self.spent(rounds, delta).epsilon_rdp

    def epsilon_pld(self, rounds: int, delta: float) -> float:
        return self.spent(rounds, delta).epsilon_pld


RdpAccountant = PrivacyAccountant
"""The former name (the accountant is no longer RDP only); kept for callers that import it."""
