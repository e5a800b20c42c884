"""``--initial-model``: start a session from weights trained before, wherever they are kept.

- ``path/to/model.safetensors``: a file (a fedhive run's ``model.safetensors`` or ``best.safetensors``);
- ``s3://bucket/key?endpoint=URL``: an object in S3 or an S3-compatible server (FEDn's seed model);
  credentials come from boto3's usual chain, never the URL;
- ``models:/NAME/VERSION``: a registered MLflow model version (fedhive's safetensors weights only;
  no pickled flavour is ever loaded).

The weights are decoded by fedhive's codec (no code execution) and checked against the app's
parameter spec: names, shapes and dtypes, with the first mismatch named.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fedhive.core import codec
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import ConfigError, PayloadError

MAX_BYTES = 1 << 36


def load_initial_model(ref: str, spec: ParamSpec, *, mlflow_uri: str | None = None) -> Params:
    """The weights ``ref`` names, checked against ``spec``; ``ConfigError`` in one line otherwise."""
    what = f"initial model {ref}"
    if ref.startswith("models:/"):
        params = _from_mlflow(ref.removeprefix("models:/"), mlflow_uri)
    else:
        data = _read_s3(ref) if ref.startswith("s3://") else _read_file(Path(ref))
        try:
            params = codec.decode(data, max_bytes=MAX_BYTES, what=what)
        except PayloadError as exc:
            raise ConfigError(f"{what} is not a safetensors file fedhive can read: {exc}") from None
    try:
        check_against_spec(params, spec, what=what)
    except PayloadError as exc:
        raise ConfigError(f"{exc} (the app's model)") from None
    return params


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"initial model {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read initial model {path}: {exc.strerror}") from None


def _read_s3(url: str) -> bytes:
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ConfigError("initial model: put no credentials in an s3:// URL; set AWS_ACCESS_KEY_ID and friends")
    key = unquote(parts.path).lstrip("/")
    if not parts.netloc or not key:
        raise ConfigError(f"initial model {url!r}: expected s3://bucket/key")
    endpoint = parse_qs(parts.query).get("endpoint", [None])[-1] or os.environ.get("AWS_ENDPOINT_URL_S3")
    from fedhive.storage.s3_artifacts import read_object  # boto3 loads only when S3 is used

    return read_object(parts.netloc, key, endpoint_url=endpoint, max_bytes=MAX_BYTES)


def _from_mlflow(text: str, tracking_uri: str | None) -> Params:
    from fedhive.tracking.mlflow_options import SIMULATE_STORE
    from fedhive.tracking.mlflow_registry import load_registered_model, parse_model_ref
    from fedhive.tracking.mlflow_store import default_tracking_uri

    uri = tracking_uri or os.environ.get("FEDHIVE_MLFLOW_TRACKING_URI") or default_tracking_uri(SIMULATE_STORE)
    return load_registered_model(uri, parse_model_ref(text)).params
