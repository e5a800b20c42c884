"""The networked secure-aggregation tests use the networked tests' cluster of fedhive processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "networked"))  # amqp_cluster

from amqp_cluster import Cluster


@pytest.fixture
def cluster(rabbitmq_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(rabbitmq_url, tmp_path)
    try:
        yield c
    finally:
        c.teardown()
