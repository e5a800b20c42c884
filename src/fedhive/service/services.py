"""What the platform service runs on: the metadata store, the artifact store, the session
launcher and the settings, in one container that ``create_app`` hangs on ``app.state``.

Nothing here is global: every app (and every test) gets its own ``Services``. The stores are
opened from URLs, so scaling out changes settings, not code. Opening is synchronous (migrations,
directory creation): call it before the event loop starts, or in a worker thread.

The installed apps (``settings.apps`` and ``builtin``) are loaded when ``Services`` is made,
unless the caller hands over the ones it loaded already (``installed``).

The launcher usually needs the stores itself (it creates session rows and claims peers), so
``open_stores`` is separate from ``from_settings``: build the stores, then the launcher on top of
them, then ``Services(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedhive.service.apps import InstalledApps
from fedhive.service.launcher import SessionLauncher
from fedhive.service.settings import Settings
from fedhive.storage import users_repo
from fedhive.storage.artifacts import ArtifactStore, artifact_store_from_url
from fedhive.storage.database import Database


def open_stores(settings: Settings) -> tuple[Database, ArtifactStore]:
    """The migrated metadata database and the artifact store the settings name.

    Migrating here means a freshly started service never serves on an old schema; on PostgreSQL
    the migration holds an advisory lock, so several replicas may start at once."""
    db = Database(settings.database_url())
    try:
        db.upgrade()
        with db.session() as s:  # rows from before client secrets were sealed (storage.secret_box)
            users_repo.seal_plaintext_client_secrets(s, settings.secret_box())
        artifacts = artifact_store_from_url(settings.artifact_url())
    except BaseException:
        db.dispose()  # no pooled connections left open behind a failed start
        raise
    return db, artifacts


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    artifacts: ArtifactStore
    launcher: SessionLauncher
    installed: InstalledApps | None = None  # default: loaded from settings.apps

    def __post_init__(self) -> None:
        if self.installed is None:
            object.__setattr__(self, "installed", InstalledApps.load(self.settings.apps))

    @property
    def apps(self) -> InstalledApps:
        """The apps sessions may run, by name (``builtin`` first)."""
        assert self.installed is not None
        return self.installed

    @classmethod
    def from_settings(cls, settings: Settings, launcher: SessionLauncher) -> Services:
        db, artifacts = open_stores(settings)
        return cls(settings=settings, db=db, artifacts=artifacts, launcher=launcher)

    def close(self) -> None:
        """Release the database's connection pool (the artifact stores hold nothing open)."""
        self.db.dispose()
