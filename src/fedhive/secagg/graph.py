"""Who pairs with whom: SecAgg+'s k-regular neighbour graph (Bell et al. 2020).

In the original protocol every client agrees a mask with every other (n - 1 key agreements and
mask streams each, O(n^2) a round). SecAgg+ pairs each client with ``k`` neighbours only, and
shares its secrets among them alone: a round costs O(n k), with ``k`` growing as log n
(``sizing.default_neighbours``).

The graph is the Harary graph H(k, n) with its clients in a random order: the round's clients sit
on a ring in the order of HMAC-SHA256(seed, id) (a uniformly random permutation for a seed drawn
at random once the ids are fixed: one per session, ``server.session_graph_seed``), and each is
joined to the ``k // 2`` nearest on either side,
plus, for odd ``k``, the client opposite it. The graph is k-regular and k-connected: no set of
fewer than ``k`` clients leaving cuts it, and ``sizing`` bounds the chance that those who drop out
or collude cut it apart.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from functools import lru_cache


def degree(n: int, k: int) -> int:
    """The degree that ``n`` clients' graph gets for a requested ``k``: at least 2 (a 1-regular
    graph is disjoint pairs, and the server would learn each pair's sum), at most ``n - 1``
    (everyone paired with everyone: the original SecAgg), and even when ``n`` is odd (a k-regular
    graph on ``n`` vertices needs ``n * k`` even: the next even ``k`` is used)."""
    if n < 2:
        return 0
    k = min(max(k, 2), n - 1)
    if k % 2 and n % 2:
        k += 1
    return k


def ring_order(ids: Collection[str], seed: bytes) -> list[str]:
    """The clients in their places on the ring: sorted by HMAC-SHA256 under ``seed``."""
    key = tuple(sorted(ids))
    if len(set(key)) != len(key):
        raise ValueError("client ids must be distinct")
    return list(_ring(key, seed))


@lru_cache(maxsize=8)
def _ring(ids: tuple[str, ...], seed: bytes) -> tuple[str, ...]:
    # Kept for the round: the virtual clients of one process draw the same ring (n HMACs each,
    # the larger part of a client's work on the roster), and so does the node for the graph.
    return tuple(sorted(ids, key=lambda c: (hmac.digest(seed, c.encode(), "sha256"), c)))


def _offsets(n: int, k: int) -> list[int]:
    k = degree(n, k)
    half = k // 2
    offsets = [*range(1, half + 1), *range(n - half, n)]
    if k % 2:
        offsets.append(n // 2)
    return offsets


def neighbour_graph(ids: Collection[str], k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Each client's neighbours in the k-regular graph of ``ids`` drawn from ``seed`` (the same
    ids, ``k`` and seed give the same graph wherever it is computed)."""
    order = ring_order(ids, seed)
    n = len(order)
    offsets = _offsets(n, k)
    return {c: frozenset(order[(i + o) % n] for o in offsets) for i, c in enumerate(order)}


def neighbours_of(client: str, ids: Collection[str], k: int, seed: bytes) -> frozenset[str]:
    """``neighbour_graph(ids, k, seed)[client]`` without the rest of the graph: what a client
    computes for itself (the whole graph is O(n k) per client, O(n^2 k) a round over a broker)."""
    order = ring_order(ids, seed)
    n, i = len(order), order.index(client)
    return frozenset(order[(i + o) % n] for o in _offsets(n, k))
