"""``fedhive combiner``: a combiner between the coordinator and a share of its clients.

It is started with an id and secret from ``fedhive clients add`` (the coordinator knows it like
a client) and reads the client store to check its own clients' signatures. The coordinator
assigns clients to it; the session's settings come from the coordinator. Exit codes: 0 when the
coordinator said STOP; 1 when the session failed or the coordinator fell silent; 2 with one line
for bad options.

With ``--agent`` it is a remote combiner for ``fedhive serve`` instead (``cli.remote_combiner``):
credentials from ``fedhive admin site create NAME --role combiner``, no client store, session
after session until stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedhive.cli.coordinator_cmd import (
    ArtifactsOption,
    BrokerOption,
    CaFileOption,
    NamespaceOption,
    broker_settings,
    service_logging,
)
from fedhive.cli.event_loop import run_main
from fedhive.cli.mlflow_cli import MlflowExperimentOption, MlflowFlag, MlflowUriOption, combiner_run, node_run_line
from fedhive.errors import ConfigError
from fedhive.runtime.credentials import DEFAULT_STORE, CredentialStore, parse_secret
from fedhive.runtime.hierarchy_networked import run_combiner
from fedhive.tracking.mlflow_options import MlflowOptions


def combiner(
    broker: BrokerOption,
    combiner_id: Annotated[
        str | None, typer.Option("--id", envvar="FEDHIVE_COMBINER_ID", help="from 'clients add'")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(envvar="FEDHIVE_COMBINER_SECRET", help="from 'clients add' (better: the env var)")
    ] = None,
    store: Annotated[
        Path, typer.Option("--store", envvar="FEDHIVE_CLIENT_STORE", help="client store, to check clients")
    ] = Path(DEFAULT_STORE),
    namespace: NamespaceOption = "fedhive",
    ca_file: CaFileOption = None,
    artifacts: ArtifactsOption = None,
    heartbeat_interval: Annotated[float, typer.Option(help="seconds between heartbeats to clients")] = 5.0,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="seconds of client silence: OFFLINE (never less than the session's)")
    ] = 20.0,
    coordinator_timeout: Annotated[float, typer.Option(help="seconds of coordinator silence before giving up")] = 60.0,
    exact: Annotated[bool, typer.Option(help="send float64 partial sums (twice the bytes, exact merge)")] = False,
    mlflow: MlflowFlag = False,
    mlflow_tracking_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = "fedhive",
    agent: Annotated[
        bool,
        typer.Option(
            "--agent",
            help="stay connected to 'fedhive serve' and combine for its hierarchical sessions, one after another "
            "(id and secret from 'fedhive admin site create NAME --role combiner')",
        ),
    ] = False,
) -> None:
    if not combiner_id or not secret:
        raise ConfigError("--id and --secret are required (from 'fedhive clients add NAME')")
    if not 0 < heartbeat_interval < heartbeat_timeout or coordinator_timeout <= 0:
        raise ConfigError("need 0 < --heartbeat-interval < --heartbeat-timeout and a positive --coordinator-timeout")
    key = parse_secret(secret)
    if agent:
        from fedhive.cli.remote_combiner import serve_sessions

        ml_options = MlflowOptions(mlflow_tracking_uri, mlflow, experiment=mlflow_experiment)
        service_logging()
        broker_at = broker_settings(broker, namespace, ca_file, artifacts)
        serve_sessions(
            combiner_id, key, broker_at, heartbeat_interval_s=heartbeat_interval, exact_partials=exact, ml=ml_options
        )
        return
    creds = CredentialStore(store)
    settings = broker_settings(broker, namespace, ca_file, artifacts)
    # A run per session it serves (tracking.node_runs); an unreachable server fails here, before connecting.
    ml = MlflowOptions(mlflow_tracking_uri, mlflow, experiment=mlflow_experiment)
    tracked = combiner_run(ml, combiner_id)
    service_logging()

    def ready() -> None:
        print(f"combiner {combiner_id} ready; waiting for the coordinator and clients", flush=True)

    run = run_combiner(
        combiner_id,
        key,
        creds,
        settings,
        heartbeat_interval_s=heartbeat_interval,
        heartbeat_timeout_s=heartbeat_timeout,
        upstream_timeout_s=coordinator_timeout,
        exact_partials=exact,
        on_ready=ready,
        observers=[tracked.attach] if tracked is not None else [],
    )
    try:
        rounds = run_main(run)
    except BaseException as exc:
        if tracked is not None:  # the run ends FAILED, with the reason
            tracked.end(" ".join(str(exc).split()) or type(exc).__name__)
        raise
    if tracked is not None:
        tracked.end()
        print(node_run_line(tracked, ml), flush=True)
    print(f"stopped by the coordinator after {rounds} rounds", flush=True)
