"""``fedhive serve``: the platform (REST API, coordinator hub, sessions) in one process."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from fedhive.cli.broker_url import OptionalBrokerOption
from fedhive.cli.event_loop import run_main
from fedhive.errors import ConfigError
from fedhive.runtime.session_config import validation_message
from fedhive.tracking.mlflow_options import ENV_VAR


def serve_cmd(
    host: Annotated[str, typer.Option(help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port the API listens on (0: any free port)")] = 8000,
    local_clients: Annotated[int, typer.Option(help="peers to run inside this process, for a try-out")] = 0,
    home: Annotated[Path, typer.Option(help="directory of the embedded defaults (SQLite, artifacts)")] = Path(
        ".fedhive"
    ),
    db: Annotated[str | None, typer.Option(help="database URL, e.g. postgresql://user@host/db")] = None,
    artifacts: Annotated[str | None, typer.Option(help="artifact store: a directory or s3://bucket/prefix")] = None,
    broker: OptionalBrokerOption = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="track sessions in MLflow (local store in home)")] = False,
    mlflow_tracking_uri: Annotated[
        str | None,
        typer.Option(help=f"track in this MLflow store or server, e.g. http://mlflow:5000 [env: {ENV_VAR}]"),
    ] = None,
    mlflow_register: Annotated[
        str | None, typer.Option(help="register every session's final model in MLflow under this name")
    ] = None,
    app: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            help="install an app sessions may run (module:attr, file.py:attr or a project folder); repeatable; "
            "builtin is always installed [env: FEDHIVE_APPS, comma-separated]",
        ),
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI at /docs) and run the sessions it starts."""
    # Imported here, not at the top: the platform pulls in FastAPI, SQLAlchemy and uvicorn, and
    # every fedhive command imports this module to build its command line.
    from fedhive.service.platform import ServeOptions, serve
    from fedhive.service.settings import Settings
    from fedhive.tracking.mlflow_store import default_tracking_uri

    if local_clients < 0:
        raise ConfigError("--local-clients must be zero or more")
    if (mlflow or mlflow_register) and mlflow_tracking_uri is None and os.environ.get(ENV_VAR) is None:
        mlflow_tracking_uri = default_tracking_uri(home)  # the local store, next to the SQLite database
    try:
        settings = Settings.from_env(
            home=home,
            db_url=db,
            artifacts_url=artifacts,
            broker_url=broker,
            mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_register_as=mlflow_register,
            apps=app or None,
        )
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None

    def ready(url: str) -> None:
        print(f"fedhive serving on {url} (API docs: {url}/docs); Ctrl-C to stop", file=sys.stderr, flush=True)

    run_main(serve(settings, ServeOptions(host, port, local_clients), on_ready=ready))
