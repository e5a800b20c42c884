"""Fixtures of the networked tests: a ``Cluster`` of fedhive processes in a throw-away namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from amqp_cluster import Cluster, Net
from amqp_peers import Peers

from fedhive.transports.amqp import delete_namespace


@pytest.fixture
def cluster(rabbitmq_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(rabbitmq_url, tmp_path)
    try:
        yield c
    finally:
        c.teardown()


@pytest.fixture
async def net(rabbitmq_url: str, tmp_path: Path) -> AsyncIterator[Net]:
    n = Net(rabbitmq_url, tmp_path)
    yield n
    await delete_namespace(n.broker.url, n.broker.namespace, n.ids)


@pytest.fixture
def peers(rabbitmq_url: str) -> Iterator[Peers]:
    p = Peers(rabbitmq_url)
    try:
        yield p
    finally:
        p.teardown()
