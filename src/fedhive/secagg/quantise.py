"""Fixed point for secure aggregation: masks cancel exactly only in integer arithmetic.

Each client's update is sent as its change from the global model (``delta``), clipped to
``[-clip, clip]`` per coordinate, scaled by ``2**frac_bits``, rounded to the nearest integer and
multiplied by the client's weight (its example count, as FedAvg weighs it): all in numpy
``uint64``, that is modulo ``2**64``. Two trailing elements carry the weight and the example count,
so the server learns their totals and nothing per client. Negative values wrap around (two's
complement); the sum is read back as ``int64``, which is exact while the true sum stays within
``int64``: ``total_weight * clip * 2**frac_bits < 2**63`` (checked when the sum is decoded).

Error bound (no coordinate clipped): each coordinate of each delta is off by at most
``2**-(frac_bits + 1)`` after rounding, and a weighted mean of values each off by at most ``e`` is
off by at most ``e``: the secure weighted mean differs from FedAvg's float64 mean by at most
``2**-(frac_bits + 1)`` per coordinate, before the cast to the model's dtype (``error_bound``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhive.core.params import Params, ParamSpec
from fedhive.errors import ConfigError, ProtocolError

TRAILER = 2  # weight, examples


@dataclass(frozen=True, slots=True)
class FixedPoint:
    clip: float = 4.0
    frac_bits: int = 28

    def __post_init__(self) -> None:
        if not 0 < self.clip <= 2.0**20:
            raise ConfigError(f"secagg_clip must be in (0, 2**20], got {self.clip}")
        if not 8 <= self.frac_bits <= 40:
            raise ConfigError(f"secagg_bits must be between 8 and 40, got {self.frac_bits}")
        if self.clip * self.scale >= 2.0**62:
            raise ConfigError(f"secagg_clip {self.clip} with {self.frac_bits} fraction bits overflows 64 bits")

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    @property
    def error_bound(self) -> float:
        """Per coordinate, the secure weighted mean's largest distance from the exact one."""
        return 0.5 / self.scale

    @property
    def max_total_weight(self) -> int:
        """The largest sum of weights whose weighted sum cannot leave ``int64``."""
        return int((2.0**63 - 1) // (self.clip * self.scale)) - 1

    def vector_length(self, spec: ParamSpec) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in spec.tensors) + TRAILER

    def encode(self, update: Params, base: Params, weight: int, examples: int) -> tuple[np.ndarray, int]:
        """The update as one ``uint64`` vector (see the module docstring) and how many of its
        coordinates were clipped (the client's own business: never sent)."""
        size = sum(arr.size for arr in base.values())
        delta = np.empty(size, np.float64)  # every tensor's change, in one buffer worked on in place
        start = 0
        for name, arr in base.items():
            stop = start + arr.size
            np.subtract(update[name].reshape(-1), arr.reshape(-1), out=delta[start:stop], dtype=np.float64)
            start = stop
        clipped = int(np.count_nonzero(delta > self.clip)) + int(np.count_nonzero(delta < -self.clip))
        np.clip(delta, -self.clip, self.clip, out=delta)
        delta *= self.scale
        np.rint(delta, out=delta)
        out = np.empty(size + TRAILER, np.int64)
        out[:size] = delta  # exact: |delta| <= clip * scale < 2**62
        vector = out.view(np.uint64)
        vector[:size] *= np.uint64(weight)  # wraps modulo 2**64, which is what the masks live in
        vector[size:] = (weight, examples)
        return vector, clipped

    def decode(self, total: np.ndarray, base: Params) -> tuple[Params, float, int]:
        """From the unmasked sum: (the weighted sums ``sum(w_i * x_i)`` in float64 as a FedAvg
        partial holds them, the total weight, the total examples)."""
        weight, examples = int(total[-2]), int(total[-1])
        if weight < 1:
            raise ProtocolError("the securely aggregated weight is zero: no update was summed")
        if weight > self.max_total_weight:
            raise ProtocolError(
                f"total weight {weight} may have overflowed 64-bit fixed point: lower secagg_bits or secagg_clip"
            )
        signed = total[:-TRAILER].view(np.int64)
        sums: dict[str, np.ndarray] = {}
        start = 0
        for name, arr in base.items():
            stop = start + arr.size
            mean_delta_sum = signed[start:stop].astype(np.float64) / self.scale  # sum of w_i * delta_i
            sums[name] = (mean_delta_sum + weight * arr.reshape(-1).astype(np.float64)).reshape(arr.shape)
            start = stop
        return Params(sums), float(weight), examples
