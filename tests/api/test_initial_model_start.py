"""POST /sessions/start with ``initial_model``: a registered version (``models:/NAME/VERSION``) or an
object in the server's own S3 artifact bucket, never a path on the server; the object is read
with the server's credentials and handed to the launcher, which checks that it fits the session.
The S3 cases run against a real S3 server (moto); the fit, naming the tensor, is tested with the
real session manager in tests/service/test_platform_initial_model.py."""

from __future__ import annotations

from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from api_harness import Api, make_settings, one_line_detail

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.service.settings import Settings
from storage.conftest import s3  # noqa: F401  (fixture, found by name)
from storage.test_s3_artifacts import new_bucket, s3_env  # noqa: F401  (s3_env: a fixture)

SEED = Params({"weight": np.full((64, 10), 0.5, np.float32), "bias": np.zeros(10, np.float32)})


async def start(api: Api, headers: dict[str, str], **form: object) -> httpx.Response:
    data = {"min_peers": "2", **{k: str(v) for k, v in form.items()}}
    return await api.client.post("/sessions/start", data=data, headers=headers)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"initial_model": "/etc/passwd"}, "a path on the server is never read"),
        ({"initial_model": "runs/x/model.safetensors"}, "a path on the server is never read"),
        ({"initial_model": "file:///etc/passwd"}, "a path on the server is never read"),
        ({"initial_model": "s3://bucket/seed.safetensors"}, "keeps its artifacts on disk, not in S3"),
        ({"initial_model": "s3://b/k", "model_name": "mine"}, "only one"),
        ({"initial_model": "models:/iris_model"}, "must be NAME/VERSION"),
    ],
)
async def test_what_the_server_will_not_read_is_one_line(api: Api, form: dict[str, str], expected: str) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, **form)
    assert response.status_code == 422, response.text
    assert expected in one_line_detail(response.json())
    assert api.launcher.started == []


class TestInTheServersBucket:
    """The server's artifact store is an S3 bucket: its objects (outside fedhive's own areas) can be named."""

    pytestmark = pytest.mark.s3

    @pytest.fixture
    def bucket(self, s3: str, s3_env: None) -> str:  # noqa: F811
        name = new_bucket()
        client = boto3.client("s3", endpoint_url=s3)
        client.create_bucket(Bucket=name)
        client.put_object(Bucket=name, Key="seeds/digits.safetensors", Body=codec.encode(SEED))
        client.put_object(Bucket=name, Key="fedhive/sha256/ab/cdef", Body=codec.encode(SEED))
        client.put_object(Bucket=name, Key="seeds/notes.txt", Body=b"not a model")
        return name

    @pytest.fixture
    def settings(self, tmp_path: Path, s3: str, bucket: str) -> Settings:  # noqa: F811
        return make_settings(tmp_path, artifacts_url=f"s3://{bucket}/fedhive?endpoint={s3}&region=us-east-1")

    async def test_the_object_is_handed_to_the_launcher(self, api: Api, bucket: str) -> None:
        ann = await api.user("ann@example.org")
        api.online_peers(2)
        response = await start(api, ann, initial_model=f"s3://{bucket}/seeds/digits.safetensors", model="logreg-np")
        assert response.status_code == 201, response.text
        (request,) = api.launcher.started
        assert request.initial_params is not None and request.initial_model is None
        source, params = request.initial_params
        assert source == f"initial model s3://{bucket}/seeds/digits.safetensors"
        assert codec.encode(params) == codec.encode(SEED)

    @pytest.mark.parametrize(
        ("key", "status", "expected"),
        [
            ("seeds/missing.safetensors", 404, "no object s3://"),
            ("seeds/notes.txt", 422, "is not a safetensors file fedhive can read"),
            ("fedhive/sha256/ab/cdef", 422, "fedhive's own artifacts cannot be named"),
            ("seeds/../fedhive/sha256/ab/cdef", 422, "'.' or '..' segments"),
            ("seeds/digits.safetensors?endpoint=http://169.254.169.254", 422, "without credentials or options"),
        ],
    )
    async def test_a_wrong_object_is_one_line(
        self, api: Api, bucket: str, key: str, status: int, expected: str
    ) -> None:
        ann = await api.user("ann@example.org")
        api.online_peers(2)
        response = await start(api, ann, initial_model=f"s3://{bucket}/{key}")
        assert response.status_code == status, response.text
        assert expected in one_line_detail(response.json())
        assert api.launcher.started == []

    async def test_another_bucket_is_refused(self, api: Api) -> None:
        ann = await api.user("ann@example.org")
        api.online_peers(2)
        response = await start(api, ann, initial_model="s3://someone-elses-bucket/seeds/digits.safetensors")
        assert response.status_code == 422, response.text
        assert "only objects in this server's artifact bucket" in one_line_detail(response.json())
