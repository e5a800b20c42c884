"""Fixtures of the platform tests: where the platform runs (the embedded defaults, or RabbitMQ +
PostgreSQL + S3), with the real-service fixtures shared with the storage tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.amqp import delete_namespace
from storage.conftest import pg_database, s3  # noqa: F401  (fixtures, found by name)

LOCAL_PEERS = [f"local-{i}" for i in range(1, 9)]  # the ids ``fedhive serve --local-clients N`` uses


@pytest.fixture(
    params=["embedded", pytest.param("services", marks=[pytest.mark.amqp, pytest.mark.postgres, pytest.mark.s3])]
)
def deployment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``Settings`` fields of the embedded defaults ({}), or of the production placement: RabbitMQ
    (in a namespace of its own, deleted afterwards) + a fresh PostgreSQL database + an S3 bucket."""
    if request.param == "embedded":
        yield {}
        return
    broker = request.getfixturevalue("rabbitmq_url")
    db = request.getfixturevalue("pg_database")
    endpoint = request.getfixturevalue("s3")
    # Also seen by ``fedhive serve`` subprocesses, which inherit this environment.
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    tag = uuid.uuid4().hex[:8]
    namespace = f"test-{tag}"
    yield {
        "broker_url": broker,
        "namespace": namespace,
        "db_url": db,
        "artifacts_url": f"s3://fedhive-{tag}/artifacts?endpoint={endpoint}",
    }
    asyncio.run(delete_namespace(broker, namespace, [COORDINATOR_ID, *LOCAL_PEERS]))
