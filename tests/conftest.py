"""Shared test set-up: real services are found (or skipped locally, or failed in CI)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakes.py

REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI) when a real service is not reachable."""
    if port_open(host, port):
        return
    msg = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{msg} and FEDHIVE_REQUIRE_SERVICES=1: real-service tests are required here")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = os.environ.get("FEDHIVE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    need_service("RabbitMQ", "127.0.0.1", 5672)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    return os.environ.get("FEDHIVE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
