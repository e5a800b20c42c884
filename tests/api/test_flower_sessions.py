"""A Flower app installed on the platform (``fedhive serve --app flower:PATH``): listed by its
project name, started over the API by that name with its ServerApp's settings as defaults; a
remote user can name installed apps only, never a path on the server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (pip install 'fedhive[flower]')")

from api_harness import Api, make_settings

from fedhive.errors import AppError, ConfigError
from fedhive.service.apps import InstalledApps
from fedhive.service.settings import Settings

APP = Path(__file__).parents[1] / "compat" / "apps" / "numpy_message"
NAME = "flhive-numpy"  # [project].name of that Flower project


def flower_app(root: Path) -> Path:
    folder = root / "numpy_message"
    if not folder.exists():
        shutil.copytree(APP, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, apps=[f"flower:{flower_app(tmp_path)}"])


def test_a_flower_app_is_installed_under_its_project_name(tmp_path: Path) -> None:
    apps = InstalledApps.load([f"flower:{flower_app(tmp_path)}"])
    assert list(apps) == ["builtin", NAME]
    project = apps.flower(NAME)
    assert project is not None and project.num_rounds == 3  # num-server-rounds, read from the ServerApp
    assert apps.flower("builtin") is None
    assert apps[NAME].run_config["learning-rate"] == 0.05  # [tool.flwr.app.config]
    with pytest.raises(AppError, match="flower:PATH"):
        InstalledApps.load(["flower:"])
    with pytest.raises(ConfigError, match="is not a Flower project"):
        InstalledApps.load([f"flower:{tmp_path / 'nothing'}"])


async def test_start_a_flower_session_by_name_with_its_serverapp_defaults(api: Api, tmp_path: Path) -> None:
    apps = (await api.client.get("/apps", headers=await api.user("ann@example.org"))).json()
    assert [a["name"] for a in apps] == ["builtin", NAME]
    assert str(tmp_path) not in str(apps)  # no server path is shown
    api.online_peers(2)
    ann = await api.signin("ann@example.org")
    response = await api.client.post("/sessions/start", data={"app": NAME}, headers=ann)
    assert response.status_code == 201, response.text
    config = api.launcher.started[-1].config
    assert (config.app, config.app_digest) == (NAME, api.services.apps[NAME].digest)
    assert (config.rounds, config.strategy) == (3, "fedavg")  # the ServerApp's num_rounds and FedAvg
    assert config.run_config["learning-rate"] == 0.05

    api.online_peers(2)  # the first session holds the others
    form = {"app": NAME, "rounds": "5", "strategy": "fedprox:mu=0.1", "run_config": '{"learning-rate": 0.01}'}
    response = await api.client.post("/sessions/start", data=form, headers=ann)
    assert response.status_code == 201, response.text
    config = api.launcher.started[-1].config
    assert (config.rounds, config.strategy, config.run_config["learning-rate"]) == (5, "fedprox:mu=0.1", 0.01)


async def test_a_remote_user_cannot_name_a_server_path(api: Api, tmp_path: Path) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    for app in (f"flower:{flower_app(tmp_path)}", str(flower_app(tmp_path)), "flower:/etc"):
        response = await api.client.post("/sessions/start", data={"app": app}, headers=ann)
        assert response.status_code == 422, response.text
        assert "no app" in response.json()["detail"] and NAME in response.json()["detail"]
    assert api.launcher.started == []
