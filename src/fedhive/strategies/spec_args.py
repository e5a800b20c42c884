"""The ``key=value,key=value`` part of a strategy spec string, checked against declared options.

Every mistake becomes a one-line ``ConfigError`` that names the strategy, the option and the
problem (unknown key, not a number, out of range), because these strings are typed by people on
a command line or in a config file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedhive.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Option:
    """One numeric option. ``default=None`` means "not set" (the strategy decides at run time).
    Bounds are inclusive unless ``low_open``/``high_open`` say otherwise."""

    name: str
    default: float | None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
        return "finite"

    def in_range(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open and x == self.high)))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def parse_options(
    strategy: str,
    arg: str | None,
    options: Sequence[Option],
    *,
    positional: str | None = None,
    flags: Mapping[str, tuple[str, float]] | None = None,
) -> dict[str, float | None]:
    """Parse ``arg`` (the text after ``name:``) into option values, defaults filled in.

    ``positional`` names the option a bare number sets (``fedprox:0.01`` is ``fedprox:mu=0.01``);
    ``flags`` maps bare words to an option value (``unweighted`` -> ``weighted=0``).
    """
    by_name = {o.name: o for o in options}
    flags = flags or {}
    given: dict[str, float] = {}
    items = [] if arg is None else [s.strip() for s in arg.split(",")]
    for item in items:
        if not item:
            raise ConfigError(f"{strategy}: empty option in {arg!r}")
        key, eq, text = item.partition("=")
        key = key.strip().lower()
        if not eq:
            if key in flags:
                name, value = flags[key]
                _set(strategy, given, name, value)
                continue
            if positional is not None:
                key, text = positional, item
            else:
                raise ConfigError(f"{strategy}: expected key=value, got {item!r}; {_choices(options, flags)}")
        opt = by_name.get(key)
        if opt is None:
            raise ConfigError(f"{strategy}: unknown option {key!r}; {_choices(options, flags)}")
        _set(strategy, given, key, _number(strategy, opt, text.strip()))
    return {o.name: given.get(o.name, o.default) for o in options}


def _set(strategy: str, given: dict[str, float], name: str, value: float) -> None:
    if name in given:
        raise ConfigError(f"{strategy}: {name} given twice")
    given[name] = value


def _number(strategy: str, opt: Option, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        kind = "an integer" if opt.integer else "a number"
        raise ConfigError(f"{strategy}: {opt.name} must be {kind}, got {text!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{strategy}: {opt.name} must be finite, got {text!r}")
    if opt.integer and not x.is_integer():
        raise ConfigError(f"{strategy}: {opt.name} must be an integer, got {text!r}")
    if not opt.in_range(x):
        raise ConfigError(f"{strategy}: {opt.name} must be {opt.range_text()}, got {text}")
    return float(int(x)) if opt.integer else x


def _choices(options: Sequence[Option], flags: Mapping[str, tuple[str, float]]) -> str:
    names = [o.name for o in options]
    names += [f for f in flags if f not in names]
    return f"options are {', '.join(names)}" if names else "it takes no options"
