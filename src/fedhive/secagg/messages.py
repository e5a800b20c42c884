"""What the clients and the server of one secure aggregation exchange, in order.

Transport-agnostic: the simulation hands them over in-process; over a broker each maps onto a
message of its own (docs/secure_aggregation.md, "Message flow").

    client -> server   AdvertiseKeys   two X25519 public keys
    server -> clients  Roster          everyone's public keys and the threshold
    client -> server   ShareKeys       its shares for each other client, encrypted to them
    server -> client   its ``routed`` shares (a mapping sender -> ciphertext)
    client -> server   MaskedInput     its quantised update plus masks (uint64)
    server -> clients  UnmaskRequest   who sent a masked input, who dropped out before
    client -> server   UnmaskShares    self-mask shares of the first, key shares of the second
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    client: str
    c_public: bytes  # encrypts shares
    s_public: bytes  # agrees mask seeds


@dataclass(frozen=True, slots=True)
class Roster:
    keys: Mapping[str, tuple[bytes, bytes]]  # client -> (c_public, s_public)
    threshold: int

    @property
    def ids(self) -> list[str]:
        return sorted(self.keys)

    def point(self, client: str) -> int:
        """The x at which ``client`` holds every other client's shares."""
        return self.ids.index(client) + 1


@dataclass(frozen=True, slots=True)
class ShareKeys:
    client: str
    sealed: Mapping[str, bytes]  # recipient -> its encrypted shares


@dataclass(frozen=True, slots=True)
class MaskedInput:
    client: str
    vector: np.ndarray = field(repr=False)  # uint64


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    survivors: frozenset[str]  # sent a masked input: their self masks must go
    dropped: frozenset[str]  # shared keys but sent no masked input: their pairwise masks must go


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    client: str
    self_mask: Mapping[str, int]  # survivor -> this client's share of its self-mask seed
    mask_key: Mapping[str, int]  # dropped client -> this client's share of its mask key
