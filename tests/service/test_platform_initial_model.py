"""A platform session started from a seed model in the server's S3 bucket (``initial_model``), with
the real session manager and local peers: weights that do not fit the session's model are 422
naming the tensor, and leave no session behind; weights that fit are what the session trains from."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest

from fedhive.core import codec
from fedhive.core.params import Params
from service.test_platform_flow import platform, sign_up_and_in, wait_for
from storage.conftest import s3  # noqa: F401  (fixture, found by name)
from storage.test_s3_artifacts import new_bucket, s3_env  # noqa: F401  (s3_env: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.s3]

# logreg-np on digits: 64 features, 10 classes
FITS = Params({"weight": np.full((64, 10), 0.5, np.float32), "bias": np.full(10, 0.25, np.float32)})
WRONG = Params({"weight": np.full((3, 10), 0.5, np.float32), "bias": np.full(10, 0.25, np.float32)})


@pytest.mark.usefixtures("s3_env")
async def test_a_session_starts_from_a_seed_model_in_the_bucket(tmp_path: Path, s3: str) -> None:  # noqa: F811
    bucket = new_bucket()
    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket=bucket)
    for name, params in (("fits", FITS), ("wrong", WRONG)):
        client.put_object(Bucket=bucket, Key=f"seeds/{name}.safetensors", Body=codec.encode(params))
    store = f"s3://{bucket}/fedhive?endpoint={s3}&region=us-east-1"
    async with platform(tmp_path, local_clients=2, artifacts_url=store) as http:
        auth = await sign_up_and_in(http)

        async def two_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 2

        await wait_for(two_online)
        # lr near 0: one round leaves the model where it started, to within float32 rounding
        form = {"model": "logreg-np", "rounds": "1", "epochs": "1", "lr": "1e-9", "min_peers": "2"}

        wrong = f"s3://{bucket}/seeds/wrong.safetensors"
        r = await http.post("/sessions/start", headers=auth, data={**form, "initial_model": wrong})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            f"initial model {wrong} tensor 'weight' has shape (3, 10), expected (64, 10) (the session's model)"
        )
        assert (await http.get("/sessions", headers=auth)).json() == []  # nothing left behind
        await wait_for(two_online)  # and the peers are free again

        fits = f"s3://{bucket}/seeds/fits.safetensors"
        r = await http.post("/sessions/start", headers=auth, data={**form, "initial_model": fits})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        status = await wait_for(finished, deadline_s=120)
        assert status["status"] == "COMPLETED", status
        r = await http.get(f"/models/session-{sid}/versions/1/download", headers=auth)
        assert r.status_code == 200, r.text
        final = codec.decode(r.content, max_bytes=1 << 20)
        for name, array in FITS.items():
            np.testing.assert_allclose(final[name], array, atol=1e-5)
