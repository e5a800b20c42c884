"""API fixtures: the real app in process (httpx over ASGI), on SQLite by default or PostgreSQL,
with a local artifact store and the ``RecordingLauncher``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from api_harness import Api, make_settings
from recording_launcher import RecordingLauncher

from fedhive.api.app import create_app
from fedhive.service.services import Services, open_stores
from fedhive.service.settings import Settings
from fedhive.storage.models import Base
from storage.conftest import pg_database  # noqa: F401  (fixture, found by name)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """SQLite unless a test parametrizes ``backend`` with "postgresql"."""
    backend = getattr(request, "param", "sqlite")
    db_url = request.getfixturevalue("pg_database") if backend == "postgresql" else None
    return make_settings(tmp_path, db_url)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    db, artifacts = open_stores(settings)
    services = Services(settings=settings, db=db, artifacts=artifacts, launcher=RecordingLauncher(db))
    try:
        yield services
    finally:
        if not db.is_sqlite:  # the module's PostgreSQL database is shared: empty it
            with db.engine.begin() as conn:
                conn.execute(sa.text("UPDATE clients SET session_id = NULL"))
                conn.execute(sa.text("UPDATE sessions SET final_model_version_id = NULL"))
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(table.delete())
        services.close()


@pytest.fixture
async def api(services: Services) -> AsyncIterator[Api]:
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fedhive.test") as client:
        launcher = services.launcher
        assert isinstance(launcher, RecordingLauncher)
        yield Api(client, services, launcher)
