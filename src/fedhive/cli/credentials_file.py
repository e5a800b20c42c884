"""The identities file of ``--virtual N --credentials FILE`` (``fedhive client`` and ``fedhive
agent``): the JSON lines ``fedhive clients add NAME --count N --json`` and ``fedhive admin site
create NAME --count N --json`` write (one object per identity, with ``client_id`` and ``secret``,
and ``broker_user``/``broker_password`` when the node has a broker login of its own), or a client
store itself (``{"clients": {ID: {...}}}``, which holds no broker passwords)."""

from __future__ import annotations

import json
from pathlib import Path

from fedhive.errors import ConfigError


def credential_entries(path: Path) -> dict[str, dict[str, object]]:
    """Each identity's entry by id; ``ConfigError`` in one line if the file cannot be read or is
    neither form, or an entry has no ``client_id`` and ``secret``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("clients"), dict):
            entries = {str(cid): dict(e) for cid, e in doc["clients"].items()}  # the store itself
            if all("secret" in e for e in entries.values()):
                return entries
    except (ValueError, TypeError):
        pass  # several lines: not one document
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        entries = {str(e["client_id"]): dict(e) for e in lines}
        if all("secret" in e for e in entries.values()):
            return entries
    except (ValueError, KeyError, TypeError):
        pass
    raise ConfigError(
        f"{path}: expected the lines of 'fedhive clients add NAME --count N --json' "
        "(or 'fedhive admin site create NAME --count N --json'), or a client store"
    )
