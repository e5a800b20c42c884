"""Start from a registered MLflow model: ``NAME/VERSION`` (+ a use-case tag) -> model spec + params.

As the Synthema components did, the model to train is taken from the MLflow model registry. What
is read is the safetensors file the tracker logged with the model (``artifacts/model.safetensors``
inside the registered model directory), decoded and validated by fedhive's codec; the pyfunc
flavour (cloudpickled Python) is never loaded, so a registry entry cannot run code in fedhive.
The model spec that decides the architecture is the one written into that file's metadata.

Every failure is one line a person can act on, as a fedhive error:

    ConfigError        malformed NAME/VERSION, use-case mismatch, not a fedhive model, no extra
    NotFound           no registered model with that name, or no such version
    TrackingUnavailable  the tracking server cannot be reached within the timeout
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedhive.core import codec
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import ConfigError, PayloadError, TransportError
from fedhive.learning.models import parse_model_spec
from fedhive.storage.errors import NotFound
from fedhive.tracking.mlflow_model import WEIGHTS, import_mlflow

USE_CASE_TAG = "use_case"
PROBE_TIMEOUT_S = 5.0
_MAX_BYTES = 1 << 33
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TrackingUnavailable(TransportError):
    """The MLflow tracking server did not answer (refused, unresolvable, timed out)."""


@dataclass(frozen=True, slots=True)
class MlflowModelRef:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class RegisteredModel:
    ref: MlflowModelRef
    model_spec: str
    params: Params
    run_id: str | None
    tags: dict[str, str]


def parse_model_ref(text: str) -> MlflowModelRef:
    """``iris_model/1`` -> (``iris_model``, 1); ConfigError naming the expected form otherwise."""
    name, sep, version = text.strip().rpartition("/")
    if not sep or not name or _CONTROL.search(name) or len(name) > 255 or not re.fullmatch(r"[1-9][0-9]{0,9}", version):
        raise ConfigError(f"MLflow model must be NAME/VERSION with a version from 1, e.g. iris_model/1; got {text!r}")
    return MlflowModelRef(name, int(version))


def redact(uri: str) -> str:
    """The URI without user name and password, for messages and logs."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_reachable(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """For a tracking server URL, one bounded request; a local store is always there.

    MLflow's own client retries a dead server with backoff for minutes; asking once first turns
    that into a clear error within ``timeout_s``. Any HTTP answer counts as reachable (a proxy
    may refuse ``/health``); only a failed connection or a timeout does not."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return
    import httpx  # here: only a server's URL needs it, and it costs every command's start otherwise

    try:
        httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(tracking_uri)} is unreachable ({type(exc).__name__}, "
            f"waited at most {timeout_s:g} s)"
        ) from None


def load_registered_model(
    tracking_uri: str, ref: MlflowModelRef, *, use_case: str | None = None, timeout_s: float = PROBE_TIMEOUT_S
) -> RegisteredModel:
    """Blocking. The registered version's weights and model spec, checked; see the module doc."""
    mlflow = import_mlflow()
    check_reachable(tracking_uri, timeout_s)
    store = local_store_path(tracking_uri)
    if store is not None and not store.exists():  # asking would create an empty store there
        raise NotFound(f"no MLflow model named {ref.name!r}: there is no MLflow store at {store} yet")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registered = _call(
        tracking_uri, lambda: client.get_registered_model(ref.name), f"no MLflow model named {ref.name!r}"
    )
    version = _call(
        tracking_uri,
        lambda: client.get_model_version(ref.name, str(ref.version)),
        f"MLflow model {ref.name!r} has no version {ref.version}{_latest(registered)}",
    )
    tags = {**dict(registered.tags or {}), **dict(version.tags or {})}
    if use_case is not None and tags.get(USE_CASE_TAG) != use_case:
        got = tags.get(USE_CASE_TAG)
        have = f"use case {got!r}" if got is not None else f"no {USE_CASE_TAG!r} tag"
        raise ConfigError(f"MLflow model {ref} has {have}, not the use case {use_case!r} asked for")
    source = _call(tracking_uri, lambda: client.get_model_version_download_uri(ref.name, str(ref.version)), "")
    data = _download_weights(mlflow, tracking_uri, ref, f"{str(source).rstrip('/')}/artifacts/{WEIGHTS}")
    what = f"MLflow model {ref} weights"
    try:
        params = codec.decode(data, max_bytes=_MAX_BYTES, what=what)
        metadata = codec.read_header(data, max_bytes=_MAX_BYTES)[1]
    except PayloadError as exc:
        raise ConfigError(f"{what} are not a valid safetensors file: {exc}") from None
    spec_text = metadata.get("model_spec", "")
    if not spec_text:
        raise ConfigError(f"MLflow model {ref} names no model spec in its weights; was it logged by fedhive?")
    spec = parse_model_spec(spec_text)
    return RegisteredModel(ref, str(spec), Params({n: a.copy() for n, a in params.items()}), version.run_id, tags)


def local_store_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for anything else."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]).resolve() if tracking_uri.startswith(prefix) else None


def shapes(spec: ParamSpec) -> str:
    """``fc1.weight 8x4, fc1.bias 8, ...``: a model's shapes on one line."""
    return ", ".join(f"{t.name} {'x'.join(map(str, t.shape)) or 'scalar'}" for t in spec.tensors)


def check_fits(model: RegisteredModel, expected: ParamSpec, data: str) -> None:
    """ConfigError naming both shapes when the registered weights do not fit the data set."""
    got = model.params.spec
    if got != expected:
        raise ConfigError(
            f"MLflow model {model.ref} ({model.model_spec}) does not fit {data}: it has [{shapes(got)}], "
            f"the data set needs [{shapes(expected)}]"
        )


def _download_weights(mlflow: Any, tracking_uri: str, ref: MlflowModelRef, artifact_uri: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fedhive-mlflow-") as tmp:
        path = _call(
            tracking_uri,
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri
            ),
            f"MLflow model {ref} has no fedhive weights ({WEIGHTS}); only models logged by fedhive can seed a session",
        )
        file = Path(path)
        size = file.stat().st_size
        if size > _MAX_BYTES:
            raise ConfigError(f"MLflow model {ref} weights are {size} bytes, over the limit of {_MAX_BYTES}")
        return file.read_bytes()


def _call(tracking_uri: str, fn: Any, not_found: str) -> Any:
    """Run one MLflow call, mapping its exceptions to fedhive's at this boundary."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" and not_found:
            raise NotFound(not_found) from None
        text = " ".join(str(exc.message).split())
        if "Max retries exceeded" in text or "Connection" in text or "timed out" in text:
            raise TrackingUnavailable(f"MLflow tracking server {redact(tracking_uri)} stopped answering") from None
        raise ConfigError(f"MLflow refused the request ({exc.error_code}): {text[:300]}") from None
    except OSError as exc:
        raise TrackingUnavailable(
            f"MLflow store {redact(tracking_uri)} cannot be read: {exc.strerror or exc}"
        ) from None


def _latest(registered: Any) -> str:
    versions = [int(v.version) for v in (registered.latest_versions or [])]
    return f" (newest: {max(versions)})" if versions else ""
