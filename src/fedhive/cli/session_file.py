"""A session file (TOML): the settings of a networked session.

    session_id = "digits-demo"      # optional; a random id when left out
    rounds = 20
    min_clients = 5
    app = "builtin"                 # or module:attr, file.py:attr, a project folder, flower:PATH (default builtin)
    model = "logreg-np"             # the built-in app's model
    lr = 0.1

    [data]                          # the built-in app: what the coordinator evaluates the model on
    dataset = "digits"
    partition = "dirichlet:0.5"     # demo clients (--dataset/--part) must use the same
    test_fraction = 0.2

    [run_config]                    # a user app's own settings, handed to it as `config`
    hidden = 64

    [node]                          # the coordinator's own site settings (its app's ctx.node)

A top-level ``initial_model`` (a file, ``s3://bucket/key`` or ``models:/NAME/VERSION``) starts the
session from those weights instead of the app's ``init``.

Top-level keys are the fields of ``SessionConfig`` (see the README for the list); ``[data]`` holds
the fields of ``DataSpec`` and is needed by the built-in app only. A relative ``csv`` or app path is
read relative to the session file. Every mistake (TOML syntax, an unknown key, a value out of
range, an unknown model or strategy, an app that does not load) is one ``ConfigError``/``AppError``
line that names the file and the key, raised before anything connects.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhive.app.loader import BUILTIN, load_app
from fedhive.cli.flower_options import flower_session_app
from fedhive.cli.initial_model import load_initial_model
from fedhive.compat.flower import FLOWER_PREFIX
from fedhive.errors import ConfigError, FedhiveError
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.models import parse_model_spec
from fedhive.runtime.session_config import SessionConfig, validation_message
from fedhive.runtime.session_plan import SessionFile
from fedhive.runtime.site_app import ServerApp, session_with_app
from fedhive.strategies.registry import parse_strategy

# Fields a session file cannot set: ``data`` is filled from the [data] table, the digest from the app.
_NOT_IN_FILE = {"data", "app_digest"}
_TABLES = {"run_config"}


def load_session_file(path: str | Path) -> SessionFile:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"session file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read session file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_session(raw, path)


def parse_session(raw: dict[str, Any], path: Path) -> SessionFile:
    app_ref = raw.pop("app", BUILTIN)
    if not isinstance(app_ref, str):
        raise ConfigError(f"{path}: app must be a string (module:attr, file.py:attr or a folder)")
    flower = None
    if app_ref.startswith(FLOWER_PREFIX):  # a Flower project; its ServerApp fills settings left out
        try:
            flower = flower_session_app(app_ref, raw, path)
        except FedhiveError as exc:
            raise type(exc)(f"{path}: {exc}") from None
    elif app_ref != BUILTIN and (path.parent / app_ref.split(":")[0]).exists():
        first, colon, rest = app_ref.partition(":")
        app_ref = str((path.parent / first).resolve()) + colon + rest
    initial_model = raw.pop("initial_model", None)
    if initial_model is not None and not isinstance(initial_model, str):
        raise ConfigError(f"{path}: initial_model must be a string (a file, s3://bucket/key or models:/NAME/VERSION)")
    node = raw.pop("node", {})
    if not isinstance(node, dict) or any(isinstance(v, dict) for v in node.values()):
        raise ConfigError(f"{path}: 'node' must be a table ([node]) of plain values")
    data_table = raw.pop("data", None)
    known = set(SessionConfig.model_fields) - _NOT_IN_FILE
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
        if isinstance(value, dict) and key not in _TABLES:
            raise ConfigError(f"{path}: unknown table [{key}]; tables: [data], [run_config], [node]")
    builtin = app_ref == BUILTIN
    data = _data_spec(data_table, path) if builtin or data_table is not None else None
    # Clients read the data settings from the ENABLE message, which carries this config.
    session_data = (
        {"dataset": data.dataset, "partition": data.partition, "test_fraction": data.test_fraction} if data else {}
    )
    try:
        config = SessionConfig(**raw, data=session_data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    try:
        if builtin:
            parse_model_spec(config.model)
        parse_strategy(config.strategy)
        if data is not None:
            data.check()
        loaded = flower or load_app(app_ref)
    except FedhiveError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    server_node = {**(data.model_dump(exclude_none=True) if data else {}), **node}
    data_settings = data.model_dump() if data is not None else {}
    session = SessionFile(path, session_with_app(config, loaded), data_settings, loaded, server_node)
    if initial_model is None:
        return session
    if not initial_model.startswith(("s3://", "models:/")) and not Path(initial_model).is_absolute():
        initial_model = str(path.parent / initial_model)
    return with_initial_model(session, initial_model)


def with_initial_model(session: SessionFile, ref: str) -> SessionFile:
    """The session starting from the weights ``ref`` names, checked against its app's model."""
    spec = ServerApp(session.loaded, session.config, session.node).initial_params().spec
    return dataclasses.replace(session, initial_params=load_initial_model(ref, spec))


def _data_spec(data_table: object, path: Path) -> DataSpec:
    if data_table is None:
        raise ConfigError(f"{path}: a [data] table is missing (the data set the built-in app evaluates on)")
    if not isinstance(data_table, dict):
        raise ConfigError(f"{path}: 'data' must be a table ([data]), not a {type(data_table).__name__}")
    data_fields = dict(data_table)
    unknown = set(data_fields) - set(DataSpec.model_fields)
    if unknown:
        known_data = ", ".join(DataSpec.model_fields)
        raise ConfigError(f"{path}: unknown setting {sorted(unknown)[0]!r} in [data]; known: {known_data}")
    if isinstance(data_fields.get("csv"), str):
        data_fields["csv"] = str((path.parent / data_fields["csv"]).resolve())
    if data_fields.get("csv") and "dataset" not in data_fields:
        data_fields["dataset"] = "csv"
    try:
        return DataSpec(**data_fields)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [data] {validation_message(exc)}") from None
