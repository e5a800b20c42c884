"""Strategy spec strings -> strategy objects.

A spec is ``NAME`` or ``NAME:OPTIONS`` with ``OPTIONS`` a comma-separated list of ``key=value``
(plus a few bare words such as ``unweighted``), optionally followed by wrappers:
``SPEC+clip=NORM`` clips every client update to L2 norm NORM before SPEC aggregates it. The same
strings work on the CLI, in config files and in the API; ``strategy_help()`` lists every form.

    fedavg    fedavg:unweighted    fedavgm:lr=1.0,momentum=0.9    fedprox:mu=0.01
    fedadam:lr=0.01,beta1=0.9,beta2=0.99,tau=1e-3    fedmedian    trimmed-mean:beta=0.1
    krum:f=2    multi-krum:f=2,m=3    dp-fedavg:clip=1.0,noise=1.0,delta=1e-5
    dp-fedavg:clip=adaptive,target_quantile=0.5,clip_lr=0.2,noise=1.0
    krum:f=1+clip=5.0
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from fedhive.errors import ConfigError
from fedhive.strategies.base import Strategy
from fedhive.strategies.clipping import Clipped
from fedhive.strategies.dp_fedavg import AdaptiveClip, DPFedAvg
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.fedprox import FedProx
from fedhive.strategies.krum import Krum
from fedhive.strategies.median import FedMedian, TrimmedMean
from fedhive.strategies.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedhive.strategies.spec_args import Option, parse_options

Builder = Callable[[str | None], Strategy]

_WEIGHTING = {"weighted": ("weighted", 1.0), "unweighted": ("weighted", 0.0)}
_WEIGHTED = Option("weighted", 1, low=0, high=1, integer=True)  # also the bare words above
_LR = Option("lr", 0.01, low=0, low_open=True)
_BETA1 = Option("beta1", 0.9, low=0, high=1, high_open=True)
_BETA2 = Option("beta2", 0.99, low=0, high=1, high_open=True)
_TAU = Option("tau", 1e-3, low=0, low_open=True)
_F = Option("f", 1, low=0, integer=True)


def _fedavg(arg: str | None) -> Strategy:
    if arg in (None, "weighted"):
        return FedAvg(weighted=True)
    if arg == "unweighted":
        return FedAvg(weighted=False)
    raise ConfigError(f"fedavg takes 'weighted' or 'unweighted', not {arg!r}")


def _fedavgm(arg: str | None) -> Strategy:
    opts = (Option("lr", 1.0, low=0, low_open=True), Option("momentum", 0.9, low=0, high=1, high_open=True))
    v = parse_options("fedavgm", arg, (*opts, _WEIGHTED), flags=_WEIGHTING)
    return FedAvgM(lr=_f(v["lr"]), momentum=_f(v["momentum"]), weighted=bool(v["weighted"]))


def _fedprox(arg: str | None) -> Strategy:
    opts = (Option("mu", 0.01, low=0), _WEIGHTED)
    v = parse_options("fedprox", arg, opts, positional="mu", flags=_WEIGHTING)
    return FedProx(mu=_f(v["mu"]), weighted=bool(v["weighted"]))


def _adaptive(cls: type[FedAdam | FedYogi | FedAdagrad]) -> Builder:
    opts = (_LR, _BETA1, _TAU) if cls is FedAdagrad else (_LR, _BETA1, _BETA2, _TAU)

    def build(arg: str | None) -> Strategy:
        v = parse_options(cls.name, arg, (*opts, _WEIGHTED), flags=_WEIGHTING)
        beta2 = _f(v.get("beta2", 0.99))
        return cls(lr=_f(v["lr"]), beta1=_f(v["beta1"]), beta2=beta2, tau=_f(v["tau"]), weighted=bool(v["weighted"]))

    return build


def _fedmedian(arg: str | None) -> Strategy:
    parse_options("fedmedian", arg, ())
    return FedMedian()


def _trimmed_mean(arg: str | None) -> Strategy:
    v = parse_options("trimmed-mean", arg, (Option("beta", 0.1, low=0, high=0.5, high_open=True),), positional="beta")
    return TrimmedMean(beta=_f(v["beta"]))


def _krum(arg: str | None) -> Strategy:
    v = parse_options("krum", arg, (_F,), positional="f")
    return Krum(f=int(_f(v["f"])), m=1)


def _multi_krum(arg: str | None) -> Strategy:
    v = parse_options("multi-krum", arg, (_F, Option("m", None, low=1, integer=True)))
    m = v["m"]
    return Krum(f=int(_f(v["f"])), m=None if m is None else int(m))


def _dp_fedavg(arg: str | None) -> Strategy:
    # clip=adaptive is the one non-numeric value: it turns on adaptive clipping, whose starting
    # norm is then initial_clip.
    items = [] if arg is None else [i.strip() for i in arg.split(",")]
    is_adaptive = [i for i in items if i.replace(" ", "").lower() == "clip=adaptive"]
    rest = ",".join(i for i in items if i not in is_adaptive) or None
    opts = (
        Option("clip", 1.0, low=0, low_open=True),
        Option("noise", 1.0, low=0),
        Option("delta", 1e-5, low=0, high=1, low_open=True, high_open=True),
        Option("sample_rate", 1.0, low=0, high=1, low_open=True),
        Option("seed", None, low=0, high=2**53, integer=True),
    )
    adaptive_opts = (
        Option("initial_clip", 0.1, low=0, low_open=True),
        Option("target_quantile", 0.5, low=0, high=1, low_open=True, high_open=True),
        Option("clip_lr", 0.2, low=0, low_open=True),
        Option("count_noise", 5.0, low=0, low_open=True),
    )
    v = parse_options("dp-fedavg", rest, (*opts, *adaptive_opts) if is_adaptive else opts)
    seed = v["seed"]
    adaptive = None
    if is_adaptive:
        if rest is not None and any(i.split("=")[0].strip().lower() == "clip" for i in rest.split(",")):
            raise ConfigError("dp-fedavg: clip is either a number or 'adaptive' (then initial_clip=...)")
        adaptive = AdaptiveClip(
            target_quantile=_f(v["target_quantile"]), clip_lr=_f(v["clip_lr"]), count_noise=_f(v["count_noise"])
        )
    try:
        return DPFedAvg(
            clip=_f(v["initial_clip"] if adaptive else v["clip"]),
            noise=_f(v["noise"]),
            delta=_f(v["delta"]),
            sample_rate=_f(v["sample_rate"]),
            seed=None if seed is None else int(seed),
            adaptive=adaptive,
        )
    except ValueError as exc:  # e.g. count_noise too small for the noise multiplier
        raise ConfigError(f"dp-fedavg: {exc}") from None


def _f(x: float | None) -> float:
    assert x is not None  # options with a numeric default are always filled in
    return x


_BUILDERS: dict[str, Builder] = {}
_HELP: dict[str, list[tuple[str, str]]] = {}


def register_strategy(name: str, builder: Builder, help: Sequence[tuple[str, str]] = ()) -> None:
    """Make ``name[:options]`` parse with ``builder``; ``help`` is (spec form, what it does) pairs."""
    _BUILDERS[name] = builder
    _HELP[name] = list(help)


register_strategy(
    "fedavg",
    _fedavg,
    [
        ("fedavg", "example-weighted mean of the client models (McMahan et al. 2017)"),
        ("fedavg:unweighted", "plain mean: every client counts the same"),
    ],
)
register_strategy(
    "fedavgm",
    _fedavgm,
    [("fedavgm:lr=1.0,momentum=0.9[,unweighted]", "FedAvg with server momentum (Hsu et al. 2019)")],
)
register_strategy(
    "fedprox",
    _fedprox,
    [("fedprox:mu=0.01[,unweighted]", "FedAvg; clients add mu/2*||w - w_global||^2 to their loss (also fedprox:MU)")],
)
_ADAPTIVE = "server optimiser on the pseudo-gradient (Reddi et al. 2021)"
register_strategy(
    "fedadam", _adaptive(FedAdam), [("fedadam:lr=0.01,beta1=0.9,beta2=0.99,tau=1e-3[,unweighted]", "Adam " + _ADAPTIVE)]
)
register_strategy(
    "fedyogi", _adaptive(FedYogi), [("fedyogi:lr=0.01,beta1=0.9,beta2=0.99,tau=1e-3[,unweighted]", "Yogi " + _ADAPTIVE)]
)
register_strategy(
    "fedadagrad",
    _adaptive(FedAdagrad),
    [("fedadagrad:lr=0.01,beta1=0.9,tau=1e-3[,unweighted]", "Adagrad " + _ADAPTIVE)],
)
register_strategy("fedmedian", _fedmedian, [("fedmedian", "coordinate-wise median (not mergeable)")])
register_strategy(
    "trimmed-mean",
    _trimmed_mean,
    [("trimmed-mean:beta=0.1", "per coordinate, drop the beta fraction largest and smallest, average the rest")],
)
register_strategy(
    "krum", _krum, [("krum:f=1", "the update closest to its n-f-2 neighbours; f byzantine clients, n >= 2f+3")]
)
register_strategy(
    "multi-krum",
    _multi_krum,
    [("multi-krum:f=1,m=3", "uniform mean of the m best Krum scores (m defaults to n-f)")],
)
register_strategy(
    "dp-fedavg",
    _dp_fedavg,
    [
        (
            "dp-fedavg:clip=1.0,noise=1.0,delta=1e-5,sample_rate=1.0[,seed=N]",
            "central DP: clip deltas to clip, unweighted mean, Gaussian noise z*clip/n; reports epsilon "
            "(dp-accounting, RDP and PLD); sample_rate < 1 assumes Poisson sampling of clients",
        ),
        (
            "dp-fedavg:clip=adaptive,initial_clip=0.1,target_quantile=0.5,clip_lr=0.2,count_noise=5.0[,noise=1.0]",
            "DP-FedAvg with adaptive clipping (Andrew et al. 2021): clip norm tracks a quantile of update norms",
        ),
    ],
)

_CLIP_HELP = ("SPEC+clip=NORM", "any SPEC above, each client update (model - global) clipped to L2 norm <= NORM")
# A wrapper starts at a '+' followed by a word and '=': the '+' in a number like 1e+3 is not one.
_WRAPPER = re.compile(r"\+(?=[A-Za-z_][\w-]*=)")


def parse_strategy(spec: str) -> Strategy:
    """The strategy a spec string describes; ``ConfigError`` (one line) when it is wrong."""
    base, *wrappers = _WRAPPER.split(spec.strip())
    name, _, arg = base.strip().partition(":")
    builder = _BUILDERS.get(name.strip().lower())
    if builder is None:
        raise ConfigError(f"unknown strategy {spec!r}; choose one of: {', '.join(sorted(_BUILDERS))}")
    strategy = builder(arg.strip() or None)
    for wrapper in wrappers:
        key, _, value = wrapper.partition("=")
        if key.strip().lower() != "clip":
            raise ConfigError(f"unknown wrapper '+{wrapper}' in {spec!r}; the wrapper is +clip=NORM")
        norm_opt = Option("norm", None, low=0, low_open=True)
        norm = parse_options("+clip", value.strip() or None, (norm_opt,), positional="norm")["norm"]
        if norm is None:
            raise ConfigError(f"+clip needs a norm, as in {base}+clip=5.0")
        strategy = Clipped(strategy, norm)
    return strategy


def strategy_names() -> list[str]:
    return sorted(_BUILDERS)


def strategy_help() -> str:
    """One line per spec form: the form with its defaults, then what it does."""
    rows = [row for name in _BUILDERS for row in _HELP.get(name, [(name, "")])] + [_CLIP_HELP]
    width = max(len(form) for form, _ in rows)
    return "\n".join(f"{form.ljust(width)}  {text}".rstrip() for form, text in rows)
