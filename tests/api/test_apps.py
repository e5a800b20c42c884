"""Installed apps over the API: ``GET /apps`` and ``POST /sessions/start`` with ``app`` and
``run_config`` (what the launcher is handed), and every route but the public ones needing a token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_harness import Api, make_settings, one_line_detail

from fedhive.app.loader import load_app
from fedhive.errors import AppError
from fedhive.service.apps import InstalledApps
from fedhive.service.settings import Settings
from service.platform_user_app import DEFAULT_RUN_CONFIG, NAME, write_app

PUBLIC = {("GET", "/health"), ("POST", "/auth/signup"), ("POST", "/auth/signin")}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The API's settings with the test app installed (``fedhive serve --app FOLDER``)."""
    return make_settings(tmp_path, apps=[str(write_app(tmp_path / "apps"))])


async def test_get_apps_lists_builtin_first_and_the_installed_app(api: Api, tmp_path: Path) -> None:
    assert (await api.client.get("/apps")).status_code == 401
    ann = await api.user("ann@example.org")
    response = await api.client.get("/apps", headers=ann)
    assert response.status_code == 200, response.text
    apps = response.json()
    assert [a["name"] for a in apps] == ["builtin", NAME]
    mine = apps[1]
    assert mine["digest"] == load_app(str(tmp_path / "apps" / "linear-demo")).digest[:12]
    assert mine["hooks"] == ["init", "train", "evaluate", "central_evaluate"]
    assert mine["run_config"] == DEFAULT_RUN_CONFIG
    assert set(mine) == {"name", "digest", "hooks", "run_config"}  # no server path
    spec = (await api.client.get("/openapi.json")).json()
    assert "/apps" in spec["paths"] and spec["paths"]["/apps"]["get"]["security"]


async def test_every_route_but_the_public_ones_needs_a_token(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert ("GET", "/apps") in routes
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        url = path.replace("{session_id}", "abc").replace("{name}", "m").replace("{version}", "1")
        url = url.replace("{dataset_id}", "abc")
        assert "{" not in url, url
        response = await api.client.request(method, url)
        assert response.status_code == 401, (method, path, response.status_code)
        one_line_detail(response.json())


async def test_start_with_an_app_stamps_the_session_and_merges_its_run_config(api: Api) -> None:
    api.online_peers(3)
    ann = await api.user("ann@example.org")
    form = {"app": NAME, "run_config": json.dumps({"marker": 3, "note": "hi"}), "rounds": "2", "min_peers": "3"}
    response = await api.client.post("/sessions/start", data=form, headers=ann)
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["app"] == NAME and session["config"]["app"] == NAME
    config = api.launcher.started[-1].config
    installed = api.services.apps[NAME]
    assert (config.app, config.app_digest) == (NAME, installed.digest)
    assert config.run_config == {"marker": 3, "rows": 40, "note": "hi"}  # the app's defaults under the session's
    assert api.launcher.started[-1].dataset_id is None


async def test_builtin_is_the_default_app(api: Api) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    response = await api.client.post("/sessions/start", data={"model": "logreg"}, headers=ann)
    assert response.status_code == 201, response.text
    assert response.json()["app"] == "builtin"
    config = api.launcher.started[-1].config
    assert config.app == "builtin" and config.app_digest == api.services.apps.builtin.digest


async def test_an_app_that_is_not_installed_is_422_naming_the_installed_ones(api: Api) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    response = await api.client.post("/sessions/start", data={"app": "nope"}, headers=ann)
    assert response.status_code == 422
    detail = one_line_detail(response.json())
    assert "'nope'" in detail and "builtin" in detail and NAME in detail
    assert api.launcher.started == []


@pytest.mark.parametrize(
    ("form", "files", "field"),
    [
        ({"label": "y"}, {"dataset": ("d.csv", b"a,y\n1,0\n2,1\n", "text/csv")}, "dataset"),
        ({"dataset_id": "abc"}, None, "dataset_id"),
        ({"model": "logreg"}, None, "model"),
        ({"model_name": "flowers"}, None, "model_name"),
        ({"mlflow_model": "m/1"}, None, "mlflow_model"),
    ],
)
async def test_data_or_a_model_with_another_app_is_422(
    api: Api, form: dict[str, str], files: dict[str, tuple[str, bytes, str]] | None, field: str
) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    response = await api.client.post("/sessions/start", data={"app": NAME, **form}, files=files, headers=ann)
    assert response.status_code == 422, response.text
    detail = one_line_detail(response.json())
    assert detail.startswith(f"{field}:") and "builtin" in detail
    assert api.launcher.started == []
    assert (await api.client.get("/datasets", headers=ann)).json() == []  # nothing stored


@pytest.mark.parametrize(
    "run_config",
    ["not json", "[1, 2]", '"text"', '{"a": [1]}', '{"a": {"b": 1}}', '{"a": null}', '{"a": NaN}', '{"a": 1e999}',
     json.dumps({"k" * 65: 1}), '{"a\\u0000": 1}', '{"a": "x\\u0000"}', '{"a": "\\ud800"}'],
)  # fmt: skip
async def test_a_malformed_run_config_is_422(api: Api, run_config: str) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    response = await api.client.post("/sessions/start", data={"app": NAME, "run_config": run_config}, headers=ann)
    assert response.status_code == 422, response.text
    assert one_line_detail(response.json()).startswith("run_config")
    assert api.launcher.started == []


def test_installed_apps_refuse_a_clash_of_names(tmp_path: Path) -> None:
    first, second = write_app(tmp_path / "a"), write_app(tmp_path / "b")
    (second / "linear_app.py").write_text((second / "linear_app.py").read_text() + "\n# another version\n")
    with pytest.raises(AppError, match="two installed apps are named"):
        InstalledApps.load([str(first), str(second)])
    with pytest.raises(AppError, match="does not exist"):
        InstalledApps.load([str(tmp_path / "missing.py:app")])
    assert list(InstalledApps.load(["builtin", str(first), str(first)])) == ["builtin", NAME]


def test_fedhive_apps_is_comma_separated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDHIVE_APPS", "pkg.mod:app, ./project ,")
    assert Settings.from_env(home=tmp_path).apps == ["pkg.mod:app", "./project"]
    assert Settings.from_env(home=tmp_path, apps=["x.py:app"]).apps == ["x.py:app"]
