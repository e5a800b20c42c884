"""A networked session as a coordinator runs it: its settings, its app and the coordinator's site.

Built from a session file by ``fedhive.cli.session_file``; the runtime only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhive.app.loader import LoadedApp
from fedhive.core.params import Params
from fedhive.runtime.session_config import SessionConfig


@dataclass(frozen=True)
class SessionFile:
    path: Path
    config: SessionConfig  # with the app's name and digest
    data_settings: dict[str, Any]  # the built-in app's data set ([data]); empty for other apps
    loaded: LoadedApp
    node: dict[str, Any]  # the coordinator's site settings: its app's ctx.node
    initial_params: Params | None = None  # weights to start from (checked); None: the app's init
