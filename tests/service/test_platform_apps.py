"""A user's app on the platform end to end: ``fedhive serve --app FOLDER`` with three local
peers, a session started over HTTP with ``app`` and ``run_config``; each peer runs the app
through ``SiteApp`` with its own partition and state, the coordinator evaluates with the app's
``central_evaluate``, and the rounds carry the app's own metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server, poll

from fedhive.core import codec
from fedhive.errors import AppError, ConfigError
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import session_with_app
from fedhive.service.apps import InstalledApps
from fedhive.service.platform import ServeOptions, serve
from fedhive.service.session_manager import SessionManager
from fedhive.service.settings import Settings
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.storage.database import Database
from service.test_platform_flow import platform, sign_up_and_in, wait_for

pytestmark = pytest.mark.slow
ROUNDS = 4


async def test_a_session_runs_the_installed_app_on_the_local_peers(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "apps")
    home = tmp_path / "home"
    async with platform(home, apps=[str(folder)]) as http:
        auth = await sign_up_and_in(http)
        apps = (await http.get("/apps", headers=auth)).json()
        assert [a["name"] for a in apps] == ["builtin", NAME]

        async def three_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 3

        await wait_for(three_online)
        form = {
            "app": NAME,
            "run_config": json.dumps({"marker": 5}),
            "rounds": str(ROUNDS),
            "epochs": "3",
            "lr": "0.1",
            "min_peers": "3",
        }
        r = await http.post("/sessions/start", headers=auth, data=form)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert r.json()["app"] == NAME

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        status = await wait_for(finished, deadline_s=120)
        assert status["status"] == "COMPLETED", status
        session = (await http.get(f"/sessions/{sid}", headers=auth)).json()
        assert session["config"]["data"] == {"peers": ["local-1", "local-2", "local-3"]}
        assert session["config"]["run_config"] == {"marker": 5, "rows": 40}

        rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        # central_evaluate's metrics, the app's own names; the run config reached the coordinator's app
        assert all(set(r["metrics"]) >= {"mse", "marker"} for r in rounds)
        assert all(r["metrics"]["marker"] == 5 for r in rounds)
        assert rounds[-1]["metrics"]["mse"] < rounds[0]["metrics"]["mse"] / 2
        # and the peers' train metrics, aggregated: the run config reached every site too
        assert rounds[-1]["metrics"]["train"]["marker"] == 5
        assert "mse" in rounds[-1]["metrics"]["train"]

        # each peer trained its own partition, in the session's sorted peer list, with its own state
        last = status["last_results"]
        by_peer = {res["client_id"]: res["metrics"] for res in last}
        assert {p: m["partition"] for p, m in by_peer.items()} == {"local-1": 0, "local-2": 1, "local-3": 2}
        assert all(m["rounds"] == ROUNDS for m in by_peer.values())
        for peer in ("local-1", "local-2", "local-3"):
            assert any((home / "state" / peer / NAME).iterdir()), peer

        model = session["final_model"]
        assert model is not None
        versions = (await http.get(f"/models/{model['name']}/versions", headers=auth)).json()
        assert versions[-1]["model_spec"] == f"app:{NAME}"
        download = await http.get(f"/models/{model['name']}/versions/{model['version']}/download", headers=auth)
        assert codec.decode(download.content, max_bytes=1 << 20)["w"].shape == (4,)

        # the peers are free again, and a builtin session still needs no app of its own
        peers = (await http.get("/peers", headers=auth)).json()
        assert sorted(p["status"] for p in peers) == ["ONLINE"] * 3


async def test_an_app_that_does_not_load_stops_the_server_before_it_listens(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, apps=[str(tmp_path / "missing.py:app")])
    with pytest.raises(AppError, match="does not exist"):
        await asyncio.wait_for(serve(settings, ServeOptions(port=0)), 30)
    assert not (tmp_path / "fedhive.db").exists()  # nothing opened


def test_a_killed_server_resumes_an_app_session_with_the_same_app(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "apps")
    home, rounds = tmp_path / "home", 8
    server = Server(home, {}, extra=["--app", str(folder)])
    try:
        http = httpx.Client(base_url=server.url, timeout=30)
        http.post("/auth/signup", json={"email": "ada@example.org", "password": "correct horse"})
        token = http.post("/auth/signin", json={"email": "ada@example.org", "password": "correct horse"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        poll(lambda: sum(p["status"] == "ONLINE" for p in http.get("/peers", headers=auth).json()) == 3, 60)
        form = {"app": NAME, "run_config": json.dumps({"sleep_s": 0.4}), "rounds": str(rounds), "min_peers": "3"}
        r = http.post("/sessions/start", headers=auth, data=form)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        seen = poll(lambda: (n := http.get(f"/sessions/{sid}", headers=auth).json()["rounds_done"]) >= 2 and n, 60)
        assert seen < rounds, "the session finished before it could be interrupted; make rounds slower"
        server.kill()

        server = Server(home, {}, extra=["--app", str(folder)])
        http = httpx.Client(base_url=server.url, timeout=30)
        status = poll(
            lambda: (
                (s := http.get(f"/sessions/{sid}/training-status", headers=auth).json())["status"]
                in ("COMPLETED", "FAILED")
                and s
            ),
            120,
            what="the resumed session's end",
        )
        assert status["status"] == "COMPLETED", f"{status}\n{server.tail()}"
        assert re.search(rf"resuming session {sid} at round \d+", "".join(server.lines)), server.tail()
        history = http.get(f"/sessions/{sid}/rounds", headers=auth).json()
        assert [r["round"] for r in history] == list(range(1, rounds + 1))
        assert all("mse" in r["metrics"] for r in history)
        # each site's ctx.state outlived the process: its round count went on from where it was
        assert all(res["metrics"]["rounds"] >= rounds for res in status["last_results"]), status["last_results"]
    finally:
        server.stop()


def test_a_session_whose_app_is_gone_fails_on_resume_in_one_line(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "apps")
    home = tmp_path / "home"
    server = Server(home, {}, extra=["--app", str(folder)])
    try:
        http = httpx.Client(base_url=server.url, timeout=30)
        http.post("/auth/signup", json={"email": "ada@example.org", "password": "correct horse"})
        token = http.post("/auth/signin", json={"email": "ada@example.org", "password": "correct horse"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        poll(lambda: sum(p["status"] == "ONLINE" for p in http.get("/peers", headers=auth).json()) == 3, 60)
        form = {"app": NAME, "run_config": json.dumps({"sleep_s": 0.5}), "rounds": "50", "min_peers": "3"}
        sid = http.post("/sessions/start", headers=auth, data=form).json()["id"]
        poll(lambda: http.get(f"/sessions/{sid}", headers=auth).json()["rounds_done"] >= 1, 60)
        server.kill()

        server = Server(home, {})  # restarted without the app
        http = httpx.Client(base_url=server.url, timeout=30)
        session = poll(lambda: (s := http.get(f"/sessions/{sid}", headers=auth).json())["status"] == "FAILED" and s, 30)
        assert session["reason"].startswith("cannot resume: app: no app") and "\n" not in session["reason"]
        poll(lambda: sorted(p["status"] for p in http.get("/peers", headers=auth).json()) == ["ONLINE"] * 3, 30)
    finally:
        server.stop()


def test_resume_goes_on_with_a_newer_builtin_but_not_with_other_code_of_an_app(tmp_path: Path) -> None:
    apps = InstalledApps.load([str(write_app(tmp_path / "apps"))])
    db = Database(f"sqlite:///{tmp_path / 'fedhive.db'}")
    db.upgrade()
    try:
        manager = SessionManager(db, LocalArtifactStore(tmp_path / "artifacts"), None, apps=apps)  # type: ignore[arg-type]
        old = SessionConfig(app="builtin", app_digest="0" * 64)
        assert manager._resumable(old).app_digest == apps.builtin.digest  # fedhive upgraded: it goes on
        mine = session_with_app(SessionConfig(), apps[NAME])
        assert manager._resumable(mine) == mine
        with pytest.raises(AppError, match="is not the code session"):
            manager._resumable(mine.model_copy(update={"app_digest": "1" * 64}))
        with pytest.raises(ConfigError, match="no app 'gone' is installed"):
            manager._resumable(mine.model_copy(update={"app": "gone"}))
    finally:
        db.dispose()
