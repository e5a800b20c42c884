"""A Flower ServerApp's strategy -> fedhive's, by name and settings; Flower's version range."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (docs/flower.md: .venv-flower)")

from flwr.server import strategy as legacy
from flwr.serverapp import strategy as message

from fedhive.compat.flower import check_version
from fedhive.compat.flower.strategy_map import map_strategy
from fedhive.errors import ConfigError
from fedhive.strategies.registry import parse_strategy


@pytest.mark.parametrize(
    ("strategy", "spec"),
    [
        (message.FedAvg(), "fedavg"),
        (message.FedAvgM(server_learning_rate=0.5, server_momentum=0.8), "fedavgm:lr=0.5,momentum=0.8"),
        (message.FedProx(proximal_mu=0.1), "fedprox:mu=0.1"),
        (
            message.FedAdam(eta=0.01, beta_1=0.9, beta_2=0.99, tau=0.001),
            "fedadam:lr=0.01,beta1=0.9,beta2=0.99,tau=0.001",
        ),
        (message.FedYogi(eta=0.02), "fedyogi:lr=0.02,beta1=0.9,beta2=0.99,tau=0.001"),
        (message.FedAdagrad(eta=0.1, tau=0.001), "fedadagrad:lr=0.1,beta1=0.0,tau=0.001"),
        (message.FedMedian(), "fedmedian"),
        (message.FedTrimmedAvg(beta=0.2), "trimmed-mean:beta=0.2"),
        (message.Krum(num_malicious_nodes=1), "krum:f=1"),
        (message.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3), "multi-krum:f=1,m=3"),
        (
            message.DifferentialPrivacyServerSideFixedClipping(message.FedAvg(), 1.0, 2.0, 5),
            "dp-fedavg:clip=2.0,noise=1.0",
        ),
        (legacy.FedAvg(), "fedavg"),
        (legacy.FedProx(proximal_mu=0.3), "fedprox:mu=0.3"),
        (legacy.FedTrimmedAvg(beta=0.1), "trimmed-mean:beta=0.1"),
        (legacy.Krum(num_malicious_clients=2, num_clients_to_keep=3), "multi-krum:f=2,m=3"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__module__.split(".")[1] + "." + type(v).__name__,
)
def test_flower_strategies_map_to_fedhive_specs_that_parse(strategy: object, spec: str) -> None:
    mapping = map_strategy(strategy)
    assert mapping.spec == spec and mapping.unmapped == []
    parse_strategy(mapping.spec)  # a spec fedhive accepts


def test_what_cannot_be_mapped_is_named_in_one_line() -> None:
    mapping = map_strategy(message.Bulyan(num_malicious_nodes=0, evaluate_metrics_aggr_fn=lambda r, k: None))
    assert mapping.spec == "fedavg"
    note = mapping.note()
    assert note is not None and "\n" not in note
    assert "Bulyan (no fedhive counterpart" in note and "evaluate_metrics_aggr_fn" in note


def test_fraction_and_evaluation_come_from_the_strategy() -> None:
    mapping = map_strategy(message.FedAvg(fraction_train=0.5, fraction_evaluate=0.0))
    assert mapping.fraction == 0.5 and mapping.evaluates is False
    assert map_strategy(legacy.FedAvg(fraction_fit=0.3)).fraction == 0.3


@pytest.mark.parametrize("version", ["1.40.0", "1.42.0", "2.0.0", "nightly"])
def test_a_flower_version_outside_the_supported_range_is_one_line(version: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_version(version)
    assert "\n" not in str(caught.value) and "flwr" in str(caught.value)


def test_the_installed_flower_is_supported() -> None:
    import flwr

    check_version(flwr.__version__)
