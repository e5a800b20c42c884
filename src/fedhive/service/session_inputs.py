"""What a platform session starts from: its data plan, its app's server side, its initial model.

The coordinator's side of a session goes through the app API (``ServerApp``): the initial model
from the app's ``init``, the evaluation after each round from its ``central_evaluate``. A builtin
session keeps the platform's data plan (an uploaded CSV's shards, a built-in data set's parts) and
evaluates on its held-out split (``PlatformDataApp``); any other installed app reads its own data
at each site, and the session's ``data`` only lists its peers (``{"peers": [...]}``, sorted: a
local peer's ``partition_id`` is its place in that list).

A resumed session plans again from what its stored config kept (``plan_again``): the split and the
content-addressed shards are deterministic, so it gets the same held-out split without new rows or
artifacts. Everything here is blocking (database reads, artifact reads, CSV splitting): the
session manager runs it in worker threads.
"""

from __future__ import annotations

from fedhive.app.loader import BUILTIN, LoadedApp
from fedhive.core import codec
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import ConfigError, PayloadError
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import ServerApp
from fedhive.service.apps import InstalledApps
from fedhive.service.launcher import SessionRequest
from fedhive.service.platform_data_app import PlatformDataApp, platform_builtin
from fedhive.service.shards import DataPlan, plan_builtin, plan_uploaded_csv
from fedhive.storage import models_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database

_MAX_MODEL_BYTES = 1 << 33


class SessionInputs:
    """Plans sessions' data and finds their initial models, from the stores and installed apps."""

    def __init__(self, db: Database, artifacts: ArtifactStore, apps: InstalledApps) -> None:
        self.db = db
        self.artifacts = artifacts
        self.apps = apps

    def plan(self, config: SessionConfig, peers: list[str], dataset_id: str | None, owner_id: str) -> DataPlan:
        """A new session's data plan: an uploaded CSV split into shards (stored), a built-in data
        set's parts, or only its peers for an app that reads its own data."""
        if config.app != BUILTIN:  # the app reads its own data at each site
            return DataPlan({"peers": sorted(peers)}, None)
        if dataset_id is None:
            spec = DataSpec(**{k: v for k, v in config.data.items() if k in DataSpec.model_fields})
            return plan_builtin(spec, peers, config.seed)
        with self.db.session(read_only=True) as s:
            row = models_repo.get_dataset(s, dataset_id, owner_id=int(owner_id))
            if row is None:
                raise ConfigError(f"dataset {dataset_id!r} not found")
            ref, label = row.artifact_ref, row.label_column
        if not label:
            raise ConfigError("the uploaded dataset has no label column named")
        partition = str(config.data.get("partition", "iid"))
        plan = plan_uploaded_csv(self.artifacts, ref, label, partition, peers, config.seed)
        return DataPlan({**plan.data, "csv_ref": ref}, plan.test)

    def plan_again(self, config: SessionConfig, peers: list[str]) -> DataPlan:
        """A resumed session's plan: the data its config kept, and its held-out split made again."""
        data = config.data
        if config.app != BUILTIN:
            return DataPlan({"peers": sorted(data.get("peers", peers))}, None)
        if "csv_ref" in data:  # deterministic: the same split and the same content-addressed shards
            plan = plan_uploaded_csv(
                self.artifacts,
                str(data["csv_ref"]),
                str(data["label"]),
                str(data["partition"]),
                sorted(data["shards"]),
                config.seed,
            )
            return DataPlan(dict(data), plan.test)
        spec = DataSpec(**{k: v for k, v in data.items() if k in DataSpec.model_fields})
        return DataPlan(dict(data), plan_builtin(spec, sorted(data.get("parts", peers)), config.seed).test)

    def initial_params(self, request: SessionRequest, config: SessionConfig, plan: DataPlan) -> Params:
        """The model a new session starts from: weights given with the request, a registered model
        version, or the app's own ``init``; ``ConfigError`` when given weights do not fit the app's."""
        if request.initial_params is not None:  # decoded by whoever loaded them; the fit to this session here
            source, given = request.initial_params
            _check_fits(given, self.fresh_params(config, plan).spec, source)
            return given.copy()
        if request.initial_model is None:
            return self.fresh_params(config, plan)
        name, version = request.initial_model
        with self.db.session(read_only=True) as s:
            row = models_repo.get_model_version(s, int(request.owner_id), name, version)
            if row is None:
                raise ConfigError(f"model {name!r} version {version} not found")
            ref = row.artifact_ref
        params = codec.decode(self.artifacts.get(ref), max_bytes=_MAX_MODEL_BYTES, what="registered model")
        _check_fits(params, self.fresh_params(config, plan).spec, f"model {name!r} version {version}")
        return Params({n: a.copy() for n, a in params.items()})

    def fresh_params(self, config: SessionConfig, plan: DataPlan) -> Params:
        """The app's own initial model: what a session starts from when nothing else is given."""
        return self.server_app(config, plan).initial_params()

    def server_app(self, config: SessionConfig, plan: DataPlan) -> ServerApp:
        """The coordinator's side of the session's app: its initial model and central evaluation."""
        loaded: LoadedApp = self.apps.for_session(config)
        if config.app == BUILTIN:
            if plan.test is None:
                raise ConfigError(f"session {config.session_id} has no held-out split to evaluate on")
            loaded = platform_builtin(loaded, PlatformDataApp(held_out=plan.test))
        return ServerApp(loaded, config)


def _check_fits(params: Params, needed: ParamSpec, source: str) -> None:
    """``ConfigError`` (422 on the API) naming the first tensor of ``params`` that differs from the
    session's model in name, shape or dtype, or that holds NaN or Inf."""
    try:
        check_against_spec(params, needed, what=source)
    except PayloadError as exc:
        raise ConfigError(f"{exc} (the session's model)") from None
