"""The attack tests: the real app in process (httpx over ASGI), built with the settings each test
needs (``guarded``), on SQLite, with the API tests' ``RecordingLauncher`` (no training runs here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
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
