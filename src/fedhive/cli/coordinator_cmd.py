"""``fedhive coordinator``: run one session over a broker, with the same run directory as simulate.

Exit codes: 0 the session completed; 1 it failed (the reason on stderr); 2 a bad setting or
argument, before anything ran; 3 it was cancelled on the server it reports to (``--report-to``:
Cancel on the dashboard; reason "cancelled on the server by its owner", STOP sent to every
client, its checkpoint removed: the same command starts a new session); 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedhive.cli.broker_url import BrokerOption as BrokerOption  # re-exported: client, combiner, peer
from fedhive.cli.event_loop import run_main
from fedhive.cli.mlflow_cli import (
    MlflowExperimentOption,
    MlflowFlag,
    MlflowRegisterOption,
    MlflowRunPerRoundFlag,
    MlflowUriOption,
    report_tracking,
)
from fedhive.cli.progress import SessionProgress
from fedhive.cli.report_options import ReportCredentialsOption, ReportToOption, platform_reporter
from fedhive.cli.session_file import load_session_file, with_initial_model
from fedhive.core.params import ParamSpec
from fedhive.errors import ConfigError, SessionCancelled
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import SessionResult
from fedhive.runtime.credentials import DEFAULT_STORE, CredentialStore
from fedhive.runtime.hierarchy_networked import run_hierarchical_coordinator
from fedhive.runtime.networked import BrokerSettings, plan_coordinator, run_coordinator
from fedhive.runtime.resume import Checkpoint, strategy_for
from fedhive.runtime.session_plan import SessionFile
from fedhive.storage.artifacts import artifact_store_from_url
from fedhive.tracking.mlflow_options import MlflowOptions
from fedhive.tracking.platform_report import PlatformReporter
from fedhive.tracking.run_checkpoint import CHECKPOINT_FILE, RunCheckpoint, fingerprint, load_run_checkpoint
from fedhive.tracking.run_directory import RunDirectory, write_model
from fedhive.tracking.session_folders import latest_session_folder, new_session_folder, newest_folder_of
from fedhive.transports.amqp_topology import redact

EXIT_CANCELLED = 3  # cancelled on the server it reports to (see the docstring)

NamespaceOption = Annotated[
    str, typer.Option(help="AMQP namespace: one coordinator per namespace on a broker", envvar="FEDHIVE_NAMESPACE")
]
CaFileOption = Annotated[Path | None, typer.Option("--ca-file", help="CA certificate to verify an amqps:// broker")]
ArtifactsOption = Annotated[
    str | None, typer.Option(help="artifact store every node reaches (s3://...), for models over 8 MiB")
]


def broker_settings(url: str, namespace: str, ca_file: Path | None, artifacts: str | None) -> BrokerSettings:
    return BrokerSettings(
        url,
        namespace,
        str(ca_file) if ca_file else None,
        artifact_store_from_url(artifacts) if artifacts else None,
    )


def service_logging() -> None:
    """A coordinator or client is a service: its log lines (a rejected message and why, a client
    gone OFFLINE) are what its operator reads, so fedhive's INFO lines are shown by default."""
    logging.getLogger("fedhive").setLevel(logging.INFO)
    if logging.getLogger().level > logging.INFO:  # not --verbose
        # The broker client logs each failed connection attempt; fedhive reports the outcome
        # itself (one line when the broker cannot be reached, "reconnected" when it is back).
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def coordinator(
    broker: BrokerOption,
    config: Annotated[Path, typer.Option("--config", help="session file (TOML); see docs/networked.md")],
    store: Annotated[
        Path, typer.Option("--store", envvar="FEDHIVE_CLIENT_STORE", help="client store ('fedhive clients add')")
    ] = Path(DEFAULT_STORE),
    namespace: NamespaceOption = "fedhive",
    ca_file: CaFileOption = None,
    artifacts: ArtifactsOption = None,
    out: Annotated[
        Path, typer.Option(help="results: each session gets a folder of its own here, named by its id")
    ] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary as the last line of stdout")] = False,
    combiners: Annotated[
        int, typer.Option(help="hierarchical: wait for this many 'fedhive combiner' nodes and assign clients to them")
    ] = 0,
    initial_model: Annotated[
        str | None, typer.Option(help="start from these weights: a file, s3://bucket/key or models:/NAME/VERSION")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="start over in a new folder, even if --out holds a checkpoint to resume")
    ] = False,
    mlflow: MlflowFlag = False,
    mlflow_tracking_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = "fedhive",
    mlflow_register: MlflowRegisterOption = None,
    mlflow_run_per_round: MlflowRunPerRoundFlag = False,
    report_to: ReportToOption = None,
    report_credentials: ReportCredentialsOption = None,
) -> None:
    started = time.perf_counter()
    if combiners < 0:
        raise ConfigError("--combiners must be zero or more")
    session = load_session_file(config)
    if initial_model is not None:
        session = with_initial_model(session, initial_model)
    settings = broker_settings(broker, namespace, ca_file, artifacts)
    plan = plan_coordinator(session, settings)  # data and model errors come before connecting
    ml = MlflowOptions(
        mlflow_tracking_uri,
        mlflow,
        register=mlflow_register,
        experiment=mlflow_experiment,
        run_per_round=mlflow_run_per_round,
    )
    tracker = ml.tracker()  # an unreachable MLflow server fails here, before any client is kept waiting
    service_logging()
    resume: Checkpoint | None = None
    # Every session, flat or hierarchical, checkpoints each round into its own folder under --out.
    folder, found = _session_folder(out, session, plan[1].spec, named=_names_session(config), fresh=fresh)
    if found is not None:
        sid, resume = found
        session = replace(session, config=session.config.model_copy(update={"session_id": sid}))
        rounds, path = session.config.rounds, folder / CHECKPOINT_FILE
        if resume.round >= rounds:
            done = f"session {sid} completed its {rounds} rounds before it stopped; its model comes from {path}"
            typer.echo(done, err=True)
        else:
            typer.echo(
                f"resuming session {sid} at round {resume.next_round} of {rounds} from {path} (--fresh to start over)",
                err=True,
            )
    cfg = session.config
    console = Console(stderr=True) if as_json else Console()
    where = {"broker": redact(broker), "namespace": namespace}
    run_dir = RunDirectory(
        folder,
        {**cfg.model_dump(mode="json"), **session.data_settings, **where},
        resume_after=resume.round if resume else 0,
    )
    status = StatusLines(console)
    progress = SessionProgress(console, cfg.rounds, start_round=resume.next_round if resume else 1)
    strategy = strategy_for(cfg, resume)
    identity = fingerprint(session, plan[1].spec)
    checkpoints = RunCheckpoint(folder, cfg.session_id, strategy, identity).resume_from(resume)
    shown: list[SessionProgress] = []

    creds = CredentialStore(store)
    reporter = None
    if report_to is not None:  # shown on a running 'fedhive serve' (its dashboard, its API)
        reporter = platform_reporter(
            report_to, report_credentials, cfg.model_dump(mode="json"), name=f"{config.stem} (command line)",
            topology="hierarchical" if combiners else "star", round_figures=strategy.round_metrics,
        )  # fmt: skip

    def ready() -> None:
        # A plain line, for people and for scripts that start clients once the coordinator listens.
        known = len(creds.list())
        hint = "" if known else "; add them with 'fedhive clients add NAME'"
        typer.echo(
            f"coordinator ready: session {cfg.session_id}, waiting for {cfg.min_clients} clients "
            f"(namespace {namespace} at {redact(broker)}; {known} clients known in {store}{hint}); "
            f"results in {folder}",
            err=True,
        )
        shown.append(progress.__enter__())

    try:
        # The checkpoint after the round's rows: rounds.csv then holds every checkpointed round.
        observers = [run_dir.attach, checkpoints.attach, progress.attach, status.attach]
        if tracker is not None:
            observers.append(tracker.attach)
        if reporter is not None:
            observers.append(reporter.attach)
        if combiners:
            run = run_hierarchical_coordinator(
                session, creds, settings, min_combiners=combiners, observers=observers, on_ready=ready,
                resume=resume, strategy=strategy,
            )  # fmt: skip
        else:
            run = run_coordinator(
                session, creds, settings, plan=plan, observers=observers, on_ready=ready, resume=resume,
                strategy=strategy, clocks=checkpoints.clocks,
            )  # fmt: skip
        try:
            result = run_main(_reporting(run, reporter))
        except SessionCancelled as exc:
            checkpoints.path.unlink(missing_ok=True)  # cancelled for good: never resumed
            typer.echo(f"session {cfg.session_id} cancelled: {exc.reason}", err=True)
            raise typer.Exit(EXIT_CANCELLED) from None
    finally:
        for p in shown:
            p.__exit__(None, None, None)
    if resume is not None and resume.round >= cfg.rounds:  # killed between the last checkpoint and the end
        write_model(run_dir.model_path, result.params, {"rounds": str(result.rounds)})
        run_dir.close()
        checkpoints.path.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    console.print(progress.table())
    m = result.metrics
    console.print(
        f"session {cfg.session_id}: final accuracy [bold]{m.get('accuracy', float('nan')):.4f}[/], "
        f"loss {m.get('loss', float('nan')):.4f} after {result.rounds} rounds in {wall:.1f} s; results in "
        f"[bold]{escape(str(folder))}[/] (config.json, rounds.csv, clients.csv, model.safetensors)"
    )
    tracked = report_tracking(console, tracker, ml) if tracker is not None else {}
    if as_json:
        summary = {
            "session_id": cfg.session_id,
            "accuracy": m.get("accuracy"),
            "loss": m.get("loss"),
            "rounds": result.rounds,
            "clients": status.clients,
            "wall_s": round(wall, 3),
            "out": str(folder),
            "model": str(run_dir.model_path),
            **tracked,
        }
        print(json.dumps(summary))


async def _reporting(run: Coroutine[Any, Any, SessionResult], reporter: PlatformReporter | None) -> SessionResult:
    """The session, with its reports posted meanwhile and the last ones given a bounded time at
    the end (inside the loop: ``asyncio.run`` cancels tasks left when it returns)."""
    if reporter is None:
        return await run
    reporter.start()
    try:
        return await run
    finally:
        await reporter.aclose()


def _session_folder(
    out: Path, session: SessionFile, spec: ParamSpec, *, named: bool, fresh: bool
) -> tuple[Path, tuple[str, Checkpoint] | None]:
    """The folder this run writes into under ``out``, and the checkpoint it resumes, if any.

    The candidate to resume is the newest folder of the file's session when the file names one,
    else the folder of the session started last in ``out`` (the same command again resumes what
    it started). Without a checkpoint to resume, or with ``--fresh``, the session gets a new
    folder: an earlier one, its checkpoint included, is never overwritten."""
    if not fresh:
        sid = session.config.session_id
        candidate = newest_folder_of(out, sid) if named else latest_session_folder(out)
        if candidate is not None:
            found = load_run_checkpoint(candidate, session, spec, session_named=named)
            if found is not None:
                return candidate, found
    return new_session_folder(out, session.config.session_id), None


def _names_session(config: Path) -> bool:
    """Whether the session file names its session (else each run draws a random id)."""
    return "session_id" in tomllib.loads(config.read_text(encoding="utf-8"))


class StatusLines:
    """Prints each client's status change: the registry, as an operator watches it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.clients = 0

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.ClientStatusChanged, self._on_status)
        bus.on(ev.SessionStarted, self._on_started)

    def _on_status(self, e: ev.ClientStatusChanged) -> None:
        was = f" (was {e.previous})" if e.previous else ""
        self.console.print(f"client {escape(e.client_id)}: {e.status}{was}", highlight=False)

    def _on_started(self, e: ev.SessionStarted) -> None:
        self.clients = len(e.clients)
        self.console.print(f"session {escape(e.session_id)} started with {len(e.clients)} clients", highlight=False)
