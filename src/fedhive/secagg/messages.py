"""What the clients and the server of one secure aggregation exchange, in order.

Transport-agnostic: the simulation hands them over in-process; over a broker each travels in an
existing message kind (``secagg.wire``; docs/secure_aggregation.md, "Over a broker").

    client -> server   AdvertiseKeys   two X25519 public keys
    server -> clients  Roster          everyone's public keys, the threshold, the neighbour graph
    client -> server   ShareKeys       its shares for each neighbour, encrypted to them, and its
                                       round's pair seeds sealed under its escrow key
    server -> client   its ``routed`` shares (a mapping neighbour -> ciphertext)
    client -> server   MaskedInput     its quantised update plus masks (uint64)
    server -> clients  UnmaskRequest   who sent a masked input, who dropped out before
    client -> server   UnmaskShares    the shares it holds of the first's self masks, the second's escrow keys
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from fedhive.secagg.graph import neighbour_graph, neighbours_of


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    client: str
    c_public: bytes  # encrypts shares
    s_public: bytes  # agrees mask seeds


@dataclass(frozen=True)
class Roster:
    """Everyone who advertised keys, and the round's graph: each client pairs with, and shares its
    secrets among, its ``neighbours`` neighbours in the graph drawn from ``graph_seed``; any
    ``threshold`` of a client's share holders (its neighbours and itself) rebuild its secrets."""

    keys: Mapping[str, tuple[bytes, bytes]]  # client -> (c_public, s_public), both kept for the session
    threshold: int
    neighbours: int  # k, the graph's degree (graph.degree: at most n - 1)
    graph_seed: bytes
    # Everyone in the round, when ``keys`` holds only some of them (``for_client``: a client needs
    # every id to draw the graph, but the keys of its neighbours only).
    members: tuple[str, ...] = ()

    @cached_property
    def ids(self) -> list[str]:
        return sorted(self.members or self.keys)

    @cached_property
    def graph(self) -> dict[str, frozenset[str]]:
        return neighbour_graph(self.ids, self.neighbours, self.graph_seed)

    def neighbours_of(self, client: str) -> frozenset[str]:
        """``graph[client]``; without drawing the whole graph when only one client's is needed."""
        if "graph" in self.__dict__:
            return self.graph[client]
        return neighbours_of(client, self.ids, self.neighbours, self.graph_seed)

    @cached_property
    def _points(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.ids, start=1)}

    def point(self, client: str) -> int:
        """The x at which ``client`` holds the shares it is given."""
        return self._points[client]

    def for_client(self, client: str) -> Roster:
        """What ``client`` needs of the roster: every id, its own keys and its neighbours' (a
        client's roster message is O(n + k), not O(n) keys: O(n^2) bytes a round in all)."""
        wanted = self.graph[client] | {client}
        keys = {c: self.keys[c] for c in self.ids if c in wanted}
        return Roster(keys, self.threshold, self.neighbours, self.graph_seed, members=tuple(self.ids))


@dataclass(frozen=True, slots=True)
class ShareKeys:
    client: str
    sealed: Mapping[str, bytes]  # neighbour -> its encrypted shares
    escrow: bytes = b""  # its round's pair seeds (neighbours in sorted order), sealed under its escrow key


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
    self_mask: Mapping[str, int]  # survivor among its neighbours (or itself) -> its share of the self-mask seed
    mask_key: Mapping[str, int]  # dropped neighbour -> its share of that client's escrow key
