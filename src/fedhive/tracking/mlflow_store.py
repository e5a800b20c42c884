"""Where MLflow keeps fedhive's runs and the names fedhive gives them: the local store's file and its
artifacts, the experiment every node of a session tracks in, and the tags and params a run carries
(``mlflow_tracker`` for a session's coordinator, ``node_runs`` for combiners and peers)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedhive.tracking.mlflow_registry import USE_CASE_TAG, RegisteredModel

SESSION_TAG = "fedhive.session_id"
# coordinator (a session's parent run), combiner, peer (``node_runs``): combiners' runs carry the
# session's id too, so finding a session's run looks at this tag (runs from before it have none).
ROLE_TAG = "fedhive.role"
INITIAL_MODEL_TAG = "fedhive.initial_model"  # NAME/VERSION of the registered model it started from
INITIAL_MODEL_URI_TAG = "fedhive.initial_model_uri"  # models:/NAME/VERSION
INITIAL_MODEL_RUN_TAG = "fedhive.initial_model_run_id"  # the run that produced that version
# Tags a resumed session takes back from its parent run (they were given at its start)
START_TAGS = (USE_CASE_TAG, INITIAL_MODEL_TAG, INITIAL_MODEL_URI_TAG, INITIAL_MODEL_RUN_TAG)
PARAM_KEYS = (
    "strategy",
    "model",
    "rounds",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "fraction",
    "seed",
    "min_clients",
)
DATA_KEYS = ("dataset", "partition", "label")


def default_tracking_uri(home: Path) -> str:
    """The local store: a SQLite file next to the other fedhive state (no server to start)."""
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def artifact_location(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go next to its file: MLflow's default would be
    ``./mlruns`` under whatever directory the process happened to start in."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None  # a server decides where its artifacts go
    return (Path(tracking_uri[len(prefix) :]).resolve().parent / "mlflow-artifacts").as_uri()


def experiment_named(client: Any, name: str, tracking_uri: str) -> str:
    """Blocking. The experiment's id, created if it is new. Every node of a session may track in
    it: when two create it at once, the one that loses reads the winner's."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location(tracking_uri)))
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def start_tags(model: RegisteredModel, use_case: str | None = None) -> dict[str, str]:
    """The tags of a session started from registered model ``model``: its use case (the one asked
    for, else the version's own ``use_case`` tag) and a link to the version and its run."""
    tags = {
        INITIAL_MODEL_TAG: str(model.ref),
        INITIAL_MODEL_URI_TAG: f"models:/{model.ref.name}/{model.ref.version}",
    }
    if model.run_id:
        tags[INITIAL_MODEL_RUN_TAG] = model.run_id
    chosen = use_case if use_case is not None else model.tags.get(USE_CASE_TAG)
    if chosen:
        tags[USE_CASE_TAG] = chosen
    return tags


def param_list(values: dict[str, object]) -> list[Any]:
    """MLflow params of ``values``: each a string, cut to what a server takes."""
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def now_ms() -> int:
    return int(time.time() * 1000)


def quoted(name: str) -> str:
    """``name`` inside a quoted value of a search filter."""
    return name.replace("'", "\\'")
