"""The final model of a reported session, uploaded to ``fedhive serve`` (``api.reported_model``).

``PlatformReporter`` calls ``upload_model`` once the server holds the session COMPLETED: the
model as safetensors (``core.codec``, never pickle) with its sha256, so the server can tell a file
cut short or altered on the way. It never raises: it answers None when the model is stored, or
the one line saying why not, which the reporter logs as its only word on it.
"""

from __future__ import annotations

import asyncio
import hashlib

import httpx

from fedhive.core import codec
from fedhive.core.params import Params

PATH = "/sessions/reported/model"  # api.reported_model.PATH
TIMEOUT_S = 60.0  # a big model takes its time; the reporter's close bounds the whole anyway


async def upload_model(http: httpx.AsyncClient, token: str, session_id: str, params: Params) -> str | None:
    """None when the server took the model; else why it did not (one line)."""
    try:
        data = await asyncio.to_thread(codec.encode, params)
        form = {"session_id": session_id, "digest": hashlib.sha256(data).hexdigest()}
        response = await http.post(
            PATH, data=form, files={"file": ("model.safetensors", data, "application/octet-stream")},
            headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT_S,
        )  # fmt: skip
    except (httpx.HTTPError, ValueError) as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    if response.is_success:
        return None
    try:
        detail = str(response.json().get("detail", ""))[:300]
    except ValueError:
        detail = response.text[:300]
    return " ".join(f"HTTP {response.status_code}: {detail}".split())
