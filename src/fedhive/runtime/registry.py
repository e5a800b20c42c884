"""Which clients exist, and whether they are ONLINE, TRAINING or OFFLINE (docs/architecture.md, "Rounds").

Pure state with an injected clock: the coordinator feeds it registrations and heartbeats, and asks
it which clients have gone quiet. No I/O, so it is tested without a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class PeerStatus(StrEnum):
    ONLINE = "ONLINE"
    TRAINING = "TRAINING"
    OFFLINE = "OFFLINE"


@dataclass
class ClientInfo:
    client_id: str
    num_examples: int
    status: PeerStatus
    last_seen: float
    label_counts: dict[str, int] = field(default_factory=dict)
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    accuracy: float | None = None


class ClientRegistry:
    def __init__(self, *, heartbeat_timeout_s: float | None = 15.0, clock: Callable[[], float] = time.time) -> None:
        self._clients: dict[str, ClientInfo] = {}
        self._timeout = heartbeat_timeout_s
        self._clock = clock
        # Kept as statuses change: the coordinator asks after every registration, and counting
        # 10,000 clients each time made starting a big session quadratic.
        self._not_offline = 0

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._clients

    def get(self, client_id: str) -> ClientInfo | None:
        return self._clients.get(client_id)

    def all(self) -> list[ClientInfo]:
        return list(self._clients.values())

    def register(
        self, client_id: str, num_examples: int, label_counts: dict[str, int] | None = None
    ) -> PeerStatus | None:
        """Add or refresh a client; returns its previous status (None if new)."""
        info = self._clients.get(client_id)
        previous = info.status if info else None
        if previous is None or previous is PeerStatus.OFFLINE:
            self._not_offline += 1
        self._clients[client_id] = ClientInfo(
            client_id, num_examples, PeerStatus.ONLINE, self._clock(), dict(label_counts or {})
        )
        return previous

    def seen(self, client_id: str) -> PeerStatus | None:
        """Record a sign of life; returns the previous status if it was OFFLINE (now ONLINE)."""
        info = self._clients.get(client_id)
        if info is None:
            return None
        info.last_seen = self._clock()
        if info.status is PeerStatus.OFFLINE:
            info.status = PeerStatus.ONLINE
            self._not_offline += 1
            return PeerStatus.OFFLINE
        return None

    def set_status(self, client_id: str, status: PeerStatus) -> PeerStatus | None:
        info = self._clients.get(client_id)
        if info is None or info.status is status:
            return None
        previous, info.status = info.status, status
        self._not_offline += (previous is PeerStatus.OFFLINE) - (status is PeerStatus.OFFLINE)
        return previous

    def online_count(self) -> int:
        """How many clients are not OFFLINE: ``len(online())`` without listing and sorting them."""
        return self._not_offline

    def online(self) -> list[str]:
        """Ids of clients that are not OFFLINE, sorted (selection is deterministic for a seed)."""
        return sorted(c.client_id for c in self._clients.values() if c.status is not PeerStatus.OFFLINE)

    def refresh_all(self) -> None:
        """Count everyone not OFFLINE as heard from now: after our own link to them was down, their
        silence says nothing about them, so each gets a full heartbeat timeout to be heard again."""
        now = self._clock()
        for c in self._clients.values():
            if c.status is not PeerStatus.OFFLINE:
                c.last_seen = now

    def expire(self) -> list[str]:
        """Mark clients silent for longer than the heartbeat timeout OFFLINE; returns their ids."""
        if self._timeout is None:
            return []
        horizon = self._clock() - self._timeout
        gone = []
        for c in self._clients.values():
            if c.status is not PeerStatus.OFFLINE and c.last_seen < horizon:
                c.status = PeerStatus.OFFLINE
                self._not_offline -= 1
                gone.append(c.client_id)
        return gone
