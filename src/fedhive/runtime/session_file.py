"""A session file (TOML): the settings of a networked session and the coordinator's held-out data.

    session_id = "digits-demo"      # optional; a random id when left out
    rounds = 20
    min_clients = 5
    model = "logreg-np"
    lr = 0.1

    [data]                          # what the coordinator evaluates the global model on
    dataset = "digits"
    partition = "dirichlet:0.5"     # demo clients (--dataset/--part) must use the same
    test_fraction = 0.2

Top-level keys are the fields of ``SessionConfig`` (see the README for the list); ``[data]`` holds
the fields of ``DataSpec``. A relative ``csv`` path is read relative to the session file. Every
mistake (TOML syntax, an unknown key, a value out of range, an unknown model or strategy) is one
``ConfigError`` line that names the file and the key, raised before anything connects.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhive.errors import ConfigError
from fedhive.learning.federation_data import DataSpec
from fedhive.learning.models import parse_model_spec
from fedhive.runtime.session_config import SessionConfig, validation_message
from fedhive.strategies.registry import parse_strategy

# Fields a session file cannot set: ``data`` is filled from the [data] table.
_NOT_IN_FILE = {"data"}


@dataclass(frozen=True)
class SessionFile:
    path: Path
    config: SessionConfig
    data: DataSpec


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
    data_table = raw.pop("data", None)
    if data_table is None:
        raise ConfigError(f"{path}: a [data] table is missing (the data set the coordinator evaluates on)")
    if not isinstance(data_table, dict):
        raise ConfigError(f"{path}: 'data' must be a table ([data]), not a {type(data_table).__name__}")
    known = set(SessionConfig.model_fields) - _NOT_IN_FILE
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
        if isinstance(value, dict):
            raise ConfigError(f"{path}: unknown table [{key}]; only [data] is a table")
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
        data = DataSpec(**data_fields)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [data] {validation_message(exc)}") from None
    # Clients read the data settings from the ENABLE message, which carries this config.
    session_data = {"dataset": data.dataset, "partition": data.partition, "test_fraction": data.test_fraction}
    try:
        config = SessionConfig(**raw, data=session_data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from None
    try:
        parse_model_spec(config.model)
        parse_strategy(config.strategy)
        data.check()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return SessionFile(path, config, data)
