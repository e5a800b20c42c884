"""What the API asks of the running federation: start and cancel sessions.

Everything else the API shows (sessions, rounds, peers, models) it reads from the metadata store,
which the coordinator's persistence observer keeps current. This seam keeps the API testable with
the real coordinator behind it, whatever transport that coordinator uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fedhive.core.params import Params
from fedhive.errors import FedhiveError
from fedhive.runtime.session_config import SessionConfig


class NotEnoughPeers(FedhiveError):
    """Fewer ONLINE peers than the session's ``min_peers`` (the API answers 400)."""

    def __init__(self, online: int, needed: int) -> None:
        super().__init__(f"not enough peers: {online} ONLINE, {needed} needed")
        self.online = online
        self.needed = needed


@dataclass(frozen=True)
class SessionRequest:
    owner_id: str
    config: SessionConfig  # model spec, strategy, hyperparameters, rounds
    min_peers: int
    dataset_id: str | None = None  # an uploaded CSV (stored in the artifact store, row in datasets)
    initial_model: tuple[str, int] | None = None  # registered (model name, version) to start from
    # weights from elsewhere (an MLflow registry version), with what to call them in messages
    initial_params: tuple[str, Params] | None = None
    name: str | None = None  # the user's name for the session
    # labels for the session's tracking runs: its use case, the registered model it started from
    tags: Mapping[str, str] = field(default_factory=dict)
    topology: str = "star"  # star, hierarchical (over combiners the server runs) or decentralised
    combiners: int = 0  # hierarchical: how many combiners the server starts for the session
    # hierarchical over remote combiners (``fedhive combiner --agent``) instead: those named, or
    # every ONLINE one when empty; None: the server starts its own (``combiners``)
    remote_combiners: tuple[str, ...] | None = None


class SessionLauncher(Protocol):
    async def start(self, request: SessionRequest) -> str:
        """Create the session row, lock ``min_peers`` ONLINE peers (TRAINING) and start it.

        Returns the session id. Raises ``NotEnoughPeers`` and leaves nothing behind when too few
        peers are ONLINE.
        """
        ...

    async def cancel(self, session_id: str) -> bool:
        """Stop a PENDING/RUNNING session (CANCELLED, peers released); False if it already ended."""
        ...
