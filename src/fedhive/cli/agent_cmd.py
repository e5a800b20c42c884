"""``fedhive agent``: a long-lived site that takes part in session after session over a broker.

Exit codes: 0 when stopped (SIGTERM or Ctrl-C; a round in progress is reported lost first); 2 with
one line when the agent cannot start (bad options, an app that does not load, missing data).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from fedhive.app.loader import BUILTIN, load_app
from fedhive.cli.agent_logins import agent_broker_urls
from fedhive.cli.client_cmd import virtual_identities
from fedhive.cli.coordinator_cmd import (
    ArtifactsOption,
    BrokerOption,
    CaFileOption,
    NamespaceOption,
    broker_settings,
    service_logging,
)
from fedhive.cli.event_loop import run_main
from fedhive.cli.flower_options import FlowerAppsOption, flower_agent_sites
from fedhive.cli.site_options import (
    CsvOption,
    DatasetOption,
    LabelOption,
    NodeOption,
    PartitionOption,
    PartOption,
    SeedOption,
    TestFractionOption,
    build_site,
)
from fedhive.errors import ConfigError
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.agent import Agent, AgentSettings, AgentSites
from fedhive.runtime.bus import EventBus
from fedhive.runtime.credentials import parse_secret
from fedhive.runtime.site_app import SiteApp
from fedhive.runtime.worker_devices import one_thread_per_trainer
from fedhive.service.apps import state_folder_name


def agent(
    broker: BrokerOption,
    client_id: Annotated[
        str | None, typer.Option("--id", envvar="FEDHIVE_CLIENT_ID", help="the site's id (from 'fedhive admin')")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(envvar="FEDHIVE_CLIENT_SECRET", help="the site's secret (better: the env var)")
    ] = None,
    apps: Annotated[
        list[str] | None,
        typer.Option("--app", help="an app installed here (module:attr, file.py:attr, a folder, builtin); repeatable"),
    ] = None,
    flower_apps: FlowerAppsOption = None,
    node: NodeOption = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="ctx.state goes to DIR/APP per app [default: ~/.fedhive/state/ID/APP]")
    ] = None,
    dataset_names: Annotated[
        list[str] | None,
        typer.Option("--dataset-name", help="a data set this site holds, announced by name; repeatable"),
    ] = None,
    csv: CsvOption = None,
    label: LabelOption = None,
    dataset: DatasetOption = None,
    partition: PartitionOption = "iid",
    part: PartOption = None,
    test_fraction: TestFractionOption = 0.2,
    seed: SeedOption = 0,
    namespace: NamespaceOption = "fedhive",
    ca_file: CaFileOption = None,
    artifacts: ArtifactsOption = None,
    heartbeat_interval: Annotated[float, typer.Option(help="seconds between beats while idle")] = 5.0,
    coordinator_timeout: Annotated[
        float, typer.Option(help="seconds of coordinator silence that end a session for this agent")
    ] = 60.0,
    stop_grace: Annotated[
        float, typer.Option(help="on SIGTERM, seconds to let a training call in progress finish (its state saved)")
    ] = 10.0,
    virtual: Annotated[
        int, typer.Option(help="run N agents in this process (demo parts 1/N..N/N), e.g. to measure idle cost")
    ] = 0,
    credentials: Annotated[
        Path | None, typer.Option(help="with --virtual: 'fedhive admin site create NAME --count N --json' output")
    ] = None,
) -> None:
    if heartbeat_interval <= 0 or coordinator_timeout <= 0 or stop_grace < 0:
        raise ConfigError("--heartbeat-interval and --coordinator-timeout must be positive, --stop-grace not negative")
    if virtual:
        single = bool(client_id or secret or csv or part)
        idents = virtual_identities(
            virtual, credentials, single=single, made_by="'fedhive admin site create NAME --count N'"
        )
    elif not client_id or not secret:
        raise ConfigError("--id and --secret are required (from 'fedhive admin site create NAME')")
    else:
        idents = [(client_id, parse_secret(secret))]
    refs = list(apps or ([BUILTIN] if csv or dataset else []))
    if not refs and not flower_apps:
        raise ConfigError(
            "nothing to run: give --app REF or --flower-app PATH (repeatable), or --dataset/--csv for the built-in app"
        )
    names = list(dataset_names or []) or _default_dataset_names(csv, dataset)
    settings = AgentSettings(heartbeat_interval_s=heartbeat_interval, coordinator_timeout_s=coordinator_timeout)
    runners: list[Agent] = []
    # One training thread for the process: virtual agents train one after another, as virtual clients do,
    # with one math thread (OpenBLAS's own threads, one per core, would only spin: docs/benchmarks.md).
    if virtual:
        one_thread_per_trainer()
    pool = ThreadPoolExecutor(1, thread_name_prefix="fedhive-agent")
    urls = agent_broker_urls(broker, [cid for cid, _ in idents], credentials if virtual else None)
    for i, ((cid, key), url) in enumerate(zip(idents, urls, strict=True), start=1):
        own_part = f"{i}/{virtual}" if virtual and dataset else part
        data = LocalData(
            csv=csv, label=label, dataset=dataset, partition=partition, part=own_part, test_fraction=test_fraction
        )
        own_state = state_dir / cid if virtual and state_dir is not None else state_dir
        # A virtual agent's share of the data, for apps that read it from ctx.node as Flower apps do.
        own_node = [*(node or []), f"partition_id={i - 1}", f"num_partitions={virtual}"] if virtual else node
        sites = _sites(cid, refs, own_node, data, seed, own_state)
        sites |= flower_agent_sites(cid, flower_apps or [], own_node, own_state, taken=sites)
        observers = [] if virtual else [_print_milestones]
        broker_at = broker_settings(url, namespace, ca_file, artifacts)
        runners.append(Agent(key, AgentSites(cid, sites, names), broker_at, settings, observers, pool))
    service_logging()
    run_main(_serve(runners, ", ".join(runners[0].sites.sites)))
    who = f"{len(runners)} agents" if virtual else f"agent {runners[0].sites.client_id}"
    if not _finish_training(pool, stop_grace):
        # The app's ctx.state is written whole or not at all (a temporary file renamed over the old
        # one), so leaving a training call behind cannot leave half-written state.
        print(f"{who} stopped; a training call did not finish within {stop_grace:.0f} s", flush=True)
        sys.stdout.flush()
        os._exit(0)
    print(f"{who} stopped", flush=True)


async def _serve(runners: list[Agent], apps: str) -> None:
    loop = asyncio.get_running_loop()

    def stop(reason: str) -> None:
        for runner in runners:
            runner.stop(reason)

    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        loop.add_signal_handler(sig, stop, f"the site agent was stopped ({name})")
    connected = 0

    def on_connected(cid: str) -> None:
        nonlocal connected
        connected += 1
        if len(runners) == 1:
            print(f"agent {cid} connected; apps: {apps}; waiting for sessions", flush=True)
        elif connected == len(runners):  # once, not a line per virtual agent
            print(f"{connected} agents connected; apps: {apps}; waiting for sessions", flush=True)

    async with asyncio.TaskGroup() as tg:
        for r in runners:
            tg.create_task(r.run(on_connected=functools.partial(on_connected, r.sites.client_id)))


def _sites(
    client_id: str, refs: list[str], node: list[str] | None, data: LocalData, seed: int, state_dir: Path | None
) -> dict[str, SiteApp]:
    sites: dict[str, SiteApp] = {}
    for ref in refs:
        loaded = load_app(ref)
        if loaded.name in sites:
            raise ConfigError(f"--app {ref!r}: an app named {loaded.name!r} is given twice")
        own_state = state_dir / state_folder_name(loaded.name) if state_dir is not None else None
        site_data = data if ref.strip() == BUILTIN else LocalData()
        sites[loaded.name] = build_site(client_id, ref, node, site_data, seed=seed, state_dir=own_state)
    return sites


def _default_dataset_names(csv: Path | None, dataset: str | None) -> list[str]:
    return [csv.stem] if csv is not None else [dataset] if dataset else []


def _print_milestones(bus: EventBus) -> None:
    def registered(e: ev.ClientRegistered) -> None:
        print(f"registered with a coordinator as {e.client_id}", flush=True)

    def training(e: ev.TrainingStarted) -> None:
        retry = f" (retry {e.attempt})" if e.attempt else ""
        print(f"round {e.round}: training{retry}", flush=True)

    def session_over(e: ev.ClientStopped) -> None:
        print(
            f"session {e.session_id} over after {e.rounds_trained} rounds of training; waiting for the next", flush=True
        )

    bus.on(ev.ClientRegistered, registered)
    bus.on(ev.TrainingStarted, training)
    bus.on(ev.ClientStopped, session_over)


def _finish_training(pool: ThreadPoolExecutor, grace_s: float) -> bool:
    """Let a training call in progress end (so that it saves its state), for at most ``grace_s``."""
    done = threading.Event()

    def wait() -> None:
        pool.shutdown(wait=True, cancel_futures=True)
        done.set()

    threading.Thread(target=wait, daemon=True, name="fedhive-agent-grace").start()
    return done.wait(grace_s)
