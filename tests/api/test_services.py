"""``Services.from_settings``: stores opened from URLs, the schema migrated, nothing left open on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_harness import make_settings
from recording_launcher import RecordingLauncher

from fedhive.errors import ConfigError
from fedhive.service.services import Services
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.storage.database import Database


def test_from_settings_migrates_and_opens_the_embedded_defaults(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    launcher_db = Database(settings.database_url())  # the launcher's own handle on the same file
    services = Services.from_settings(settings, RecordingLauncher(launcher_db))
    try:
        assert services.db.current_revision() is not None
        assert isinstance(services.artifacts, LocalArtifactStore) and services.artifacts.root == tmp_path / "artifacts"
        ref = services.artifacts.put(b"abc")
        assert services.artifacts.get(ref) == b"abc"
    finally:
        services.close()
        launcher_db.dispose()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"db_url": "mysql://db/fedhive"}, "unsupported database"),
        ({"artifacts_url": "ftp://x/y"}, "unsupported scheme"),
    ],
)
def test_bad_urls_are_config_errors(tmp_path: Path, override: dict[str, str], expected: str) -> None:
    settings = make_settings(tmp_path, **override)
    with pytest.raises(ConfigError, match=expected):
        Services.from_settings(settings, RecordingLauncher(Database(tmp_path / "other.db")))
