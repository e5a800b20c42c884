"""The MLflow tracking options of every command that runs a node (``simulate``, ``coordinator``,
``combiner``, ``peer``), declared once; ``tracking.mlflow_options`` turns them into a tracker, and
``tracking.node_runs`` into a combiner's or a peer's run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.console import Console

from fedhive.tracking.mlflow_options import ENV_VAR, MlflowOptions
from fedhive.tracking.mlflow_tracker import MlflowTracker
from fedhive.tracking.node_runs import CombinerRun, PeerRun

MlflowFlag = Annotated[bool, typer.Option("--mlflow", help="track the run in MLflow (local store ./mlruns)")]
MlflowUriOption = Annotated[
    str | None, typer.Option(envvar=ENV_VAR, help="track in this MLflow store or server, e.g. http://mlflow:5000")
]
MlflowExperimentOption = Annotated[str, typer.Option(help="MLflow experiment of the run")]
MlflowRunPerRoundFlag = Annotated[
    bool,
    typer.Option("--mlflow-run-per-round", help="also one MLflow run per client per round, nested in the client's"),
]
MlflowRegisterOption = Annotated[
    str | None, typer.Option(help="register the final model in MLflow under this name (tracks the run)")
]


def report_tracking(console: Console, tracker: MlflowTracker, ml: MlflowOptions) -> dict[str, object]:
    """One line on where the run went (or why tracking stopped), and the figures for ``--json``."""
    if tracker.failure is not None:
        console.print(f"[yellow]MLflow tracking stopped early: {tracker.failure}[/]")
    else:
        registered = f"; registered {ml.register} version {tracker.model_version}" if tracker.model_version else ""
        console.print(f"tracked in MLflow at {ml.where()}: run {tracker.parent_run_id}{registered}")
    return {"mlflow_run_id": tracker.parent_run_id, "mlflow_model_version": tracker.model_version}


def combiner_run(ml: MlflowOptions, combiner_id: str) -> CombinerRun | None:
    """Blocking (one bounded probe): the combiner's run, or None when tracking is off."""
    uri = ml.checked_uri()
    return CombinerRun(uri, combiner_id, experiment=ml.experiment) if uri is not None else None


def peer_run(ml: MlflowOptions, name: str, config: Mapping[str, Any], tags: Mapping[str, str]) -> PeerRun | None:
    """Blocking (one bounded probe): the peer's run, or None when tracking is off."""
    uri = ml.checked_uri()
    if uri is None:
        return None
    return PeerRun(uri, name, config, experiment=ml.experiment, register_as=ml.register, tags=tags)


def node_run_line(run: CombinerRun | PeerRun, ml: MlflowOptions) -> str:
    """One line on where a combiner's or peer's run went (or why tracking stopped)."""
    if run.failure is not None:
        return f"MLflow tracking stopped early: {run.failure}"
    if run.run_id is None:
        return f"nothing tracked in MLflow at {ml.where()}: no round was run"
    version = run.model_version if isinstance(run, PeerRun) else None
    registered = f"; registered {ml.register} version {version}" if version else ""
    return f"tracked in MLflow at {ml.where()}: run {run.run_id}{registered}"
