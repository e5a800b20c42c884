from __future__ import annotations

import pytest

from fedhive.errors import ConfigError
from fedhive.strategies.clipping import Clipped
from fedhive.strategies.dp_fedavg import DPFedAvg
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.fedprox import FedProx
from fedhive.strategies.krum import Krum
from fedhive.strategies.median import FedMedian, TrimmedMean
from fedhive.strategies.registry import parse_strategy, strategy_help, strategy_names
from fedhive.strategies.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi


def documented_forms() -> list[str]:
    forms = []
    for line in strategy_help().splitlines():
        form = line.split()[0].replace("SPEC", "fedavg").replace("NORM", "5.0").replace("=N", "=1")
        forms += [form.replace("[", "").replace("]", ""), form.split("[")[0]]
    return forms


def test_every_documented_form_parses() -> None:
    forms = documented_forms()
    assert len(forms) >= 2 * (len(strategy_names()) + 1)
    for form in forms:
        parse_strategy(form)


def test_every_strategy_is_in_the_help() -> None:
    text = strategy_help()
    for name in strategy_names():
        assert f"\n{name}" in f"\n{text}"


def test_fedavg_forms_still_work() -> None:
    for spec, weighted in (("fedavg", True), ("fedavg:unweighted", False), (" FedAvg:weighted ", True)):
        s = parse_strategy(spec)
        assert isinstance(s, FedAvg) and s.weighted is weighted


def test_options_reach_the_strategies() -> None:
    s = parse_strategy("fedadam:lr=0.1,beta1=0.8,beta2=0.95,tau=1e-4")
    assert isinstance(s, FedAdam) and (s.lr, s.beta1, s.beta2, s.tau) == (0.1, 0.8, 0.95, 1e-4)
    y = parse_strategy("fedyogi:tau=1e+3,unweighted")
    assert isinstance(y, FedYogi) and y.tau == 1000.0 and not y.weighted
    a = parse_strategy("fedadagrad")
    assert isinstance(a, FedAdagrad) and (a.lr, a.beta1, a.tau) == (0.01, 0.9, 1e-3)
    m = parse_strategy("fedavgm:lr=0.5,momentum=0")
    assert isinstance(m, FedAvgM) and (m.lr, m.momentum) == (0.5, 0.0)
    for spec in ("fedprox:0.2", "fedprox:mu=0.2"):
        assert parse_strategy(spec).client_config() == {"proximal_mu": 0.2}
    assert isinstance(parse_strategy("fedmedian"), FedMedian)
    t = parse_strategy("trimmed-mean:beta=0.3")
    assert isinstance(t, TrimmedMean) and t.beta == 0.3
    k = parse_strategy("krum:f=2")
    assert isinstance(k, Krum) and (k.f, k.m, k.name) == (2, 1, "krum")
    mk = parse_strategy("multi-krum:f=2,m=3")
    assert isinstance(mk, Krum) and (mk.f, mk.m, mk.name) == (2, 3, "multi-krum")
    auto = parse_strategy("multi-krum")
    assert isinstance(auto, Krum) and auto.m is None
    dp = parse_strategy("dp-fedavg:clip=0.5,noise=1.2,delta=1e-6,sample_rate=0.1,seed=42")
    assert isinstance(dp, DPFedAvg)
    assert (dp.clip, dp.noise, dp.delta, dp.sample_rate, dp.seed) == (0.5, 1.2, 1e-6, 0.1, 42)


def test_clip_wrapper_syntax() -> None:
    s = parse_strategy("krum:f=1+clip=5")
    assert isinstance(s, Clipped) and s.max_norm == 5.0 and isinstance(s.inner, Krum) and not s.mergeable
    twice = parse_strategy("fedprox:mu=0.1+clip=2+clip=1")
    assert isinstance(twice, Clipped) and isinstance(twice.inner, Clipped)
    assert twice.client_config() == {"proximal_mu": 0.1}
    assert isinstance(twice.inner.inner, FedProx)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown strategy 'nope'; choose one of: dp-fedavg,"),
        ("fedavg:sometimes", "fedavg takes 'weighted' or 'unweighted'"),
        ("fedadam:lr2=1", "fedadam: unknown option 'lr2'; options are lr, beta1, beta2, tau, weighted, unweighted"),
        ("fedadam:lr=fast", "fedadam: lr must be a number, got 'fast'"),
        ("fedadam:lr=0", "fedadam: lr must be > 0, got 0"),
        ("fedadam:beta1=1", "fedadam: beta1 must be in [0, 1), got 1"),
        ("fedadam:lr=inf", "fedadam: lr must be finite"),
        ("fedadam:lr=1,lr=2", "fedadam: lr given twice"),
        ("fedadam:fast", "fedadam: expected key=value, got 'fast'"),
        ("fedadagrad:beta2=0.9", "fedadagrad: unknown option 'beta2'"),
        ("fedprox:mu=-1", "fedprox: mu must be >= 0, got -1"),
        ("trimmed-mean:beta=0.5", "trimmed-mean: beta must be in [0, 0.5), got 0.5"),
        ("krum:f=1.5", "krum: f must be an integer, got '1.5'"),
        ("multi-krum:f=1,m=0", "multi-krum: m must be >= 1, got 0"),
        ("fedmedian:beta=1", "fedmedian: unknown option 'beta'; it takes no options"),
        ("dp-fedavg:delta=1", "dp-fedavg: delta must be in (0, 1), got 1"),
        ("dp-fedavg:clip=0", "dp-fedavg: clip must be > 0, got 0"),
        ("fedavg+clip=0", "+clip: norm must be > 0, got 0"),
        ("fedavg+clip=", "+clip needs a norm"),
        ("fedavg+clamp=1", "unknown wrapper '+clamp=1'"),
        ("fedadam:,", "fedadam: empty option"),
    ],
)
def test_mistakes_are_one_line_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_strategy(spec)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text
