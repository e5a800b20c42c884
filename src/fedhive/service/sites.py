"""What a site agent announces, as the platform keeps and shows it (the dashboard's sites page).

An agent (``fedhive agent``) announces its version, its installed apps (name -> the first digits
of its code's digest) and the names of its data sets, in its REGISTER and in every idle beat
(``runtime.agent.AgentSites.announcement``). The announcement is signed by the site, but it is
still input: before it is stored it is cut to a bounded, plain form (text without control
characters or lone surrogates, at most ``MAX_ITEMS`` apps and data sets), so that neither the
database nor the page ever sees more than that, whatever a site sends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_ITEMS = 64
MAX_TEXT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: object, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    text = str(value).encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    text = _CONTROL.sub("", text).strip()[:limit]
    return text or None


def site_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"agent": version or None, "apps": {name: digest}, "datasets": [name, ...]}``."""
    apps: dict[str, str] = {}
    given_apps = raw.get("apps")
    if isinstance(given_apps, Mapping):
        for name, digest in list(given_apps.items())[:MAX_ITEMS]:
            key = _text(name)
            if key is not None:
                apps[key] = _text(digest, 64) or ""
    datasets: list[str] = []
    given_sets = raw.get("datasets")
    if isinstance(given_sets, list | tuple):
        datasets = [t for t in (_text(d) for d in given_sets[:MAX_ITEMS]) if t is not None]
    return {"agent": _text(raw.get("agent"), 64), "apps": apps, "datasets": datasets}
