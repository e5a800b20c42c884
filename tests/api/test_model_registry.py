"""The model registry over HTTP: uploads are checked safetensors, versions count up, downloads
return the exact bytes, and other users' models do not exist for you."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from api_harness import UPLOAD_LIMIT, Api, one_line_detail

from fedhive.core.codec import decode, encode
from fedhive.storage import models_repo


def weights(value: float = 0.0) -> bytes:
    return encode({"linear.weight": np.full((3, 4), value, np.float32), "linear.bias": np.full(3, value, np.float32)})


async def upload(
    api: Api, headers: dict[str, str], data: bytes, name: str = "iris", spec: str = "logreg"
) -> httpx.Response:
    files = {"file": ("model.safetensors", data, "application/octet-stream")}
    return await api.client.post("/models", data={"name": name, "model_spec": spec}, files=files, headers=headers)


async def test_uploads_become_numbered_versions(api: Api) -> None:
    ann = await api.user("ann@example.org")
    first = await upload(api, ann, weights(0.0))
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["version"], body["model_spec"]) == ("iris", 1, "logreg")
    assert body["sha256"] == hashlib.sha256(weights(0.0)).hexdigest()
    assert body["spec"] == {
        "linear.weight": {"shape": [3, 4], "dtype": "float32"},
        "linear.bias": {"shape": [3], "dtype": "float32"},
    }
    second = await upload(api, ann, weights(1.0), spec="simple-dnn:8")
    assert second.status_code == 201 and second.json()["version"] == 2
    models = (await api.client.get("/models", headers=ann)).json()
    assert [(m["name"], m["latest_version"]) for m in models] == [("iris", 2)]
    versions = (await api.client.get("/models/iris/versions", headers=ann)).json()
    assert [(v["version"], v["model_spec"]) for v in versions] == [(1, "logreg"), (2, "simple-dnn:8")]
    one = (await api.client.get("/models/iris/versions/2", headers=ann)).json()
    assert one["sha256"] == hashlib.sha256(weights(1.0)).hexdigest()


async def test_download_returns_the_exact_bytes(api: Api) -> None:
    ann = await api.user("ann@example.org")
    await upload(api, ann, weights(0.5))
    response = await api.client.get("/models/iris/versions/1/download", headers=ann)
    assert response.status_code == 200
    assert response.content == weights(0.5)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"sha256:{hashlib.sha256(weights(0.5)).hexdigest()}"'
    assert 'filename="iris-v1.safetensors"' in response.headers["content-disposition"]
    params = decode(response.content, max_bytes=UPLOAD_LIMIT)
    assert float(params["linear.bias"][0]) == 0.5


async def test_other_users_models_are_404(api: Api) -> None:
    ann, bob = await api.user("ann@example.org"), await api.user("bob@example.org")
    await upload(api, ann, weights())
    for path in ("/models/iris/versions", "/models/iris/versions/1", "/models/iris/versions/1/download"):
        response = await api.client.get(path, headers=bob)
        assert response.status_code == 404, path
        one_line_detail(response.json())
    assert (await api.client.get("/models", headers=bob)).json() == []
    assert (await api.client.get("/models/iris/versions/9", headers=ann)).status_code == 404
    # Bob's upload under the same name is his own model, version 1.
    theirs = await upload(api, bob, weights(2.0))
    assert theirs.status_code == 201 and theirs.json()["version"] == 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"definitely not safetensors", "not safetensors"),
        (b"\x00" * 4, "shorter than its 8-byte header"),
        (encode({"w": np.array([1.0, np.nan], np.float32)}), "NaN or infinite"),
        (encode({}), "no tensors"),
    ],
)
async def test_bad_model_files_are_422_and_store_nothing(api: Api, data: bytes, expected: str) -> None:
    ann = await api.user("ann@example.org")
    response = await upload(api, ann, data)
    assert response.status_code == 422
    assert expected in one_line_detail(response.json())
    with api.services.db.session(read_only=True) as s:
        assert models_repo.list_models(s, api.user_id("ann@example.org")) == []


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [("iris", "transformer-xl", "unknown model"), ("../etc", "logreg", "name"), ("", "logreg", "name")],
)
async def test_bad_names_and_specs_are_422(api: Api, name: str, spec: str, expected: str) -> None:
    ann = await api.user("ann@example.org")
    response = await upload(api, ann, weights(), name=name, spec=spec)
    assert response.status_code == 422
    assert expected in one_line_detail(response.json())


async def test_a_model_file_over_the_limit_is_413(api: Api) -> None:
    ann = await api.user("ann@example.org")
    big = encode({"w": np.zeros(UPLOAD_LIMIT // 4 + 1, np.float32)})
    response = await upload(api, ann, big)
    assert response.status_code == 413
    assert str(UPLOAD_LIMIT) in one_line_detail(response.json())
