"""``fedhive peer``: one peer of a decentralised federation (no coordinator) over a broker.

All peers of a federation give the same --secret (one shared key: see ``runtime.peer_networked``)
and the same training settings; each prints one line per round with the model's digest, which is
the same on every peer. Exit codes: 0 after the last round; 1 when too few peers came within
--discovery-timeout or a round could not be completed; 2 with one line for bad options or data.

``--initial-model`` starts the federation from weights trained before instead of the app's init.
Whichever peer seeds round 0 sends its model to the others, so every peer is given the same
reference; a peer given one refuses (exit 1) a seed model whose digest differs from its own.

``--out DIR`` keeps the final model in a folder of its own (``DIR/<peer name>``, then ``-2``, ``-3``
on later runs; ``DIR/latest`` names the newest): ``model.safetensors`` (its digest and rounds in the
metadata) and ``rounds.jsonl`` (one line per round, as ``--json`` prints). With ``--json`` stdout
holds JSON lines only; everything else goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedhive.app.learner import Evaluator
from fedhive.app.loader import BUILTIN, load_app
from fedhive.cli.broker_url import BrokerOption
from fedhive.cli.coordinator_cmd import CaFileOption, NamespaceOption, broker_settings, service_logging
from fedhive.cli.event_loop import run_main
from fedhive.cli.flower_options import FlowerAppOption, flower_run, flower_site
from fedhive.cli.initial_model import load_initial_model
from fedhive.cli.key_values import parse_pairs
from fedhive.cli.mlflow_cli import (
    MlflowExperimentOption,
    MlflowFlag,
    MlflowRegisterOption,
    MlflowUriOption,
    node_run_line,
    peer_run,
)
from fedhive.cli.site_options import AppOption, NodeOption, StateDirOption, build_site
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.learning.federation_data import parse_part
from fedhive.learning.local_data import LocalData
from fedhive.runtime.bus import EventBus
from fedhive.runtime.credentials import parse_secret
from fedhive.runtime.peer import PeerRoundCompleted
from fedhive.runtime.peer_networked import PeerSettings, run_peer
from fedhive.runtime.peer_rounds import params_digest
from fedhive.runtime.session_config import SessionConfig, make_config
from fedhive.runtime.site_app import ServerApp, SiteApp, session_with_app
from fedhive.tracking.mlflow_options import MlflowOptions
from fedhive.tracking.run_directory import write_model
from fedhive.tracking.session_folders import new_session_folder


def peer(
    ctx: typer.Context,
    broker: BrokerOption,
    app: AppOption = BUILTIN,
    flower_app: FlowerAppOption = None,
    node: NodeOption = None,
    state_dir: StateDirOption = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar="FEDHIVE_FEDERATION_SECRET", help="the federation's shared secret (64 hex digits)"),
    ] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="this peer's own data (CSV with a header)")] = None,
    label: Annotated[str | None, typer.Option(help="label column of the CSV")] = None,
    dataset: Annotated[str | None, typer.Option(help="demo: a built-in data set (digits, iris, ...)")] = None,
    partition: Annotated[str, typer.Option(help="demo: iid, dirichlet:ALPHA, label-shards:K, label-range")] = "iid",
    part: Annotated[str | None, typer.Option(help="demo: this peer's part, I/N (e.g. 3/5)")] = None,
    test_fraction: Annotated[float, typer.Option(help="demo: held-out share, for the accuracy shown")] = 0.2,
    min_peers: Annotated[int, typer.Option(help="peers that must have announced before round 1")] = 2,
    rounds: Annotated[int, typer.Option(help="rounds of training")] = 10,
    model: Annotated[str, typer.Option(help="model spec, the same on every peer")] = "simple-dnn",
    strategy: Annotated[str, typer.Option(help="aggregation, the same on every peer")] = "fedavg",
    epochs: Annotated[int, typer.Option(help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option(help="minibatch size")] = 32,
    lr: Annotated[float, typer.Option(help="learning rate")] = 0.05,
    compression: Annotated[
        str, typer.Option(help="update compression, the same on every peer: none, float16, int8, topk:F")
    ] = "none",
    seed: Annotated[int, typer.Option(help="seed of the seed model and of the demo partition")] = 0,
    round_timeout: Annotated[float, typer.Option(help="seconds a round waits for updates")] = 120.0,
    gossip: Annotated[
        int, typer.Option(help="gossip averaging with K partners per round (0: every peer aggregates every update)")
    ] = 0,
    beat: Annotated[float, typer.Option(help="seconds between announcements")] = 1.0,
    peer_timeout: Annotated[float, typer.Option(help="seconds of silence after which a peer is gone")] = 5.0,
    discovery_timeout: Annotated[float, typer.Option(help="seconds to wait for --min-peers")] = 120.0,
    namespace: NamespaceOption = "fedhive",
    ca_file: CaFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per round on stdout")] = False,
    initial_model: Annotated[
        str | None,
        typer.Option(
            help="start from these weights, the same on every peer: a file, s3://bucket/key or models:/NAME/VERSION"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="keep the final model here, in a folder of its own per run (DIR/<peer name>)"),
    ] = None,
    mlflow: MlflowFlag = False,
    mlflow_tracking_uri: MlflowUriOption = None,
    mlflow_experiment: MlflowExperimentOption = "fedhive",
    mlflow_register: MlflowRegisterOption = None,
) -> None:
    if not secret:
        raise ConfigError("--secret (or FEDHIVE_FEDERATION_SECRET) is required: the federation's shared secret")
    key = parse_secret(secret)
    if min_peers < 1 or beat <= 0 or peer_timeout <= beat or discovery_timeout <= 0 or gossip < 0:
        raise ConfigError(
            "--min-peers must be >= 1, --beat > 0, --peer-timeout > --beat, --discovery-timeout > 0, --gossip >= 0"
        )
    config = make_config(
        rounds=rounds,
        model=model,
        strategy=strategy,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        compression=compression,
        seed=seed,
        round_timeout_s=round_timeout,
        min_clients=min_peers,
    )
    data = LocalData(csv=csv, label=label, dataset=dataset, partition=partition, part=part, test_fraction=test_fraction)
    peer_name = f"peer-{part.replace('/', '-of-')}" if part else "peer"
    seed_index = parse_part(part)[0] - 1 if part else None
    if flower_app is not None:
        flower = flower_run(ctx, flower_app, {}, Console(stderr=True))
        # The ServerApp's rounds and strategy unless given here; its fraction and evaluation have
        # no meaning among peers, where every peer trains and evaluates.
        config = config.model_copy(update={"rounds": flower.rounds, "strategy": flower.strategy})
        loaded = flower.loaded
        partition_id = parse_pairs(node, "--node").get("partition-id")
        if isinstance(partition_id, int):  # a Flower node's name and seed order: its partition
            peer_name, seed_index = f"peer-{partition_id}", partition_id
        site = flower_site(peer_name, flower_app, node, data, state_dir=state_dir)
    else:
        loaded = load_app(app)
        site = build_site(peer_name, app, node, data, seed=seed, state_dir=state_dir)
    config = session_with_app(config, loaded)
    settings = PeerSettings(min_peers, beat, peer_timeout, discovery_timeout, gossip=gossip)
    initial = None
    if initial_model is not None:  # checked against the app's model before anything connects
        initial = load_initial_model(initial_model, site.trainer_for(config).initial_params(config.seed).spec)
    folder = new_session_folder(out, peer_name) if out is not None else None  # before connecting: errors first
    # A run per peer and one per round (tracking.node_runs); an unreachable server fails here.
    ml = MlflowOptions(mlflow_tracking_uri, mlflow, register=mlflow_register, experiment=mlflow_experiment)
    tracked = peer_run(ml, peer_name, config.model_dump(mode="json"), {"fedhive.namespace": namespace})
    final: list[Params] = []
    service_logging()
    say = sys.stderr if as_json else sys.stdout  # with --json, stdout is JSON lines only

    def ready(peer_id: str) -> None:
        print(f"peer {peer_id} announced; waiting for {min_peers} peers", file=say, flush=True)

    def on_round(e: PeerRoundCompleted) -> None:
        line = json.dumps({"round": e.round, "digest": e.digest, "members": len(e.members), **e.metrics})
        if folder is not None:
            with (folder / "rounds.jsonl").open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        if as_json:
            print(line, flush=True)
            return
        acc = f", accuracy {e.metrics['accuracy']:.4f}" if "accuracy" in e.metrics else ""
        print(f"round {e.round}: {len(e.members)} peers, digest {e.digest[:16]}{acc}", flush=True)

    def watch(bus: EventBus) -> None:
        bus.on(PeerRoundCompleted, on_round)

    run = run_peer(
        key,
        site,
        config,
        broker_settings(broker, namespace, ca_file, None),
        settings,
        evaluator=_evaluator(site, config, data),
        seed_index=seed_index,
        initial=initial,
        observers=[watch, tracked.attach] if tracked is not None else [watch],
        on_ready=ready,
        on_finished=lambda params: _finished(folder, params, final),
    )
    try:
        history = run_main(run)
    except BaseException as exc:
        if tracked is not None:  # the run ends FAILED, with the reason
            tracked.finish(None, failed=" ".join(str(exc).split()) or type(exc).__name__)
        raise
    if tracked is not None:
        tracked.finish(final[-1] if final else None)
        print(node_run_line(tracked, ml), file=say, flush=True)
    where = f"; final model in {folder / 'model.safetensors'}" if folder is not None else ""
    print(f"done after {len(history)} rounds{where}", file=say, flush=True)


def _finished(folder: Path | None, params: Params, final: list[Params]) -> None:
    final.append(params)  # for MLflow, once the peer stops
    if folder is not None:
        write_model(folder / "model.safetensors", params, {"digest": params_digest(params)})


def _evaluator(site: SiteApp, config: SessionConfig, data: LocalData) -> Evaluator | None:
    """How a peer reports each round's model: a demo data set's held-out rows (the same split as a
    coordinator's), or the app's own ``evaluate`` on this peer's data; None if neither exists."""
    app = site.loaded.app
    if data.dataset is not None and app.has("central_evaluate"):
        held_out = {"dataset": data.dataset, "test_fraction": data.test_fraction}
        return ServerApp(site.loaded, config, held_out).evaluator()
    if site.loaded.name != BUILTIN and app.has("evaluate"):
        return site.trainer_for(config)
    return None
