"""Which Flower fedhive's adapter speaks, and the one-line refusal for any other.

The adapter uses Flower's own records, messages and legacy conversions, whose layout changes
between minor releases; it is tested against one minor release (pinned by the ``flower`` extra)
and refuses the rest rather than half-working on them.
"""

from __future__ import annotations

from importlib import metadata

from fedhive.errors import ConfigError

SUPPORTED = ((1, 41), (1, 42))  # [from, to): the minor releases the adapter is tested on
INSTALL_HINT = "pip install 'flwr==1.41.0' (docs/flower.md)"


def check_version(version: str) -> None:
    """``ConfigError`` in one line if ``version`` is outside ``SUPPORTED``."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        raise ConfigError(f"Flower version {version!r} is not a release number; fedhive needs flwr 1.41.x") from None
    low, high = SUPPORTED
    if not low <= major_minor < high:
        raise ConfigError(
            f"Flower {version} is installed; fedhive's Flower adapter supports flwr "
            f"{low[0]}.{low[1]}.x only: {INSTALL_HINT}"
        )


def require_flower() -> str:
    """The installed Flower's version, checked; ``ConfigError`` if it is missing or unsupported."""
    try:
        version = metadata.version("flwr")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"running a Flower app needs Flower: {INSTALL_HINT}") from None
    check_version(version)
    return version
