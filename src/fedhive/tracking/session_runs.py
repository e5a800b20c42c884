"""A session's MLflow runs looked up after the fact: the dashboard's link to its parent run, and the
deletion of a deleted session's runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from fedhive.tracking.mlflow_model import import_mlflow
from fedhive.tracking.mlflow_registry import redact
from fedhive.tracking.mlflow_store import ROLE_TAG, SESSION_TAG, quoted


@dataclass(frozen=True)
class SessionRun:
    """A session's parent run, and where a person can look at it (None: a store with no web page)."""

    run_id: str
    experiment_id: str
    status: str
    url: str | None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI's page of a run on a tracking server (credentials left out); None for a
    local store, which has no web page until someone runs ``mlflow ui`` on it."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return None
    base = redact(tracking_uri).rstrip("/")
    return f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def find_session_run(tracking_uri: str, session_id: str, experiment: str = "fedhive") -> SessionRun | None:
    """Blocking. The parent run tracking ``session_id``, if there is one."""
    client = import_mlflow().MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = coordinator_runs(client, [found.experiment_id], session_id)
    if not runs:
        return None
    info = runs[0].info
    return SessionRun(
        info.run_id, found.experiment_id, info.status, run_url(tracking_uri, found.experiment_id, info.run_id)
    )


def delete_session_runs(tracking_uri: str, session_id: str, experiment: str = "fedhive") -> int:
    """Blocking. Marks the runs of a deleted session deleted (its parent run and its clients'
    runs): MLflow keeps them restorable until its garbage collection. Returns how many."""
    client = import_mlflow().MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    ids = [found.experiment_id]
    parents = client.search_runs(ids, filter_string=_session_filter(session_id), max_results=100)
    runs = [r.info.run_id for r in parents]
    for parent in parents:
        children = client.search_runs(
            ids, filter_string=f"tags.mlflow.parentRunId = '{quoted(parent.info.run_id)}'", max_results=10_000
        )
        runs += [c.info.run_id for c in children]
    for run_id in runs:
        client.delete_run(run_id)
    return len(runs)


def _session_filter(session_id: str) -> str:
    return f"tags.`{SESSION_TAG}` = '{quoted(session_id)}'"


def coordinator_runs(client: Any, experiment_ids: list[str], session_id: str) -> list[Any]:
    """The session's parent run (a list of one, or empty), not a combiner's run of the same session."""
    runs = client.search_runs(experiment_ids, filter_string=_session_filter(session_id), max_results=100)
    return [r for r in runs if r.data.tags.get(ROLE_TAG, "coordinator") == "coordinator"][:1]
