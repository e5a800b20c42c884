"""The values user code receives and returns: ``Context``, ``TrainResult``, ``EvalResult``.

``weights`` everywhere is a ``Weights`` (``fedhive.core.params.Params``): an ordered mapping of
tensor name -> numpy array. The arrays handed to ``train`` and ``evaluate`` are read-only views of
the global model, which other clients of the same process share: copy before changing one in
place (``w.copy()``; ``fedhive.torch.set_weights`` copies into the module's own tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import AppError

Weights = Params

# What ``ctx.progress`` forwards to the node: the runtime turns it into a heartbeat (epoch, loss).
ProgressSink = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What ``train`` returns: the new local weights, how many examples they were trained on (the
    client's weight in aggregation) and open metrics (any names, finite floats)."""

    weights: Mapping[str, np.ndarray]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """What ``evaluate`` returns: how many examples were evaluated and open metrics."""

    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


class NodeConfig(Mapping[str, Any]):
    """The site operator's own settings (``--node key=value``, the client's config file; in
    simulation ``partition_id`` and ``num_partitions``). Never set by the coordinator.

    A missing key is an ``AppError`` that names it and says how a site sets it, instead of a bare
    ``KeyError`` from deep inside the user's data loader."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise MissingNodeSetting(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"NodeConfig({self._values!r})"


class MissingNodeSetting(AppError, KeyError):
    """``ctx.node[key]`` for a key the site did not set."""

    def __init__(self, key: str) -> None:
        super().__init__(f"ctx.node has no {key!r}: the site sets it with --node {key}=VALUE")
        self.key = key

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Context:
    """What a client knows about itself: its id, its site settings and its persistent state.

    - ``client_id``: this client's id in the federation.
    - ``node``: the site's settings (``NodeConfig``), read-only.
    - ``state``: a dict of numpy arrays, numbers, strings and booleans that lasts across rounds and,
      for a client process, across restarts (saved in the client's state directory after every call
      that changed it). A personalised layer kept here never leaves the site.
    - ``progress(epoch, epochs, **metrics)``: report local progress (shown live as heartbeats).
    """

    __slots__ = ("_progress", "client_id", "node", "state")

    def __init__(
        self,
        client_id: str,
        node: Mapping[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.node = node if isinstance(node, NodeConfig) else NodeConfig(node)
        self.state: dict[str, Any] = state if state is not None else {}
        self._progress: ProgressSink | None = None

    def progress(self, epoch: int, epochs: int, **metrics: float) -> None:
        if self._progress is not None:
            self._progress(epoch, epochs, metrics)

    def __repr__(self) -> str:
        return f"Context(client_id={self.client_id!r}, node={dict(self.node)!r}, state keys={sorted(self.state)})"


def checked_metrics(metrics: object, *, where: str) -> dict[str, float]:
    """Metrics as a plain ``{name: float}``; an ``AppError`` naming the first one that is not a
    finite number (they go into CSV columns, MLflow and aggregates, where NaN spreads silently)."""
    if metrics is None:
        return {}
    if type(metrics) is not dict and not isinstance(metrics, Mapping):  # a dict skips the ABC check
        raise AppError(f"{where}: metrics must be a mapping of name -> number, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        # The common case first, cheaply: it runs for every client of every round.
        if type(value) is float and type(name) is str and 0 < len(name) <= 64 and math.isfinite(value):
            out[name] = value
            continue
        if not isinstance(name, str) or not name or len(name) > 64:
            raise AppError(f"{where}: metric names must be strings of 1 to 64 characters, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise AppError(f"{where}: metric {name!r} must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise AppError(f"{where}: metric {name!r} is {number}, not a finite number")
        out[name] = number
    return out


def checked_count(value: object, *, where: str) -> int:
    if type(value) is int and value >= 0:  # the common case, cheaply: every client, every round
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise AppError(f"{where}: num_examples must be a whole number >= 0, got {value!r}")
    return int(value)
