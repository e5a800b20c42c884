"""The apps a platform runs: ``fedhive serve --app REF`` (repeatable), loaded once at start-up.

``builtin`` (fedhive's model zoo) is always installed and always listed first; every other app is
loaded with ``fedhive.load_app``, exactly as ``fedhive simulate --app`` and ``fedhive client --app``
load it, except ``flower:PATH``: a Flower project's ClientApp, run unchanged (docs/flower.md), as
``fedhive client --flower-app PATH`` runs it; its ServerApp gives a session's defaults (``flower``).
Only the operator names paths: a session names an installed app by its name.

A session names its app (``SessionConfig.app``) and the digest of its code; the platform
runs a session only with the app installed under that name and with that digest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from fedhive.app.loader import BUILTIN, LoadedApp, load_app
from fedhive.compat.flower import FLOWER_PREFIX, FlowerProject, installed_flower_project
from fedhive.errors import AppError, ConfigError
from fedhive.runtime.session_config import SessionConfig


class InstalledApps(Mapping[str, LoadedApp]):
    """Installed apps by name, ``builtin`` first, then in the order they were given."""

    def __init__(self, apps: Iterable[LoadedApp], flower: Iterable[FlowerProject] = ()) -> None:
        self._apps: dict[str, LoadedApp] = {}
        self._flower = {project.loaded.name: project for project in flower}
        for loaded in apps:
            other = self._apps.get(loaded.name)
            if other is not None and other.digest != loaded.digest:
                raise AppError(
                    f"two installed apps are named {loaded.name!r} ({other.ref!r} and {loaded.ref!r}): "
                    "sessions name their app, so names must differ"
                )
            self._apps.setdefault(loaded.name, loaded)
        if BUILTIN not in self._apps:
            raise AppError("the builtin app is not installed")

    @classmethod
    def load(cls, refs: Iterable[str] = ()) -> InstalledApps:
        """``builtin`` and the apps ``refs`` name; ``AppError`` (one line) for one that cannot load."""
        builtin = load_app(BUILTIN)
        loaded = [builtin]
        flower = []
        for ref in refs:
            if ref.strip() == BUILTIN:
                continue
            if ref.startswith(FLOWER_PREFIX):
                project = _flower_project(ref.removeprefix(FLOWER_PREFIX))
                flower.append(project)
                app = project.loaded
            else:
                app = load_app(ref)
            if app.name == BUILTIN:
                raise AppError(f"app {ref!r} is named {BUILTIN!r}, the name of fedhive's own app: rename it")
            loaded.append(app)
        return cls(loaded, flower)

    def __getitem__(self, name: str) -> LoadedApp:
        return self._apps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._apps)

    def __len__(self) -> int:
        return len(self._apps)

    @property
    def builtin(self) -> LoadedApp:
        return self._apps[BUILTIN]

    def named(self, name: str) -> LoadedApp:
        """The app installed as ``name``; ``ConfigError`` naming the installed ones otherwise."""
        loaded = self._apps.get(name)
        if loaded is None:
            raise ConfigError(f"app: no app {name!r} is installed here; installed: {', '.join(self._apps)}")
        return loaded

    def flower(self, name: str) -> FlowerProject | None:
        """The Flower project installed as ``name`` (its ServerApp's rounds and strategy), if it is one."""
        return self._flower.get(name)

    def for_session(self, config: SessionConfig) -> LoadedApp:
        """The session's app, checked to be the code the session was started with."""
        loaded = self.named(config.app)
        if config.app_digest and config.app_digest != loaded.digest:
            raise AppError(
                f"app {config.app!r} installed here (code {loaded.short_digest}) is not the code session "
                f"{config.session_id} started with ({config.app_digest[:12]}): install that version again"
            )
        return loaded


def _flower_project(path: str) -> FlowerProject:
    if not path.strip():
        raise AppError("flower: needs the Flower project's folder, flower:PATH")
    return installed_flower_project(Path(path.strip()))


def state_folder_name(app_name: str) -> str:
    """A file name for an app's name (a module path, a project name, a file's stem)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", app_name)[:100] or "app"
