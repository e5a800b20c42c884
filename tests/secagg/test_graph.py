"""SecAgg+'s neighbour graph: k-regular, the same for the same seed, connected (k-connected)."""

from __future__ import annotations

import itertools
import random

import pytest

from fedhive.secagg.graph import degree, neighbour_graph, neighbours_of, ring_order


def _ids(n: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(n)]


def _connected(graph: dict[str, frozenset[str]], without: frozenset[str] = frozenset()) -> bool:
    left = [c for c in graph if c not in without]
    seen, todo = {left[0]}, [left[0]]
    while todo:
        for v in graph[todo.pop()] - without - seen:
            seen.add(v)
            todo.append(v)
    return len(seen) == len(left)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 11, 30, 101])
def test_every_client_has_k_neighbours_both_ways_and_never_itself(n: int) -> None:
    for k in range(1, n + 2):
        graph = neighbour_graph(_ids(n), k, b"seed")
        d = degree(n, k)
        expected = min(max(k, 2), n - 1)  # a 1-regular graph would be disjoint pairs
        assert d == expected + (1 if expected % 2 and n % 2 else 0)
        assert set(graph) == set(_ids(n))
        for c, near in graph.items():
            assert len(near) == d and c not in near
            assert all(c in graph[v] for v in near)  # symmetric: a pair's masks cancel
        assert _connected(graph)


def test_the_same_seed_gives_the_same_graph_whatever_the_order_of_ids() -> None:
    ids = _ids(40)
    shuffled = random.Random(3).sample(ids, len(ids))
    assert neighbour_graph(ids, 6, b"round-7") == neighbour_graph(shuffled, 6, b"round-7")
    assert neighbour_graph(ids, 6, b"round-7") != neighbour_graph(ids, 6, b"round-8")
    assert ring_order(ids, b"round-7") != ring_order(ids, b"round-8")
    assert sorted(ring_order(ids, b"round-7")) == ids


def test_k_minus_one_clients_leaving_never_cut_it() -> None:
    graph = neighbour_graph(_ids(12), 4, b"s")
    for gone in itertools.combinations(_ids(12), 3):
        assert _connected(graph, frozenset(gone))
    ring = ring_order(_ids(12), b"s")
    # ... but two runs of k/2 clients in a row on the ring do: the event sizing.failure_bounds counts.
    assert not _connected(graph, frozenset([ring[0], ring[1], ring[6], ring[7]]))


def test_the_complete_graph_when_k_reaches_n() -> None:
    graph = neighbour_graph(_ids(7), 50, b"s")
    assert all(len(near) == 6 for near in graph.values())


def test_repeated_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        neighbour_graph(["a", "a", "b"], 2, b"s")


@pytest.mark.parametrize(("n", "k"), [(12, 4), (11, 5), (30, 7), (7, 50)])
def test_one_clients_neighbours_are_its_row_of_the_graph(n: int, k: int) -> None:
    graph = neighbour_graph(_ids(n), k, b"seed")
    assert all(neighbours_of(c, _ids(n), k, b"seed") == graph[c] for c in _ids(n))
