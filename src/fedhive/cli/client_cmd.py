"""``fedhive client``: one client (or, with --virtual N, many) serving a coordinator over a broker.

With ``--virtual N --host ID`` the N clients answer behind one ``ClientHost`` (one TRAIN per round
for all of them, partial sums back), each client registering with its own key and the host beating
once for all of them with its own (``runtime.hosted``); ``--slice I/K``
takes the I-th of K equal slices of the credentials' identities (ten processes of 1000 clients from
one file of 10,000); ``--workers W`` trains a host's clients in W worker processes.

Exit codes: 0 when the coordinator said STOP; 2 with one line when the client cannot take part
(bad options, missing data, or no answer to its registration: wrong id, secret, broker or
namespace, or no coordinator); 1 when the session started but the coordinator fell silent.
"""

from __future__ import annotations

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
from fedhive.cli.credentials_file import credential_entries
from fedhive.cli.event_loop import run_main
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
from fedhive.runtime.host_workers import PoolOnEnable, host_pool
from fedhive.runtime.networked import BrokerSettings, ClientSettings, run_client, run_client_host, run_virtual_clients
from fedhive.runtime.site_app import SiteApp
from fedhive.runtime.worker_devices import one_thread_per_trainer


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
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="with --virtual: answer for the clients as this host id (from 'clients add'; its secret from "
            "--credentials or FEDHIVE_CLIENT_SECRET): one TRAIN per round for all of them",
        ),
    ] = None,
    virtual_slice: Annotated[
        str,
        typer.Option("--slice", help="with --virtual N: host the I-th of K slices of N clients (I/K; parts of N*K)"),
    ] = "1/1",
    workers: Annotated[
        int | None,
        typer.Option(help="with --host: worker processes that train the clients (default: adaptive, one per core)"),
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
        # Many clients trained one at a time in this process: one math thread each (run_host).
        one_thread_per_trainer()
        index, slices = parse_slice(virtual_slice)
        single = bool(client_id or csv or part or (secret and not host))
        population = virtual * slices
        idents = virtual_identities(
            population, credentials, single=single, made_by="'fedhive clients add NAME --count N --json'",
            exclude=host,
        )[(index - 1) * virtual : index * virtual]  # fmt: skip
        first = (index - 1) * virtual
        hosted = []
        for i, (cid, key) in enumerate(idents, start=first + 1):
            part = f"{i}/{population}" if builtin else None
            data = LocalData(dataset=dataset, partition=partition, part=part, test_fraction=test_fraction)
            extra = node if builtin else [*(node or []), f"partition_id={i - 1}", f"num_partitions={population}"]
            site = site_for(cid, extra, data, state_dir and state_dir / cid)
            hosted.append((key, site))
        service_logging()
        if host is not None:
            host_key = parse_secret(secret) if secret else host_secret(credentials, host)
            run_host(host, host_key, hosted, settings, options, workers=workers, first=first, population=population)
            return
        if workers is not None:
            raise ConfigError("--workers trains a host's clients: give --host ID as well")
        results = run_main(run_virtual_clients(hosted, settings, options, observers=[watch.attach]))
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
            rounds = run_main(run_hierarchical_client(key, site, settings, options))
        else:
            rounds = run_main(run_client(key, site, settings, options, observers=[watch.attach]))
    except FedhiveError as exc:
        watch.fail(exc)
    print(f"stopped by the coordinator after {rounds} rounds of training", flush=True)


def run_host(
    host: str,
    key: bytes,
    hosted: list[tuple[bytes, SiteApp]],
    settings: BrokerSettings,
    options: ClientSettings,
    *,
    workers: int | None,
    first: int,
    population: int,
) -> None:
    """Serve one session behind a ``ClientHost``; exit as ``fedhive client`` does."""
    site = hosted[0][1]
    pool, why_not = host_pool(workers, site.loaded, site.node, population)
    if why_not is not None and workers is not None and workers > 1:
        typer.echo(f"warning: --workers {workers}: {why_not}", err=True)
    # One math thread per trainer, with or without workers: the same bits whatever their number,
    # and a host trains one client at a time, so OpenBLAS's own threads (one per core) would only
    # spin: ten hosts on two cores spent 40 ms of CPU on each 0.4 ms fit (docs/benchmarks.md).
    one_thread_per_trainer()

    def registered(count: int, total: int) -> None:
        if count == total or count % max(1, total // 10) == 0:
            print(f"registered: {count} of {total} virtual clients (host {host})", flush=True)

    async def serve() -> int:
        training = PoolOnEnable(pool) if pool is not None else None
        try:
            return await run_client_host(
                (host, key), hosted, settings, options, training=training, first_index=first, on_registered=registered
            )
        finally:
            if pool is not None:
                await pool.aclose()

    try:
        rounds = run_main(serve())
    except FedhiveError as exc:
        if isinstance(exc, SessionFailed) and "did not answer" in exc.reason:
            typer.echo(f"error: {exc.reason}; check that the coordinator runs on this broker and namespace and that "
                       "its client store holds the host and its clients", err=True)  # fmt: skip
            raise typer.Exit(2) from None
        raise
    print(f"all {len(hosted)} virtual clients stopped by the coordinator after {rounds} rounds", flush=True)


def parse_slice(text: str) -> tuple[int, int]:
    """``I/K`` of ``--slice``: the I-th (1-based) of K slices."""
    try:
        index, slices = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--slice {text!r}: expected I/K, e.g. 2/10") from None
    if not 1 <= index <= slices:
        raise ConfigError(f"--slice {text!r}: I must be between 1 and K")
    return index, slices


def host_secret(credentials: Path | None, host: str) -> bytes:
    """The host's secret from the credentials file (the client store, or 'clients add' lines)."""
    if credentials is not None:
        for cid, key in read_credentials(credentials, 0):
            if cid == host:
                return key
    raise ConfigError(f"--host {host}: its secret is neither in --credentials nor in FEDHIVE_CLIENT_SECRET")


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
    virtual: int, credentials: Path | None, *, single: bool, made_by: str, exclude: str | None = None
) -> list[tuple[str, bytes]]:
    """The identities of ``--virtual N`` (client or agent) from ``--credentials FILE``; ``single``:
    one identity's options (``--id``, ``--secret``, ``--csv``, ``--part``) were given as well;
    ``exclude``: an id that is not one of them (a client host's own)."""
    if single:
        raise ConfigError("--virtual N takes --credentials and --dataset, not --id, --secret, --csv or --part")
    if credentials is None:
        raise ConfigError(f"--virtual N needs --credentials FILE (from {made_by})")
    return read_credentials(credentials, virtual, exclude=exclude)


def read_credentials(path: Path, count: int, *, exclude: str | None = None) -> list[tuple[str, bytes]]:
    """The first ``count`` identities by id (sorted, so part I/N goes to the I-th id), all of
    them for ``count`` 0; never ``exclude``."""
    entries = [(cid, str(e["secret"])) for cid, e in credential_entries(path).items()]
    entries = [(cid, s) for cid, s in entries if cid != exclude]
    if len(entries) < count:
        raise ConfigError(f"--virtual {count}: {path} holds only {len(entries)} client identities")
    return [(cid, parse_secret(s)) for cid, s in sorted(entries)[: count or None]]
