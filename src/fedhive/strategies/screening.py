"""What one client cannot do to a round: outweigh the others, or blow the model up.

A client reports its own example count, which weighs its update in every weighted mean; a count
of 10^9 made a sign-flipped model the whole of FedAvg's average. ``capped_examples`` bounds that
weight by what the session knows of the client (the count it registered with, or a session-wide
ceiling).

An update can be finite and still absurd (every value 3e38): ``UpdateScreen`` refuses, before it
reaches an aggregator, an update that is not finite, that lies farther from the round's global
model than the session's ``max_update_norm``, or farther than ``max_model_jump`` times the model's
own scale (its L2 norm, and at least the square root of its number of values: an RMS of 1, so
that a model starting at zeros can still move). Every aggregator here returns a weighted mean, a
coordinate-wise median or trimmed mean, or a mean of selected updates: a point within the
screened updates' reach, so a round of screened updates cannot produce an exploded model either.
``refusal`` also judges the new global model itself, the last line against a strategy's own
arithmetic (a server optimiser's step). The screen streams: one pass over each update through a
small float64 scratch, no copy of the model, memory independent of the number of clients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from fedhive.core.params import Params

_CHUNK = 1 << 15  # elements per step: 256 KiB of float64 scratch, stays in cache
_DOT_CHUNK = 1 << 15  # values per BLAS dot: measured single-threaded here (3.5 us for 32 Ki float32)


def capped_examples(reported: int, registered: int, *, factor: float | None, ceiling: int | None) -> int:
    """The weight an update of ``reported`` examples gets: at most ``factor`` times the count the
    client ``registered`` with (when it gave one) and at most ``ceiling``, at least 1."""
    cap = reported
    if factor is not None and registered > 0:
        cap = min(cap, max(1, math.floor(factor * registered)))
    if ceiling is not None:
        cap = min(cap, ceiling)
    return max(1, cap)


class UpdateScreen:
    """Refuses non-finite and exploded updates for one round, whose global model is ``base``.

    Most updates are accepted from one cheap pass over the update alone (float32 sums of squares
    of cache-sized chunks): an update within ``bound - |base|`` of the origin lies within ``bound`` of ``base``
    (the triangle inequality). Only one that this does not clear (a tight ``max_update_norm``, a
    huge or non-finite update) costs the exact float64 distance, a pass over update and model.
    """

    def __init__(
        self, base: Params, *, max_update_norm: float | None = None, max_model_jump: float | None = None
    ) -> None:
        self._base = {n: a.reshape(-1) for n, a in base.items() if a.dtype.kind == "f"}
        # Every ``refusal`` reads all of these: a NaN or Inf in any makes the update refused, so a
        # caller need not look for them again when there are no complex tensors besides.
        self.checks_finite = all(a.dtype.kind != "c" for a in base.values())
        most = min(_CHUNK, max((a.size for a in self._base.values()), default=1))
        self._scratch = np.empty(most, np.float64)
        self.max_update_norm = max_update_norm
        self.max_model_jump = max_model_jump
        self.base_norm = _norm_of(base, lambda: math.sqrt(self._squared_norm(self._base)))
        # The model's own scale: its L2 norm, and at least an RMS of 1 per value.
        self.scale = max(self.base_norm, math.sqrt(sum(a.size for a in self._base.values())))
        self.bound = math.inf  # the farthest an update may lie from ``base``
        if max_update_norm is not None:
            self.bound = max_update_norm
        if max_model_jump is not None:
            self.bound = min(self.bound, max_model_jump * self.scale)

    def distance(self, params: Mapping[str, np.ndarray]) -> float:
        """L2 distance of ``params`` from the round's global model over the float tensors, in
        float64 (NaN or Inf if ``params`` holds one)."""
        return math.sqrt(self._squared_distance(params))

    def refusal(self, params: Mapping[str, np.ndarray]) -> tuple[float, str | None]:
        """(how far ``params`` may lie from the global model, why it must not be used or None).
        The first is the exact distance when it was needed, else an upper bound of it."""
        if math.isfinite(self.bound):
            # A margin far above float32's rounding of a chunk's sum (1e-4 at most), far below
            # any bound's meaning.
            reach = math.sqrt(self._squared_norm32(params)) * (1 + 1e-3) + self.base_norm
            if reach <= self.bound:  # False for NaN and Inf too: those take the exact path
                return reach, None
        d = self.distance(params)
        if not math.isfinite(d):
            return d, f"not finite: {self._non_finite(params)}"
        if self.max_update_norm is not None and d > self.max_update_norm:
            return d, f"lies {d:.4g} from the global model, over max_update_norm={self.max_update_norm:g}"
        if self.max_model_jump is not None and d > self.bound:
            return d, (
                f"exploded: lies {d:.4g} from the global model, over max_model_jump={self.max_model_jump:g} "
                f"times the model's scale {self.scale:.4g}"
            )
        return d, None

    def refused(self, params: Mapping[str, np.ndarray]) -> str | None:
        """Why ``params`` must not be used, or None: ``refusal`` for a caller that needs no
        distance (a host, a worker). Without a bound (``max_model_jump`` and ``max_update_norm``
        off) only finiteness decides, and a finite float32 sum of squares proves it at a fraction
        of the exact distance's cost; an overflowing one (huge values, or NaN or Inf) takes
        ``refusal``, which says which."""
        if self.bound == math.inf and math.isfinite(self._squared_norm32(params)):
            return None
        return self.refusal(params)[1]

    def model_refusal(self, params: Mapping[str, np.ndarray]) -> str | None:
        """Why a new global model (an aggregate, or a strategy's step from it) must not be used,
        or None: not finite, or exploded. ``max_update_norm`` bounds clients, not the server's step."""
        d = self.distance(params)
        if not math.isfinite(d):
            return "not finite (NaN or Inf)"
        if self.max_model_jump is not None and d > self.max_model_jump * self.scale:
            return (
                f"exploded: it lies {d:.4g} from the current global model, over max_model_jump="
                f"{self.max_model_jump:g} times the model's scale {self.scale:.4g}"
            )
        return None

    def _non_finite(self, params: Mapping[str, np.ndarray]) -> str:
        """Which tensor holds a NaN or Inf (or which difference from the model overflows)."""
        for name in self._base:
            if not np.isfinite(params[name]).all():
                return f"tensor {name!r} holds NaN or infinite values"
        return "its distance from the global model overflows"

    def _squared_distance(self, params: Mapping[str, np.ndarray]) -> float:
        total = 0.0
        for name, g in self._base.items():
            x = params[name].reshape(-1)
            for start in range(0, g.size, _CHUNK):
                stop = min(start + _CHUNK, g.size)
                s = self._scratch[: stop - start]
                # In float64: (3e38 - -3e38) and its square overflow float32, not float64.
                np.subtract(x[start:stop], g[start:stop], out=s, dtype=np.float64)
                total += _sum_of_squares(s)
        return total

    def _squared_norm(self, tensors: Mapping[str, np.ndarray]) -> float:
        total = 0.0
        for a in tensors.values():
            for start in range(0, a.size, _CHUNK):
                s = self._scratch[: min(_CHUNK, a.size - start)]
                s[...] = a[start : start + s.size]
                total += _sum_of_squares(s)
        return total

    def _squared_norm32(self, params: Mapping[str, np.ndarray]) -> float:
        """|params|^2 over the float tensors: each chunk's sum of squares in the tensor's own
        precision (float32 for most models), the chunks' sums in float64. Inf if a chunk overflows:
        the caller then measures exactly. This runs once per update on every node that folds
        updates, so it is kept to one vector dot per chunk: chunks of at most ``_DOT_CHUNK`` values
        stay below the size at which BLAS would start threads (which spin on a busy machine).
        No ``np.errstate``: a dot is no ufunc, and numpy raises no floating-point warning for one
        that overflows or meets a NaN (it returns inf or nan, which the caller reads)."""
        total = 0.0
        for name in self._base:
            x = params[name]
            if x.itemsize < 4:  # float16: square in float32, as the exact path would
                x = x.astype(np.float32)
            if x.size <= _DOT_CHUNK:  # most tensors: one call, no slicing
                total += float(np.vdot(x, x))
                continue
            x = x.reshape(-1)
            for start in range(0, x.size, _DOT_CHUNK):
                part = x[start : start + _DOT_CHUNK]
                total += float(np.vdot(part, part))
        return total


_last_norm: tuple[Mapping[str, np.ndarray], float] | None = None  # (a round's model, its norm)


def _norm_of(base: Mapping[str, np.ndarray], compute: Callable[[], float]) -> float:
    """The norm of ``base``, kept for the last model asked for (by identity): the coordinator and
    the client hosts of one process screen the same round's model, a pass over it each otherwise."""
    global _last_norm
    last = _last_norm
    if last is not None and last[0] is base:
        return last[1]
    norm = compute()
    _last_norm = (base, norm)
    return norm


def _sum_of_squares(s: np.ndarray) -> float:
    """sum(s**2), squaring ``s`` in place. Not ``s @ s``: BLAS threads spin on a busy machine,
    which made a dot product of 32 Ki values take milliseconds instead of microseconds."""
    np.square(s, out=s)
    return float(s.sum())
