"""A run's model in MLflow: saved as a ``python_function`` model among the run's artifacts, and
registered as a new version of a named model (``mlflow_tracker`` for a session, ``node_runs`` for a
peer)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fedhive.core.params import Params
from fedhive.tracking.mlflow_model import save_pyfunc
from fedhive.tracking.mlflow_store import quoted


def log_model(client: Any, run_id: str, params: Params, spec: str, meta: dict[str, str], path: str = "model") -> None:
    """Blocking. ``params`` as a model under ``path`` among the run's artifacts."""
    with tempfile.TemporaryDirectory(prefix="fedhive-mlflow-") as tmp:
        model_dir = save_pyfunc(Path(tmp), params, spec, meta)
        client.log_artifacts(run_id, str(model_dir), path)


def register_model(client: Any, name: str, run_id: str, tags: dict[str, str], path: str = "model") -> str:
    """Blocking. The run's model under ``path`` as a new version of ``name`` (created if it is new);
    returns the version."""
    if not client.search_registered_models(filter_string=f"name = '{quoted(name)}'"):
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name)
        except MlflowException as exc:  # another node (a peer of the same session) created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    return str(client.create_model_version(name, source, run_id=run_id, tags=tags).version)
