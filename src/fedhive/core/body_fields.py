"""What each field of a wire body may hold (``core.bodies``): the limits and the field types.

Strict: a bool or a string is no number on the wire (JSON gives ints and floats as they are).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BeforeValidator, Field, Strict, StringConstraints

MAX_EXAMPLES = 10**9
MAX_CLIENTS = 10_000  # clients one partial, evaluation or host TRAIN may name
MAX_ATTEMPT = 10**6
MAX_ID = 128
MAX_REASON = 500
MAX_METRICS = 64
NO_MODEL = -1  # a peer that holds no model yet announces this

Examples = Annotated[int, Strict(), Field(ge=1, le=MAX_EXAMPLES)]
ExamplesOrNone = Annotated[int, Strict(), Field(ge=0, le=MAX_EXAMPLES)]
ClientCount = Annotated[int, Strict(), Field(ge=0, le=MAX_CLIENTS)]
Attempt = Annotated[int, Strict(), Field(ge=0, le=MAX_ATTEMPT)]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**63 - 1)]
Finite = Annotated[float, Strict(), AllowInfNan(False)]
NodeId = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_ID)]
Digest = Annotated[str, Strict(), StringConstraints(max_length=128)]
MetricName = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=64)]
Metrics = Annotated[dict[MetricName, Finite], Field(max_length=MAX_METRICS)]
LabelCounts = Annotated[
    dict[Annotated[str, StringConstraints(max_length=MAX_ID)], Annotated[int, Strict(), Field(ge=0)]],
    Field(max_length=100_000),
]


def text_cut(limit: int) -> Any:
    """Free text (a reason), cut to ``limit``: a long reason is no reason to drop the message."""
    return BeforeValidator(lambda v: str(v)[:limit])


def figure_or_none(kind: type) -> Any:
    """A heartbeat's optional figure: kept if it is one, else None (a bad figure costs only itself)."""
    return BeforeValidator(lambda v: v if isinstance(v, kind) and not isinstance(v, bool) else None)


def peer_ids(v: object) -> list[str]:
    """Peer ids, order kept; malformed entries are dropped, as peers always have."""
    if not isinstance(v, list):
        return []
    return [p for p in v[:MAX_CLIENTS] if isinstance(p, str) and 0 < len(p) <= MAX_ID]


IdList = Annotated[list[str], BeforeValidator(peer_ids)]
