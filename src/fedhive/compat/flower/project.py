"""A Flower project folder as a fedhive app: ``load_flower_project(folder, overrides)``.

As ``flwr run`` does: ``pyproject.toml`` names the apps in ``[tool.flwr.app.components]``
(``clientapp``, ``serverapp``) and their defaults in ``[tool.flwr.app.config]``; the folder goes on
``sys.path`` and the apps are imported by ``module:attr`` (Flower's own loader). The run config is
Flower's fusion of those defaults with the run's overrides (an unknown key is refused, as by
``flwr run --run-config``). The ServerApp is read, not run (``server_capture``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhive.app.loader import LoadedApp, _digest
from fedhive.compat.flower.version import require_flower
from fedhive.core.collector import collector_paused
from fedhive.errors import AppError, ConfigError


@dataclass(frozen=True)
class FlowerProject:
    loaded: LoadedApp  # the adapter as a fedhive app; run_config = the fused Flower run config
    num_rounds: int | None  # what the ServerApp would have run
    strategy: Any  # the mapping of the ServerApp's strategy (strategy_map.StrategyMapping)
    flower_version: str


def load_flower_project(folder: Path, overrides: dict[str, Any]) -> FlowerProject:
    with collector_paused(freeze_once=True):  # Flower's and the app's imports: see core.collector
        return _load_flower_project(folder, overrides)


def _load_flower_project(folder: Path, overrides: dict[str, Any]) -> FlowerProject:
    version = require_flower()
    # Flower is imported only here: fedhive without the extra never needs it.
    from flwr.app import Context, RecordDict
    from flwr.clientapp import ClientApp as FlowerClientApp
    from flwr.common.config import flatten_dict, fuse_dicts, get_project_config
    from flwr.serverapp import ServerApp as FlowerServerApp
    from flwr.supercore.object_ref import load_app

    from fedhive.compat.flower.client_adapter import FlowerClientAdapter
    from fedhive.compat.flower.server_capture import capture_server
    from fedhive.compat.flower.strategy_map import map_strategy

    folder = folder.resolve()
    try:
        doc = get_project_config(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{folder} is not a Flower project: {' '.join(str(exc).split())}") from None
    app_table = doc["tool"]["flwr"]["app"]
    components = app_table["components"]
    defaults = flatten_dict(app_table.get("config", {}))
    try:
        run_config = fuse_dicts(defaults, dict(overrides))
    except ValueError as exc:
        raise ConfigError(f"--run-config: {exc} ([tool.flwr.app.config] of {folder / 'pyproject.toml'})") from None
    name = str(doc["project"]["name"])
    client = _load(load_app, components["clientapp"], folder, FlowerClientApp, "clientapp")
    server = _load(load_app, components["serverapp"], folder, FlowerServerApp, "serverapp")
    server_context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    plan = capture_server(server, server_context, f"Flower app {name!r}")
    adapter = FlowerClientAdapter(client, plan, list(run_config), name)
    loaded = LoadedApp(str(folder), name, adapter.fedhive_app(), _digest(folder), dict(run_config))
    return FlowerProject(loaded, plan.num_rounds, map_strategy(plan.strategy), version)


def _load(load_app: Any, ref: str, folder: Path, kind: type, key: str) -> Any:
    try:
        obj = load_app(ref, AppError, folder)
    except AppError as exc:
        raise AppError(f"[tool.flwr.app.components].{key} = {ref!r}: {' '.join(str(exc).split())}") from None
    except Exception as exc:
        raise AppError(f"importing {key} {ref!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, kind):
        raise AppError(f"{key} {ref!r} is a {type(obj).__name__}, not a Flower {kind.__name__}")
    return obj


FLOWER_PREFIX = "flower:"  # an installed app's reference: flower:PATH (fedhive serve --app, docs/flower.md)


def installed_flower_project(folder: Path) -> FlowerProject:
    """The Flower project at ``folder`` with its own run config, loaded once per process: the form a
    site (``fedhive client --flower-app``) or a platform (``fedhive serve --app flower:PATH``)
    installs, whose run config the session then sets."""
    return _installed(folder.resolve())


@functools.lru_cache(maxsize=16)
def _installed(folder: Path) -> FlowerProject:
    # One adapter per folder and process: every virtual client of a process shares it (its Flower
    # Context is per client), and the app's modules are imported once.
    return load_flower_project(folder, {})
