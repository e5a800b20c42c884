"""What the attack tests share: an app built with the settings a test needs, and its callers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from api.recording_launcher import RecordingLauncher
from fedhive.api.app import create_app
from fedhive.service.services import Services, open_stores
from fedhive.service.settings import Settings

PASSWORD = "correct horse battery"
BASE_URL = "http://fedhive.test"


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "jwt_secret": SecretStr("test-secret-" + "x" * 24),
        "bcrypt_rounds": 4,  # the minimum, unless a test measures hashing itself
    }
    values.update(overrides)
    return Settings(**values)


class Guarded:
    """One app and what the tests look at: its services and its sign-in guard."""

    def __init__(self, settings: Settings) -> None:
        db, artifacts = open_stores(settings)
        self.services = Services(settings=settings, db=db, artifacts=artifacts, launcher=RecordingLauncher(db))
        self.app = create_app(settings, self.services)
        self.guard = self.app.state.signin_guard

    def client(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        """A caller at ``address`` (in process: nothing goes on the network)."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL)

    async def signup(self, email: str, password: str = PASSWORD) -> None:
        async with self.client() as http:
            response = await http.post("/auth/signup", json={"email": email, "password": password})
        assert response.status_code == 201, response.text


GuardedFactory = Callable[..., AbstractAsyncContextManager[Guarded]]
