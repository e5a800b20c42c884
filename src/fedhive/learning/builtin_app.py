"""fedhive's model zoo and demo data sets, written as an app on the public API.

It is what ``fedhive simulate --dataset digits`` and a client started with ``--dataset``/``--csv``
run; nothing in the runtime knows it apart from any user's app. Its site settings (``ctx.node``):

- ``dataset`` (``digits``, ``iris``, ``wine``, ``breast-cancer``, ``mnist5k``), ``partition`` and
  ``test_fraction``, and which part this client holds: ``part`` = ``"I/N"``, or in simulation
  ``partition_id`` (0-based) and ``num_partitions``;
- or ``csv`` and ``label``: the site's own CSV file;
- neither part nor CSV: the server side, which evaluates on the held-out test split
  (``central_evaluate``) and draws the initial model.
- ``population`` (simulation of a population larger than a round): clients share the data set's
  shards when there are more of them than rows (``partition.ShardIndex``), and clients of one
  shard share one trainer, so what is kept grows with the rows, not with the clients sampled.

Its run config: ``model`` (a zoo spec such as ``simple-dnn:128,64`` or ``logreg-np``), the local
SGD settings (``epochs``, ``batch_size``, ``lr``, ``momentum``, ``proximal_mu``, ``local_steps``),
``seed`` and ``session_seed`` (the shard a demo part holds depends on the session's seed).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedhive.app.contract import Context, EvalResult, TrainResult
from fedhive.app.learner import EpochProgress, FitConfig, Trainer
from fedhive.core.params import Params
from fedhive.errors import ConfigError, DataError
from fedhive.learning.datasets import Dataset, load_dataset, split_train_test, standardize
from fedhive.learning.factory import build_trainer
from fedhive.learning.federation_data import DataSpec, FederatedData, prepare
from fedhive.learning.partition import partition

SERVER_SIDE = "server"


class BuiltinApp:
    """The model zoo on the app contract. One instance serves every client of a process: it keeps
    one trainer per client id (a trainer holds that client's rows and model)."""

    def __init__(self) -> None:
        self._trainers: dict[str, tuple[tuple[object, ...], Trainer]] = {}
        self._lock = threading.Lock()

    def init(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> Params:
        # A node without rows of its own (the coordinator) shapes the model on the held-out split
        # it evaluates on: the same trainer for both, so the data set is loaded once.
        server = not any(key in ctx.node for key in ("partition_id", "part", "csv"))
        return self._trainer(config, ctx, server=server).initial_params(int(config["seed"]))

    def train(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> TrainResult:
        return train_zoo_model(self._trainer(config, ctx), weights, config, ctx)

    def evaluate(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> EvalResult:
        """The global model on this client's share of the held-out rows: the held-out split is
        partitioned like the training rows, so the clients' shares together are the held-out split
        and their example-weighted accuracy is the central one."""
        return self._trainer(config, ctx, validation=True).evaluate(weights)

    def central_evaluate(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> EvalResult:
        return self._trainer(config, ctx, server=True).evaluate(weights)

    def _trainer(
        self, config: Mapping[str, Any], ctx: Context, *, server: bool = False, validation: bool = False
    ) -> Trainer:
        node = dict(ctx.node)
        seed = int(config.get("session_seed", config.get("seed", 0)))
        model = str(config.get("model", "simple-dnn"))
        who = SERVER_SIDE if server else f"{ctx.client_id}/validation" if validation else ctx.client_id
        if not server and node.get("population") and "partition_id" in node:
            # A client of a population holds its shard's rows: the shard's trainer, not one per client.
            shard = _population_shard(node, seed)
            who = f"shard-{shard}/validation" if validation else f"shard-{shard}"
            node = {**node, "partition_id": shard}  # in the key: a shard's clients share it
        key = (model, seed, tuple(sorted(node.items())), server)
        with self._lock:
            cached = self._trainers.get(who)
            if cached is not None and cached[0] == key:
                return cached[1]
        _check_matches(node, config.get("data"))
        ds = (
            _server_data(node, seed)
            if server
            else _validation_data(node, seed)
            if validation
            else _client_data(node, seed)
        )
        trainer = build_trainer(model, ds.x, ds.y, ds.num_classes)
        with self._lock:
            self._trainers[who] = (key, trainer)
        return trainer


def train_zoo_model(trainer: Trainer, weights: Params, config: Mapping[str, Any], ctx: Context) -> TrainResult:
    """One local training call of a zoo trainer with the app config's settings, its epochs shown
    as progress (the built-in app's and the platform's data app's ``train``)."""
    steps = config.get("local_steps")
    fit = FitConfig(
        epochs=int(config["epochs"]),
        batch_size=int(config["batch_size"]),
        lr=float(config["lr"]),
        momentum=float(config["momentum"]),
        seed=int(config["seed"]),
        proximal_mu=float(config.get("proximal_mu") or 0.0),
        max_steps=None if steps is None else int(steps),
        round=int(config.get("round", 0)),
    )

    def progress(p: EpochProgress) -> None:
        metrics = {k: v for k, v in (("loss", p.loss), ("accuracy", p.accuracy)) if v is not None}
        ctx.progress(p.epoch, p.epochs, **metrics)

    result = trainer.fit(weights, fit, progress)
    return TrainResult(result.params, result.num_examples, result.metrics)


def data_spec(node: Mapping[str, Any]) -> DataSpec:
    csv = node.get("csv")
    return DataSpec(
        dataset="csv" if csv else str(node.get("dataset", "digits")),
        csv=str(csv) if csv else None,
        label=node.get("label"),
        partition=str(node.get("partition", "iid")),
        test_fraction=float(node.get("test_fraction", 0.2)),
    )


def _client_data(node: Mapping[str, Any], seed: int) -> Dataset:
    """This client's training rows."""
    if "partition_id" in node:  # simulation: every client's shard comes from one cached split
        return _federation(node, seed).shard(int(node["partition_id"]))
    if "part" in node:
        i, n = (int(p) for p in str(node["part"]).split("/"))
        return prepare(data_spec(node), n, seed).shards[i - 1]
    if node.get("csv"):
        # The site's own rows, standardised with their own statistics: nothing else is known here.
        ds = load_dataset("csv", csv_path=str(node["csv"]), label=node.get("label"))
        return standardize(ds, ds)[0]
    return _server_data(node, seed)  # the server side: init needs features and classes only


def _validation_data(node: Mapping[str, Any], seed: int) -> Dataset:
    """This client's share of the held-out rows (a site with its own CSV: a fifth of its rows)."""
    if "partition_id" in node or "part" in node:
        if "partition_id" in node:
            i, n = int(node["partition_id"]), int(node["num_partitions"])
            index = _federation(node, seed).index
            if index is not None:  # a population's shared shards: the shard's held-out share
                i, n = index.shard_of(i), index.shards
        else:
            one_based, n = (int(p) for p in str(node["part"]).split("/"))
            i = one_based - 1
        test = _server_data(
            {k: v for k, v in node.items() if k not in ("part", "partition_id")} | {"num_partitions": n}, seed
        )
        rows = _held_out_shares(data_spec(node).model_dump_json(), n, seed)[i]
    elif node.get("csv"):
        test = _client_data(node, seed)
        rows = np.random.default_rng(seed).permutation(len(test))[: max(1, len(test) // 5)]
    else:
        raise DataError("the built-in app evaluates on a client's share of a data set: give --dataset and --part")
    if len(rows) == 0:
        raise DataError("this client holds no held-out rows to evaluate on")
    return test.take(np.sort(rows))


@functools.lru_cache(maxsize=8)
def _held_out_shares(spec_json: str, num_clients: int, seed: int) -> list[np.ndarray]:
    spec = DataSpec.model_validate_json(spec_json)
    test = prepare(spec, num_clients, seed).test
    if num_clients <= len(test):
        return partition(test.y, num_clients, spec.partition, seed)
    # More clients than held-out rows: one row each for the first, none for the rest.
    return np.array_split(np.random.default_rng(seed).permutation(len(test)), num_clients)


def _server_data(node: Mapping[str, Any], seed: int) -> Dataset:
    """The held-out test split, the same rows every client leaves out (from the seed alone)."""
    spec = data_spec(node)
    if "num_partitions" in node:
        return _federation(node, seed).test
    ds = load_dataset(spec.dataset, csv_path=spec.csv, label=spec.label)
    return split_train_test(ds, spec.test_fraction, seed)[1]


def _federation(node: Mapping[str, Any], seed: int) -> FederatedData:
    """The split and partition of a simulation's clients (``num_partitions`` of them)."""
    return prepare(data_spec(node), int(node["num_partitions"]), seed, shared=bool(node.get("population")))


def _population_shard(node: Mapping[str, Any], seed: int) -> int:
    """The shard a population's client ``partition_id`` holds."""
    index, client = _federation(node, seed).index, int(node["partition_id"])
    return client if index is None else index.shard_of(client)


def _check_matches(node: Mapping[str, Any], session: object) -> None:
    if node.get("csv") or not isinstance(session, Mapping) or not session:
        return
    mine = data_spec(node)
    for key in ("dataset", "partition", "test_fraction"):
        theirs = session.get(key)
        if theirs is not None and key in node and theirs != getattr(mine, key):
            # Different partitions would give overlapping shards: the federation would be wrong
            # without any error, so refuse.
            raise ConfigError(f"this client's {key} is {getattr(mine, key)!r} but the session's is {theirs!r}")


app = BuiltinApp()
