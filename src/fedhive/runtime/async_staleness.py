"""What staleness does to an update in an asynchronous session (``async_rounds``, docs/async.md): how
much it counts, how its change is moved onto the current model, and the command line's spelling of
the weighting."""

from __future__ import annotations

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import ConfigError


def staleness_weight(staleness: int, weighting: str, exponent: float) -> float:
    """How much an update trained ``staleness`` versions ago counts: 1 (constant), or FedBuff's
    polynomial ``1 / (1 + staleness) ** exponent``."""
    if weighting == "constant":
        return 1.0
    return float((1.0 + staleness) ** -exponent)


def shifted(current: Params, base: Params, update: Params, weight: float) -> Params:
    """``current + weight * (update - base)``: a stale update's change, moved onto the current model.
    Float tensors in float64, cast back; any other tensor (a counter) is the update's own."""
    out: dict[str, np.ndarray] = {}
    for name, now in current.items():
        if now.dtype.kind != "f":
            out[name] = update[name]
            continue
        change = np.subtract(update[name], base[name], dtype=np.float64)
        out[name] = (now + weight * change).astype(now.dtype, copy=False)
    return Params(out)


def staleness_settings(text: str | None) -> dict[str, object]:
    """The session fields of ``constant`` or ``polynomial[:EXPONENT]`` (a command-line option)."""
    if text is None:
        return {}
    name, _, exponent = text.partition(":")
    if name == "constant" and not exponent:
        return {"staleness_weighting": "constant"}
    try:
        if name == "polynomial":
            return {
                "staleness_weighting": "polynomial",
                **({"staleness_exponent": float(exponent)} if exponent else {}),
            }
    except ValueError:
        pass
    raise ConfigError(f"staleness weighting must be constant or polynomial[:EXPONENT], got {text!r}")
