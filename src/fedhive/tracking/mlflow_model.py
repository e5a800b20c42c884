"""The final model as an MLflow model: the safetensors file plus a ``python_function`` flavour.

``mlflow.pyfunc.load_model(uri).predict(x)`` rebuilds the torch module named by the model spec
(its sizes read off the tensors' shapes), loads the weights and returns class indices. The weights
stay a safetensors artifact (``weights/model.safetensors``): no pickled tensors, and any fedhive
node can read them back with ``codec.decode``. Inputs are the standardised feature rows the model
was trained on.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import ConfigError

INSTALL_HINT = "MLflow tracking needs the extra: pip install 'fedhive[mlflow]'"
WEIGHTS = "model.safetensors"
_MAX_BYTES = 1 << 33


# MLflow's HTTP client retries a dead server 7 times with exponential backoff (minutes) and waits
# 120 s per request; an observer holds up its session's event bus meanwhile. These bound a call to
# about a minute. A user who sets the variables keeps their own values.
# MLflow also writes "View run ... at URL" to stdout as each run ends: fedhive prints its own line
# (on stderr with --json), and the stdout of ``--json`` must hold JSON only.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class MlflowMissing(ConfigError):
    """The optional ``mlflow`` package is not installed; the message says how to install it."""


def import_mlflow() -> Any:
    """``mlflow``, imported on first use: the base install does not depend on it."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        raise MlflowMissing(INSTALL_HINT) from None


def load_weights(path: str | Path) -> Params:
    return codec.decode(Path(path).read_bytes(), max_bytes=_MAX_BYTES, what="MLflow model weights")


def save_pyfunc(directory: Path, params: Params, model_spec: str, metadata: dict[str, str]) -> Path:
    """Writes an MLflow model directory at ``directory / 'model'``; returns its path."""
    mlflow = import_mlflow()
    weights = directory / WEIGHTS
    weights.write_bytes(codec.encode(params, {"model_spec": model_spec, **metadata}))
    target = directory / "model"
    mlflow.pyfunc.save_model(
        path=str(target),
        python_model=_pyfunc_class(mlflow)(),
        artifacts={"weights": str(weights)},
        metadata={"fedhive_model_spec": model_spec, **metadata},
        # fedhive itself is what loads the weights; pinning it keeps the model's environment honest
        pip_requirements=["fedhive"],
    )
    return target


def predict(params: Params, model_spec: str, x: np.ndarray) -> np.ndarray:
    """Class indices for rows ``x`` with a torch model spec (``logreg``, ``simple-dnn``, ``cnn``)."""
    import torch

    from fedhive.learning.models import build_model, parse_model_spec

    spec = parse_model_spec(model_spec)
    if not spec.uses_torch:
        raise ConfigError(f"model {model_spec!r} has no MLflow predict; use a torch model spec")
    weights = [a for name, a in params.items() if name.endswith("weight")]
    num_classes = int(weights[-1].shape[0])
    num_features = int(np.prod(weights[0].shape[1:])) if spec.kind != "cnn" else 28 * 28
    module = build_model(spec, num_features, num_classes)
    module.load_state_dict({name: torch.from_numpy(np.array(a)) for name, a in params.items()})
    module.eval()
    with torch.no_grad():
        logits = module(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    return np.asarray(logits.argmax(dim=1).numpy())


def _pyfunc_class(mlflow: Any) -> type:
    """The ``PythonModel`` subclass, made here because its base class lives in the optional mlflow.
    cloudpickle stores it by value, so loading needs fedhive and mlflow but not this function."""

    class FedhiveModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
        def load_context(self, context: Any) -> None:
            self.params = load_weights(context.artifacts["weights"])
            self.spec = str(context.model_config.get("model_spec", "")) if context.model_config else ""
            if not self.spec:
                meta = codec.read_header(Path(context.artifacts["weights"]).read_bytes(), max_bytes=_MAX_BYTES)[1]
                self.spec = meta.get("model_spec", "")

        def predict(self, context: Any, model_input: Any, params: Any = None) -> np.ndarray:
            return predict(self.params, self.spec, np.asarray(model_input, dtype=np.float32))

    return FedhiveModel
