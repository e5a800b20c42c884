"""A seed model kept in an S3 bucket (FEDn's way of starting a session), read by key from a real
S3 server and checked like any initial model."""

from __future__ import annotations

import boto3
import numpy as np
import pytest
from test_s3_artifacts import new_bucket, s3_env  # noqa: F401 (a fixture)

from fedhive.cli.initial_model import load_initial_model
from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import ConfigError, StorageError

pytestmark = pytest.mark.s3


@pytest.mark.usefixtures("s3_env")
def test_an_initial_model_is_read_from_a_bucket_by_key(s3: str) -> None:
    bucket = new_bucket()
    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket=bucket)
    seed = Params({"w": np.arange(5, dtype=np.float32), "b": np.zeros(1, np.float32)})
    client.put_object(Bucket=bucket, Key="seeds/model.safetensors", Body=codec.encode(seed))
    loaded = load_initial_model(f"s3://{bucket}/seeds/model.safetensors?endpoint={s3}", seed.spec)
    assert codec.encode(loaded) == codec.encode(seed)
    with pytest.raises(StorageError, match="does not exist"):
        load_initial_model(f"s3://{bucket}/seeds/other.safetensors?endpoint={s3}", seed.spec)
    wrong = Params({"w": np.zeros(5, np.float64), "b": np.zeros(1, np.float32)}).spec
    with pytest.raises(ConfigError, match="tensor 'w' has dtype float32, expected float64"):
        load_initial_model(f"s3://{bucket}/seeds/model.safetensors?endpoint={s3}", wrong)
