"""A population with more clients than rows shares the data set's shards, client i shard i mod S."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.errors import ConfigError, DataError
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.learning.partition import ShardIndex


def test_a_shard_per_client_while_rows_allow_then_shared() -> None:
    assert not ShardIndex.for_rows(10, 100).shared
    index = ShardIndex.for_rows(1_000_000, 120)
    assert index.shared and index.shards == 120
    assert [index.shard_of(i) for i in (0, 119, 120, 999_999)] == [0, 119, 0, 999_999 % 120]
    with pytest.raises(ConfigError, match="not in a population of 1000000"):
        index.shard_of(1_000_000)


def test_prepare_shares_shards_only_when_asked() -> None:
    spec = DataSpec(dataset="iris", partition="dirichlet:0.5")
    with pytest.raises(DataError, match="clients but only"):
        prepare(spec, 50_000, 0)  # as before: more clients than rows is an error
    fed = prepare(spec, 50_000, 0, shared=True)
    rows = sum(len(s) for s in fed.shards)
    assert fed.index is not None and len(fed.shards) == fed.index.shards == rows  # one row a shard
    assert np.array_equal(fed.shard(49_999).x, fed.shards[49_999 % rows].x)
    small = prepare(spec, 10, 0, shared=True)  # fewer clients than rows: exactly the usual shards
    usual = prepare(spec, 10, 0)
    assert small.index is None and all(np.array_equal(a.x, b.x) for a, b in zip(small.shards, usual.shards))
