"""The attack tests: the real app in process (httpx over ASGI), built with the settings each test
needs (``guarded``), on SQLite, with the API tests' ``RecordingLauncher`` (no training runs here).
The broker isolation tests' ``sandbox``: a RabbitMQ vhost of the test's own (``BrokerSandbox``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from broker_sandbox import BrokerSandbox, need_rabbitmqctl
from guarded_app import Guarded, GuardedFactory, make_settings


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[GuardedFactory]:
    """``async with guarded(**settings) as g``: an app built with these settings, closed after."""
    opened: list[Guarded] = []

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[Guarded]:
        g = Guarded(make_settings(tmp_path / f"home-{len(opened)}", **overrides))
        opened.append(g)
        yield g

    yield build
    for g in opened:
        g.services.close()


@pytest.fixture
def sandbox(rabbitmq_url: str) -> Iterator[BrokerSandbox]:
    """A vhost and administrator of the test's own on the shared RabbitMQ, deleted after it with
    every user the test added."""
    need_rabbitmqctl()
    box = BrokerSandbox()
    try:
        box.create()
        yield box
    finally:
        box.destroy()
