"""``--node key=value`` and ``--run-config key=value``: typed values from the command line."""

from __future__ import annotations

from fedhive.errors import ConfigError

Value = str | int | float | bool


def parse_pairs(items: list[str] | None, option: str) -> dict[str, Value]:
    """``["lr=0.1", "name=x", "flag=true"]`` -> ``{"lr": 0.1, "name": "x", "flag": True}``."""
    out: dict[str, Value] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} takes key=value, got {item!r}")
        out[key] = parse_value(raw.strip())
    return out


def parse_value(raw: str) -> Value:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
