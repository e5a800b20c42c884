"""A Flower strategy object -> the fedhive strategy spec with the same rule and settings.

Both Flower's strategies (``flwr.serverapp.strategy``) and its legacy ones
(``flwr.server.strategy``) are read by class name and public attributes. What has no fedhive
counterpart (another class, a custom metric aggregation, a central ``evaluate_fn``) is named in
``StrategyMapping.unmapped``, which the CLI prints in one line; the run then uses ``fedavg`` for an
unknown class, so it still runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SPEC = "fedavg"


@dataclass(frozen=True)
class StrategyMapping:
    spec: str  # a fedhive strategy spec (fedhive.strategies.registry)
    fraction: float | None  # share of clients trained each round, where the strategy says
    evaluates: bool  # whether clients evaluate the global model (fraction_evaluate > 0)
    unmapped: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        return f"Flower strategy settings fedhive does not map: {'; '.join(self.unmapped)}" if self.unmapped else None


def _opts(strategy: Any, *pairs: tuple[str, str]) -> str:
    return ",".join(f"{ours}={getattr(strategy, theirs)!r}" for ours, theirs in pairs)


def _krum(s: Any) -> str:
    f = getattr(s, "num_malicious_nodes", getattr(s, "num_malicious_clients", 0))
    keep = getattr(s, "num_nodes_to_select", getattr(s, "num_clients_to_keep", 0)) or 0
    if type(s).__name__ == "Krum" and keep <= 1:
        return f"krum:f={f}"
    return f"multi-krum:f={f},m={keep}" if keep > 0 else f"multi-krum:f={f}"


_ADAPTIVE = (("lr", "eta"), ("beta1", "beta_1"), ("beta2", "beta_2"), ("tau", "tau"))

# Class name -> spec builder. The new and the legacy strategies share names and attribute names
# except where _krum reads both.
_TABLE: dict[str, Callable[[Any], str]] = {
    "FedAvg": lambda s: "fedavg",
    "FedAvgM": lambda s: "fedavgm:" + _opts(s, ("lr", "server_learning_rate"), ("momentum", "server_momentum")),
    "FedProx": lambda s: "fedprox:" + _opts(s, ("mu", "proximal_mu")),
    "FedAdam": lambda s: "fedadam:" + _opts(s, *_ADAPTIVE),
    "FedYogi": lambda s: "fedyogi:" + _opts(s, *_ADAPTIVE),
    "FedAdagrad": lambda s: "fedadagrad:" + _opts(s, ("lr", "eta"), ("beta1", "beta_1"), ("tau", "tau")),
    "FedMedian": lambda s: "fedmedian",
    "FedTrimmedAvg": lambda s: "trimmed-mean:" + _opts(s, ("beta", "beta")),
    "Krum": _krum,
    "MultiKrum": _krum,
}
_DP_SERVER = "DifferentialPrivacyServerSideFixedClipping"


def map_strategy(strategy: Any) -> StrategyMapping:
    """The fedhive counterpart of ``strategy`` (None: Flower's default, FedAvg)."""
    if strategy is None:
        return StrategyMapping(DEFAULT_SPEC, None, True)
    unmapped: list[str] = []
    name = type(strategy).__name__
    spec = DEFAULT_SPEC
    if name == _DP_SERVER:
        inner = type(strategy.strategy).__name__
        if inner != "FedAvg":
            unmapped.append(f"{name} around {inner} (fedhive's dp-fedavg clips and noises a FedAvg)")
        spec = f"dp-fedavg:clip={strategy.clipping_norm!r},noise={strategy.noise_multiplier!r}"
        strategy = strategy.strategy
    elif name in _TABLE:
        spec = _TABLE[name](strategy)
    else:
        unmapped.append(f"{name} (no fedhive counterpart; running {DEFAULT_SPEC}, choose one with --strategy)")
    for attr, what in (
        ("evaluate_fn", "evaluate_fn (central evaluation)"),
        ("fit_metrics_aggregation_fn", "fit_metrics_aggregation_fn (fedhive averages every metric)"),
        ("evaluate_metrics_aggregation_fn", "evaluate_metrics_aggregation_fn (fedhive averages every metric)"),
    ):
        if getattr(strategy, attr, None) is not None:
            unmapped.append(what)
    for attr in ("train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"):
        fn = getattr(strategy, attr, None)
        if fn is not None and getattr(fn, "__name__", "") != "aggregate_metricrecords":
            unmapped.append(f"{attr} (fedhive averages every metric, weighted by examples)")
    fraction = getattr(strategy, "fraction_train", getattr(strategy, "fraction_fit", None))
    evaluates = float(getattr(strategy, "fraction_evaluate", 1.0)) > 0
    return StrategyMapping(spec, None if fraction is None else float(fraction), evaluates, unmapped)
