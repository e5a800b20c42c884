"""The built-in model zoo on the platform's own data plan, written as an app on the public API.

A ``builtin`` session started over the API trains on data the platform planned (``service.shards``):
an uploaded CSV split into one shard per peer in the artifact store, or a built-in data set every
peer computes its part of. This app is how the platform runs such a session through the same
``SiteApp``/``ServerApp`` path as any user's app:

- at a local peer (``PlatformDataApp(artifacts)``, one instance for every local peer of the
  process): ``init``/``train``/``evaluate`` load the peer's shard with ``peer_dataset`` (downloaded
  and checked against its sha256) and delegate to the zoo's trainer, one trainer kept per peer;
- at the coordinator (``PlatformDataApp(held_out=test)``, one per session): ``init`` draws the
  initial model and ``central_evaluate`` evaluates the global model on the held-out split.

It runs under the builtin app's name and digest (``platform_builtin``): it is fedhive's own code,
so a builtin session names the same app and code whichever site (local peer or remote ``builtin``
client) trains it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from fedhive.app.client_app import ClientApp
from fedhive.app.contract import Context, EvalResult, TrainResult
from fedhive.app.learner import Trainer
from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.learning.builtin_app import train_zoo_model
from fedhive.learning.datasets import Dataset
from fedhive.learning.factory import build_trainer
from fedhive.service.shards import peer_dataset
from fedhive.storage.artifacts import ArtifactStore


class PlatformDataApp:
    """The zoo's trainers on the platform's data plan: a peer's shard, or the held-out split."""

    def __init__(self, artifacts: ArtifactStore | None = None, *, held_out: Dataset | None = None) -> None:
        self._artifacts = artifacts
        self._held_out = held_out
        self._trainers: dict[str, tuple[tuple[object, ...], Trainer]] = {}
        self._lock = threading.Lock()

    def init(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> Params:
        return self._trainer(config, ctx).initial_params(int(config["seed"]))

    def train(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> TrainResult:
        return train_zoo_model(self._trainer(config, ctx), weights, config, ctx)

    def evaluate(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> EvalResult:
        return self._trainer(config, ctx).evaluate(weights)

    def central_evaluate(self, weights: Params, config: Mapping[str, Any], ctx: Context) -> EvalResult:
        if self._held_out is None:
            raise ConfigError("central evaluation needs the session's held-out split")
        return self._trainer(config, ctx).evaluate(weights)

    def _trainer(self, config: Mapping[str, Any], ctx: Context) -> Trainer:
        model = str(config["model"])
        seed = int(config.get("session_seed", config.get("seed", 0)))
        who = ctx.client_id
        key = (str(config.get("session_id", "")), model, seed)
        with self._lock:
            cached = self._trainers.get(who)
            if cached is not None and cached[0] == key:
                return cached[1]
        data = self._held_out
        if data is None:
            data = peer_dataset(dict(config.get("data") or {}), who, seed, self._artifacts)
        trainer = build_trainer(model, data.x, data.y, data.num_classes)
        with self._lock:
            self._trainers[who] = (key, trainer)  # one per peer: a new session replaces the last
        return trainer


def platform_builtin(builtin: LoadedApp, app: PlatformDataApp) -> LoadedApp:
    """``app`` as the builtin app: its name and digest (the sessions it takes part in name them)."""
    return LoadedApp(builtin.ref, builtin.name, ClientApp.from_object(app), builtin.digest, dict(builtin.run_config))
