"""``fedhive client``: one client (or, with --virtual N, many) serving a coordinator over a broker.

Exit codes: 0 when the coordinator said STOP; 2 with one line when the client cannot take part
(bad options, missing data, or no answer to its registration: wrong id, secret, broker or
namespace, or no coordinator); 1 when the session started but the coordinator fell silent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from fedhive.app.loader import BUILTIN
from fedhive.cli.coordinator_cmd import (
    ArtifactsOption,
    BrokerOption,
    CaFileOption,
    NamespaceOption,
    broker_settings,
    service_logging,
)
from fedhive.cli.flower_options import FlowerAppOption, flower_site
from fedhive.cli.site_options import (
    AppOption,
    CsvOption,
    DatasetOption,
    LabelOption,
    NodeOption,
    PartitionOption,
    PartOption,
    SeedOption,
    StateDirOption,
    TestFractionOption,
    build_site,
)
from fedhive.errors import ConfigError, FedhiveError, SessionFailed
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.credentials import parse_secret
from fedhive.runtime.hierarchy_networked import run_hierarchical_client
from fedhive.runtime.networked import ClientSettings, run_client, run_virtual_clients
from fedhive.runtime.site_app import SiteApp


def client(
    broker: BrokerOption,
    app: AppOption = BUILTIN,
    flower_app: FlowerAppOption = None,
    node: NodeOption = None,
    state_dir: StateDirOption = None,
    client_id: Annotated[
        str | None, typer.Option("--id", envvar="FEDHIVE_CLIENT_ID", help="from 'clients add'")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(envvar="FEDHIVE_CLIENT_SECRET", help="from 'clients add' (better: the env var)")
    ] = None,
    csv: CsvOption = None,
    label: LabelOption = None,
    dataset: DatasetOption = None,
    partition: PartitionOption = "iid",
    part: PartOption = None,
    test_fraction: TestFractionOption = 0.2,
    seed: SeedOption = 0,
    virtual: Annotated[int, typer.Option(help="host N virtual clients (parts 1/N..N/N) in this process")] = 0,
    credentials: Annotated[
        Path | None, typer.Option(help="with --virtual: 'clients add --json' output, or the client store")
    ] = None,
    namespace: NamespaceOption = "fedhive",
    ca_file: CaFileOption = None,
    artifacts: ArtifactsOption = None,
    register_timeout: Annotated[float, typer.Option(help="seconds to wait for the coordinator to answer")] = 120.0,
    coordinator_timeout: Annotated[float, typer.Option(help="seconds of coordinator silence before giving up")] = 60.0,
    via_combiner: Annotated[
        bool,
        typer.Option("--via-combiner", help="hierarchical session: train with the combiner the coordinator assigns"),
    ] = False,
) -> None:
    settings = broker_settings(broker, namespace, ca_file, artifacts)
    options = ClientSettings(register_timeout_s=register_timeout, coordinator_timeout_s=coordinator_timeout)
    if register_timeout <= 0 or coordinator_timeout <= 0:
        raise ConfigError("--register-timeout and --coordinator-timeout must be positive")
    if flower_app is not None and app != BUILTIN:
        raise ConfigError("give --app or --flower-app, not both")

    def site_for(cid: str, node: list[str] | None, data: LocalData, state_dir: Path | None) -> SiteApp:
        if flower_app is not None:
            return flower_site(cid, flower_app, node, data, state_dir=state_dir)
        return build_site(cid, app, node, data, seed=seed, state_dir=state_dir)

    builtin = app == BUILTIN and flower_app is None
    watch = Watch(verbose=virtual == 0)
    if virtual:
        single = bool(client_id or secret or csv or part)
        idents = virtual_identities(
            virtual, credentials, single=single, made_by="'fedhive clients add NAME --count N --json'"
        )
        hosted = []
        for i, (cid, key) in enumerate(idents, start=1):
            part = f"{i}/{virtual}" if builtin else None
            data = LocalData(dataset=dataset, partition=partition, part=part, test_fraction=test_fraction)
            extra = node if builtin else [*(node or []), f"partition_id={i - 1}", f"num_partitions={virtual}"]
            site = site_for(cid, extra, data, state_dir and state_dir / cid)
            hosted.append((key, site))
        service_logging()
        results = asyncio.run(run_virtual_clients(hosted, settings, options, observers=[watch.attach]))
        failures = [r for r in results if isinstance(r, FedhiveError)]
        if failures:
            watch.fail(failures[0])
        print(f"all {virtual} virtual clients stopped by the coordinator", flush=True)
        return
    if not client_id or not secret:
        raise ConfigError("--id and --secret are required (from 'fedhive clients add NAME')")
    key = parse_secret(secret)
    data = LocalData(csv=csv, label=label, dataset=dataset, partition=partition, part=part, test_fraction=test_fraction)
    site = site_for(client_id, node, data, state_dir)
    service_logging()
    try:
        if via_combiner:
            rounds = asyncio.run(run_hierarchical_client(key, site, settings, options))
        else:
            rounds = asyncio.run(run_client(key, site, settings, options, observers=[watch.attach]))
    except FedhiveError as exc:
        watch.fail(exc)
    print(f"stopped by the coordinator after {rounds} rounds of training", flush=True)


class Watch:
    """Prints a client's milestones on stdout, one line each, and maps a failure to an exit code."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self.registered = 0

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.ClientRegistered, self._on_registered)
        if self.verbose:
            bus.on(ev.TrainingStarted, self._on_training)

    def _on_registered(self, e: ev.ClientRegistered) -> None:
        self.registered += 1
        if self.verbose:
            print(f"registered with the coordinator as {e.client_id}", flush=True)
        else:
            print(f"registered: {self.registered} virtual clients", flush=True)

    def _on_training(self, e: ev.TrainingStarted) -> None:
        retry = f" (retry {e.attempt})" if e.attempt else ""
        print(f"round {e.round}: training{retry}", flush=True)

    def fail(self, exc: FedhiveError) -> NoReturn:
        if isinstance(exc, SessionFailed) and not self.registered:
            # No answer at all: most likely a wrong id, secret, broker or namespace, which the
            # coordinator logs as a rejected message; the client cannot tell which.
            typer.echo(
                f"error: {exc.reason}; check that the coordinator runs on this broker and namespace and that "
                "--id and --secret are what 'fedhive clients add' printed",
                err=True,
            )
            raise typer.Exit(2)
        raise exc


def virtual_identities(
    virtual: int, credentials: Path | None, *, single: bool, made_by: str
) -> list[tuple[str, bytes]]:
    """The identities of ``--virtual N`` (client or agent) from ``--credentials FILE``; ``single``:
    one identity's options (``--id``, ``--secret``, ``--csv``, ``--part``) were given as well."""
    if single:
        raise ConfigError("--virtual N takes --credentials and --dataset, not --id, --secret, --csv or --part")
    if credentials is None:
        raise ConfigError(f"--virtual N needs --credentials FILE (from {made_by})")
    return read_credentials(credentials, virtual)


def read_credentials(path: Path, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` identities by id (sorted, so part I/N goes to the I-th id)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
        entries = [(cid, e["secret"]) for cid, e in doc["clients"].items()]  # the store itself
    except (ValueError, KeyError, TypeError, AttributeError):
        try:
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
            entries = [(str(e["client_id"]), str(e["secret"])) for e in lines]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{path}: expected the lines of 'fedhive clients add NAME --count N --json', or a client store"
            ) from None
    if len(entries) < count:
        raise ConfigError(f"--virtual {count}: {path} holds only {len(entries)} client identities")
    return [(cid, parse_secret(s)) for cid, s in sorted(entries)[:count]]
