"""The pure parts of decentralised (peer-to-peer) federation: who is alive, who leads, and how a
round's updates become the same model, bit for bit, on every peer.

There is no coordinator, so every peer must reach the same model from the same inputs. Three
rules make that so:

- Membership of round r is not each peer's own view (views race); it is the set of update ids
  that round r's leader *commits* in an ``announce`` of type ``commit``. Every peer aggregates
  exactly that set.
- The leader of round r is the first peer, in id order, of the set committed in round r - 1
  (for round 1: the seeder, which is the lowest id that had announced when the seed was made).
  It commits when every peer it expects has delivered, or at the round's deadline. If it falls
  silent (``peer_timeout_s``), the next peer of that order leads the round in its place, so a
  leader crash delays a round by that timeout but does not stop it.
- Aggregation adds the committed updates sorted by peer id, in float64 (``aggregate_in_order``):
  floating point addition is not associative, and a fixed order is what makes digests match.

Limits (documented, not hidden): two commits for one round can only happen if a live leader is
silent for longer than ``peer_timeout_s`` (a stalled process or link) while the next one commits;
peers follow whichever commit they receive first, and one that then sees a commit for another
base model asks that round's leader for its model and carries on from it (``_resync``). No
consensus protocol (Raft, PBFT) is attempted: peers are assumed honest, as in DML. Peers of
one federation share one HMAC key (see ``peer_codec``): any of
them can speak for the federation, none outside it can.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedhive.core.bodies import NO_MODEL
from fedhive.core.params import Params
from fedhive.core.signing import Verifier
from fedhive.strategies.base import Strategy, Update
from fedhive.transports.wire_codec import WireCodec


def new_peer_id() -> str:
    """A random 128-bit id, as 32 hex digits: ids sort the same everywhere (plain string order)."""
    return secrets.token_hex(16)


def params_digest(params: Params) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in order: equal digests mean equal models."""
    h = hashlib.sha256()
    for name, arr in params.items():
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def aggregate_in_order(strategy: Strategy, base: Params, updates: Mapping[str, Update], round: int) -> Params:
    """The new model from ``updates``, folded in sorted by peer id, so every peer gets the same bits."""
    agg = strategy.aggregator(base)
    for peer_id in sorted(updates):
        agg.add(updates[peer_id])
    return strategy.apply(base, agg.result(), round)


@dataclass
class PeerView:
    """What one peer knows of the others: when each was last heard and which model it holds."""

    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    last_seen: dict[str, float] = field(default_factory=dict)
    have: dict[str, int] = field(default_factory=dict)

    def seen(self, peer_id: str, have: int | None = None) -> bool:
        """Record a sign of life; True if the peer was not known (or had been given up on)."""
        new = peer_id not in self.last_seen
        self.last_seen[peer_id] = self.clock()
        if have is not None:
            self.have[peer_id] = max(have, self.have.get(peer_id, NO_MODEL))
        return new

    def forget(self, peer_id: str) -> None:
        self.last_seen.pop(peer_id, None)

    def expire(self) -> list[str]:
        """Forget peers silent for longer than the timeout; returns them."""
        horizon = self.clock() - self.timeout_s
        gone = sorted(p for p, t in self.last_seen.items() if t < horizon)
        for p in gone:
            del self.last_seen[p]
        return gone

    def alive(self) -> list[str]:
        return sorted(self.last_seen)

    def holding(self, round: int) -> set[str]:
        """Alive peers known to hold the model of ``round`` or a later one."""
        return {p for p in self.last_seen if self.have.get(p, NO_MODEL) >= round}


@dataclass
class PeerRound:
    """One round in progress on one peer."""

    round: int
    order: list[str]  # leader first, then who takes over, in that order
    base_digest: str
    started: float
    updates: dict[str, Update] = field(default_factory=dict)
    commit: list[str] | None = None  # the agreed ids, once applied
    pending: list[str] | None = None  # the ids a received commit names, until we can apply them
    pending_since: float = 0.0  # -1: the commit is for another base model than ours
    extensions: int = 0


def peer_codec(federation_key: bytes) -> WireCodec:
    """Signed frames for a peer: every peer of a federation signs and verifies with one shared key,
    because broadcasts have no single recipient whose key could be used. A peer id is only a name
    inside the federation; the key is what keeps outsiders out."""
    return WireCodec(signing_key=lambda _to: federation_key, verifier=Verifier(lambda _sender: federation_key))


def weighted_metrics(updates: dict[str, Update]) -> dict[str, float]:
    total = sum(u.num_examples for u in updates.values()) or 1
    keys = sorted({k for u in updates.values() for k in u.metrics})
    return {k: sum(u.num_examples * u.metrics.get(k, 0.0) for u in updates.values()) / total for k in keys}
