"""The dashboard's routes keep the API's rules, without a browser (the app in process, over ASGI):

- its data routes need a token, and a user sees only their own sessions (another user's answers
  404, exactly like a missing one); the sites listing is for every signed-in user, as peers are;
- the sign-in page keeps a page to go back to only when it is one of the dashboard's own paths;
- a session's name is stored as given (one line of text, or 422); deleting a tracked session whose
  MLflow server is gone still deletes it (its runs stay, the log says so).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fedhive.api.app import create_app
from fedhive.service.launcher import SessionRequest
from fedhive.service.services import Services, open_stores
from fedhive.service.settings import Settings
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.models import ClientStatus, SessionStatus
from fedhive.web.routes import same_site_page

PASSWORD = "correct horse battery"


class StartingLauncher:
    """Creates the session row the API reads back, and nothing else (no training here)."""

    def __init__(self, services: Services | None = None) -> None:
        self.services = services
        self.started: list[SessionRequest] = []

    async def start(self, request: SessionRequest) -> str:
        assert self.services is not None
        self.started.append(request)
        with self.services.db.session() as s:
            config = request.config.model_dump(mode="json")
            sessions_repo.create_session(
                s,
                config=config,
                rounds_total=request.config.rounds,
                owner_id=int(request.owner_id),
                session_id=request.config.session_id,
                name=request.name,
            )
        return request.config.session_id

    async def cancel(self, session_id: str) -> bool:
        raise AssertionError("not cancelled here")


@pytest.fixture
def mlflow_uri() -> str | None:
    return None


@pytest.fixture
async def client(tmp_path: Path, mlflow_uri: str | None) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    settings = Settings(home=tmp_path, bcrypt_rounds=4, mlflow_tracking_uri=mlflow_uri)
    db, artifacts = open_stores(settings)
    launcher = StartingLauncher()
    services = Services(settings=settings, db=db, artifacts=artifacts, launcher=launcher)
    launcher.services = services
    transport = httpx.ASGITransport(app=create_app(settings, services))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://fedhive.test") as http:
            yield http, services
    finally:
        services.close()


async def user(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    assert (await http.post("/auth/signup", json={"email": email, "password": PASSWORD})).status_code == 201
    r = await http.post("/auth/signin", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def ended_session(services: Services, email: str, session_id: str) -> None:
    with services.db.session() as s:
        owner = users_repo.get_user_by_email(s, email)
        assert owner is not None
        sessions_repo.create_session(s, config={}, rounds_total=1, owner_id=owner.id, session_id=session_id, name="x")
        sessions_repo.set_session_status(s, session_id, SessionStatus.COMPLETED, reason="completed all 1 rounds")


async def test_the_dashboards_data_needs_a_token_and_shows_only_ones_own_sessions(
    client: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = client
    for path in ["/sites", "/ui/data/sessions", "/ui/data/sessions/s1", "/ui/data/sessions/s1/mlflow"]:
        assert (await http.get(path)).status_code == 401, path
    ann, bob = await user(http, "ann@example.org"), await user(http, "bob@example.org")
    ended_session(services, "ann@example.org", "s1")
    for path in ["/ui/data/sessions/s1", "/ui/data/sessions/s1/mlflow"]:
        assert (await http.get(path, headers=bob)).status_code == 404, path
        assert (await http.get(path, headers=ann)).status_code == 200, path
    assert (await http.get("/ui/data/sessions", headers=bob)).json() == []
    (row,) = (await http.get("/ui/data/sessions", headers=ann)).json()
    assert (row["session"]["id"], row["session"]["name"], row["key_metric"]) == ("s1", "x", None)
    assert (await http.get("/ui/data/sessions/s1/mlflow", headers=ann)).json()["configured"] is False

    # every signed-in user sees every site, with what its agent announced and no secret
    with services.db.session() as s:
        users_repo.create_client(s, "Hospital A", box=services.settings.secret_box(), client_id="hospital-a")
        users_repo.record_heartbeat(s, "hospital-a", status=ClientStatus.ONLINE)
        users_repo.record_site(s, "hospital-a", {"agent": "0.1.0", "apps": {"builtin": "abc"}, "datasets": ["d"]})
    (site,) = (await http.get("/sites", headers=bob)).json()
    assert (site["id"], site["agent"], site["apps"], site["datasets"]) == (
        "hospital-a",
        "0.1.0",
        {"builtin": "abc"},
        ["d"],
    )
    assert "secret" not in site and "session_id" not in site


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("/ui/sessions/abc", "/ui/sessions/abc"),
        ("/ui", "/ui"),
        ("/ui/sites?status=ONLINE", "/ui/sites?status=ONLINE"),
        ("https://evil.example/ui", "/ui"),
        ("//evil.example/ui", "/ui"),
        ("/ui//evil.example", "/ui"),
        ("/\\evil.example", "/ui"),
        ("/ui/%5Cevil.example", "/ui"),
        ("/ui/../../etc", "/ui"),
        ("javascript:alert(1)", "/ui"),
        ("/uievil", "/ui"),
        ("/docs", "/ui"),
        ("/ui/sessions/abc\nSet-Cookie: x", "/ui"),
        ('/ui/x?a="><script>', "/ui"),
        ("", "/ui"),
    ],
)
async def test_sign_in_goes_back_only_to_the_dashboards_own_pages(
    client: tuple[httpx.AsyncClient, Services], target: str, kept: str
) -> None:
    http, _ = client
    assert same_site_page(target) == kept
    page = await http.get("/ui/signin", params={"next": target})
    assert page.status_code == 200
    found = re.search(r'data-next="([^"]*)"', page.text)
    assert found is not None and found.group(1) == kept.replace("&", "&amp;")


async def test_the_old_peers_page_leads_to_the_sites_page(client: tuple[httpx.AsyncClient, Services]) -> None:
    http, _ = client
    r = await http.get("/ui/peers")
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/sites"


async def test_a_sessions_name_is_stored_as_given_or_refused_in_one_line(
    client: tuple[httpx.AsyncClient, Services],
) -> None:
    http, services = client
    ann = await user(http, "ann@example.org")
    with services.db.session() as s:
        for i in range(2):
            users_repo.create_client(s, f"p{i}", box=services.settings.secret_box(), client_id=f"p{i}")
            users_repo.record_heartbeat(s, f"p{i}", status=ClientStatus.ONLINE)
    form = {"model": "logreg", "min_peers": "2", "name": "  iris baseline  "}
    r = await http.post("/sessions/start", headers=ann, data=form)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "iris baseline"
    bad = await http.post("/sessions/start", headers=ann, data={**form, "name": "two\nlines"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("name:")
    too_long = await http.post("/sessions/start", headers=ann, data={**form, "name": "x" * 101})
    assert too_long.status_code == 422


@pytest.mark.parametrize("mlflow_uri", ["http://127.0.0.1:9"])  # nothing listens on the discard port
async def test_deleting_a_session_whose_mlflow_server_is_gone_still_deletes_it(
    client: tuple[httpx.AsyncClient, Services], caplog: pytest.LogCaptureFixture
) -> None:
    http, services = client
    ann = await user(http, "ann@example.org")
    ended_session(services, "ann@example.org", "s1")
    with caplog.at_level(logging.WARNING, logger="fedhive.api"):
        r = await http.delete("/sessions/s1", headers=ann)
    assert r.status_code == 204
    assert (await http.get("/sessions/s1", headers=ann)).status_code == 404
    assert any("MLflow runs" in m and "were not" in m for m in caplog.messages), caplog.messages
    assert (await http.get("/ui/data/sessions", headers=ann)).json() == []
