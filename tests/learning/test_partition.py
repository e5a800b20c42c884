"""Partitions are disjoint, complete, deterministic and leave no client empty, for every spec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.errors import ConfigError, DataError
from fedhive.learning.partition import PartitionSpec, parse_partition_spec, partition

SPECS = ["iid", "dirichlet:0.1", "dirichlet:100", "label-shards:1", "label-shards:3", "label-range"]


@st.composite
def labels_and_clients(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    num_classes = draw(st.integers(1, 12))
    labels = draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=300))
    num_clients = draw(st.integers(1, len(labels)))
    return np.array(labels, dtype=np.int64), num_clients


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=60, deadline=None)
@given(data=labels_and_clients(), seed=st.integers(0, 2**32 - 1))
def test_partition_guarantees(spec: str, data: tuple[np.ndarray, int], seed: int) -> None:
    y, num_clients = data
    parts = partition(y, num_clients, spec, seed)
    assert len(parts) == num_clients
    assert all(len(p) > 0 for p in parts), "a client is empty"
    assert all(p.dtype == np.int64 and (np.diff(p) > 0).all() for p in parts), "not sorted int64"
    everything = np.concatenate(parts)
    assert len(everything) == len(y), "a row is given twice (or lost)"
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(y)))
    again = partition(y, num_clients, spec, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def labels_seen(y: np.ndarray, parts: list[np.ndarray]) -> list[set[int]]:
    return [set(y[p].tolist()) for p in parts]


def test_iid_is_balanced_and_seed_dependent() -> None:
    y = np.repeat(np.arange(10), 100)
    parts = partition(y, 7, "iid", seed=0)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert not np.array_equal(parts[0], partition(y, 7, "iid", seed=1)[0])


def test_dirichlet_alpha_controls_label_skew() -> None:
    y = np.repeat(np.arange(10), 200)
    skewed = labels_seen(y, partition(y, 20, "dirichlet:0.05", seed=0))
    uniform = labels_seen(y, partition(y, 20, "dirichlet:1000", seed=0))
    assert np.mean([len(s) for s in skewed]) < 5
    assert all(len(s) == 10 for s in uniform)


def test_dirichlet_fills_empty_clients_when_clients_are_many() -> None:
    y = np.repeat(np.arange(3), 10)
    parts = partition(y, 30, "dirichlet:0.01", seed=5)
    assert sorted(map(len, parts)) == [1] * 30


def test_label_shards_limit_labels_per_client() -> None:
    y = np.repeat(np.arange(10), 100)
    parts = partition(y, 10, "label-shards:2", seed=0)
    assert all(len(s) <= 2 for s in labels_seen(y, parts))
    assert all(len(p) == 100 for p in parts)


def test_label_range_gives_contiguous_label_slices() -> None:
    y = np.tile(np.arange(10), 30)
    seen = labels_seen(y, partition(y, 3, "label-range", seed=0))
    assert seen == [{0, 1, 2, 3}, {4, 5, 6}, {7, 8, 9}]


def test_label_range_with_more_clients_than_labels_shares_labels() -> None:
    y = np.array([0] * 90 + [1] * 10)
    parts = partition(y, 5, "label-range", seed=0)
    seen = labels_seen(y, parts)
    # The big label gets clients in proportion to its rows; each client sees one label.
    assert seen == [{0}, {0}, {0}, {0}, {1}]
    assert [len(p) for p in parts] == [23, 23, 22, 22, 10]


def test_too_many_clients() -> None:
    with pytest.raises(DataError, match=r"^5 clients but only 4 samples$"):
        partition(np.zeros(4, dtype=np.int64), 5, "iid", seed=0)


@pytest.mark.parametrize("clients", [0, -3])
def test_non_positive_clients(clients: int) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        partition(np.zeros(4, dtype=np.int64), clients, "iid", seed=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shards", "unknown partition 'shards'; valid specs: iid, dirichlet:ALPHA, label-shards:K, label-range"),
        ("dirichlet:abc", "ALPHA must be a number"),
        ("dirichlet:0", "ALPHA must be a positive"),
        ("dirichlet:nan", "ALPHA must be a positive"),
        ("dirichlet:", "ALPHA must be a number"),
        ("label-shards:0", "K must be at least 1"),
        ("label-shards:1.5", "K must be an integer"),
        ("iid:3", "takes no argument"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_partition_spec(spec)


def test_parse_round_trips() -> None:
    for spec in ["iid", "dirichlet:0.5", "label-shards:2", "label-range"]:
        parsed = parse_partition_spec(spec)
        assert str(parsed) == spec and parse_partition_spec(str(parsed)) == parsed
    assert parse_partition_spec("dirichlet:0.5") == PartitionSpec("dirichlet", alpha=0.5)
