"""What API tests share: the ``Api`` handle (client, services, launcher, helpers) and settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr
from recording_launcher import RecordingLauncher

from fedhive.api.auth import create_admin
from fedhive.service.services import Services
from fedhive.service.settings import Settings
from fedhive.storage import users_repo
from fedhive.storage.models import ClientStatus

PASSWORD = "correct horse battery"
UPLOAD_LIMIT = 64 * 1024


def one_line_detail(body: object) -> str:
    """The error body's detail, checked to be the promised single line of JSON."""
    assert isinstance(body, dict) and set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    return detail


@dataclass
class Api:
    client: httpx.AsyncClient
    services: Services
    launcher: RecordingLauncher

    async def signin(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        response = await self.client.post("/auth/signin", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    async def user(self, email: str) -> dict[str, str]:
        """Sign up and sign in; the bearer header."""
        response = await self.client.post("/auth/signup", json={"email": email, "password": PASSWORD})
        assert response.status_code == 201, response.text
        return await self.signin(email)

    async def admin(self, email: str = "root@example.org") -> dict[str, str]:
        create_admin(self.services, email, PASSWORD)
        return await self.signin(email)

    def online_peers(self, count: int) -> list[str]:
        """Register peers and bring them ONLINE, as their first heartbeat would."""
        with self.services.db.session() as s:
            box = self.services.settings.secret_box()
            ids = [users_repo.create_client(s, f"peer-{i}", box=box)[0] for i in range(count)]
            for client_id in ids:
                users_repo.record_heartbeat(s, client_id, status=ClientStatus.ONLINE)
        return ids

    def user_id(self, email: str) -> int:
        with self.services.db.session(read_only=True) as s:
            user = users_repo.get_user_by_email(s, email)
            assert user is not None
            return user.id


def make_settings(home: Path, db_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "db_url": db_url,
        "jwt_secret": SecretStr("test-secret-" + "x" * 24),
        "bcrypt_rounds": 4,  # the minimum: tests sign in often; the default 12 costs 0.25 s each
        "max_upload_bytes": UPLOAD_LIMIT,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]
