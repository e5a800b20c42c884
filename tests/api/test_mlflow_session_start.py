"""POST /sessions/start with ``mlflow_model=NAME/VERSION``: the registered version in a real
``mlflow server`` becomes the session's initial model (its spec decides the architecture), and a
wrong name, version or use case, or a server that does not answer, is one line with its status."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_harness import Api, make_settings, one_line_detail

from fedhive.cli.site_options import plan_builtin
from fedhive.core.params import Params
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation
from fedhive.service.settings import Settings
from tracking.conftest import free_port, mlflow_server  # noqa: F401  (fixture, found by name)

pytestmark = [pytest.mark.mlflow, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def registered(mlflow_server: str) -> Params:  # noqa: F811
    """One short iris federation tracked on the server and registered as iris_model version 1."""
    from fedhive.tracking.mlflow_tracker import MlflowTracker

    config = make_config(rounds=1, min_clients=2, epochs=2, model="simple-dnn:8", seed=0, data={"dataset": "iris"})
    plan = plan_builtin(config, DataSpec(dataset="iris"), 2)
    tracker = MlflowTracker(mlflow_server, register_as="iris_model", tags={"use_case": "iris"})
    run = run_federation(
        plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator,
        observers=[tracker.attach],
    )  # fmt: skip
    result = asyncio.run(run)
    assert tracker.model_version == "1", tracker.failure
    return result.params


@pytest.fixture
def settings(tmp_path: Path, mlflow_server: str) -> Settings:  # noqa: F811
    return make_settings(tmp_path, mlflow_tracking_uri=mlflow_server)


async def start(api: Api, headers: dict[str, str], **form: object) -> httpx.Response:
    data = {k: str(v) for k, v in form.items()}
    return await api.client.post("/sessions/start", data=data, headers=headers)


async def test_the_registered_version_is_the_initial_model(api: Api, registered: Params) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, mlflow_model="iris_model/1", mlflow_use_case="iris", rounds=2, min_peers=2)
    assert response.status_code == 201, response.text
    (request,) = api.launcher.started
    assert request.config.model == "simple-dnn:8" and request.initial_model is None
    assert request.initial_params is not None
    source, params = request.initial_params
    assert source == "MLflow model iris_model/1"
    assert list(params) == list(registered)
    for name, array in registered.items():
        np.testing.assert_array_equal(params[name], array)


@pytest.mark.parametrize(
    ("form", "status", "expected"),
    [
        ({"mlflow_model": "iris_model"}, 422, "must be NAME/VERSION"),
        ({"mlflow_model": "no_such_model/1"}, 404, "no MLflow model named 'no_such_model'"),
        ({"mlflow_model": "iris_model/9"}, 404, "MLflow model 'iris_model' has no version 9 (newest: 1)"),
        ({"mlflow_model": "iris_model/1", "mlflow_use_case": "wine"}, 422, "has use case 'iris', not the use case"),
        ({"mlflow_model": "iris_model/1", "model": "logreg"}, 422, "only one"),
        ({"mlflow_use_case": "iris"}, 422, "mlflow_use_case: needs mlflow_model"),
    ],
)
async def test_a_wrong_mlflow_model_is_one_line(
    api: Api, registered: Params, form: dict[str, str], status: int, expected: str
) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, **form)
    assert response.status_code == status
    assert expected in one_line_detail(response.json())
    assert api.launcher.started == [] and (await api.client.get("/sessions", headers=ann)).json() == []


async def test_an_unreachable_server_is_503_without_its_address(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    dead = f"http://127.0.0.1:{free_port()}"
    api.services.settings.mlflow_tracking_uri = dead
    response = await start(api, ann, mlflow_model="iris_model/1")
    assert response.status_code == 503
    detail = one_line_detail(response.json())
    assert "MLflow tracking server is unreachable" in detail and "127.0.0.1" not in detail


async def test_without_mlflow_installed_the_answer_says_so(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    ann = await api.user("ann@example.org")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    response = await start(api, ann, mlflow_model="iris_model/1")
    assert response.status_code == 501
    assert "pip install 'fedhive[mlflow]'" in one_line_detail(response.json())
