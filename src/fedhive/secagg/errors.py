"""Why a secure aggregation cannot go on (too few clients left, a message out of place)."""

from __future__ import annotations

from fedhive.errors import ProtocolError


class SecAggError(ProtocolError):
    """A secure aggregation failed: the message says which step and why, in one line."""
