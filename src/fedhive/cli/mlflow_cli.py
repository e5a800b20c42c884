"""The MLflow tracking options of the commands that run a session's aggregation (``simulate``,
``coordinator``), declared once; ``tracking.mlflow_options`` turns them into a tracker."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from fedhive.tracking.mlflow_options import ENV_VAR, MlflowOptions
from fedhive.tracking.mlflow_tracker import MlflowTracker

MlflowFlag = Annotated[bool, typer.Option("--mlflow", help="track the run in MLflow (local store ./mlruns)")]
MlflowUriOption = Annotated[
    str | None, typer.Option(envvar=ENV_VAR, help="track in this MLflow store or server, e.g. http://mlflow:5000")
]
MlflowExperimentOption = Annotated[str, typer.Option(help="MLflow experiment of the run")]
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
