"""A reported session's final model: its coordinator's reporter uploads it once the session is
COMPLETED, and it is the session's model on the platform (listed with the session, downloadable).
The upload is the reporting user's, checked before anything is stored: another user's session,
a platform session, one not completed, a second model, a wrong digest, bytes that are not
safetensors, or an oversized file are each refused with a one-line error. A reporter that cannot
upload says so in one warning line, within its bounded close, and never fails the session."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api_harness import Api, make_settings, one_line_detail
from recording_launcher import RecordingLauncher
from test_reported_sessions import config, opened, post

from fedhive.api.app import create_app
from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.service.services import Services, open_stores
from fedhive.storage import sessions_repo
from fedhive.storage.models import SessionStatus
from fedhive.tracking.platform_report import Login, PlatformReporter

MODEL = Params(
    {"dense/kernel": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "dense/bias": np.ones(4, np.float32)}
)
ENDED = [{"kind": "ended", "status": "COMPLETED", "reason": "completed all 3 rounds"}]


async def upload(api: Api, headers: dict[str, str], sid: str, data: bytes, digest: str | None = None) -> httpx.Response:
    form = {"session_id": sid, "digest": digest or hashlib.sha256(data).hexdigest()}
    files = {"file": ("model.safetensors", data, "application/octet-stream")}
    return await api.client.post("/sessions/reported/model", data=form, files=files, headers=headers)


@pytest.mark.parametrize("settings", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_the_reporter_uploads_a_completed_sessions_model_and_it_is_downloadable(api: Api) -> None:
    ann = await api.user("ann@example.org")
    sid = "cli-model-1"
    reporter = PlatformReporter(
        "http://fedhive.test", Login(token=ann["Authorization"].removeprefix("Bearer ")),
        config=config(sid), transport=api.client._transport, interval_s=60,
    )  # fmt: skip
    bus = EventBus()
    reporter.attach(bus)
    reporter.start()
    await bus.dispatch(ev.SessionStarted(sid, config(sid), ["site-a", "site-b"], 1))
    await bus.dispatch(ev.SessionCompleted(sid, 3, MODEL, {"accuracy": 0.9}))
    await reporter.aclose(wait_s=30)
    assert reporter.stopped is None

    session = (await api.client.get(f"/sessions/{sid}", headers=ann)).json()
    assert session["status"] == "COMPLETED", session
    model = session["final_model"]
    assert model is not None and model["name"] == f"session-{sid}", session
    got = await api.client.get(f"/models/{model['name']}/versions/{model['version']}/download", headers=ann)
    assert got.status_code == 200, got.text
    stored = codec.decode(got.content, max_bytes=1 << 20)
    assert {n: a.tolist() for n, a in stored.items()} == {n: a.tolist() for n, a in MODEL.items()}
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(codec.encode(MODEL)).hexdigest()


async def completed(api: Api, headers: dict[str, str], sid: str) -> str:
    await opened(api, headers, sid)
    assert (await post(api, headers, sid, ENDED)).json()["status"] == "COMPLETED"
    return sid


BAD: dict[str, tuple[Any, int, str]] = {
    "a wrong digest": (lambda d: (d, "0" * 64), 422, "not the digest sent"),
    "pickle bytes": (lambda d: (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.", None), 422, "not safetensors"),
    "safetensors cut short": (lambda d: (d[: len(d) // 2], None), 422, "not safetensors"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
async def test_a_bad_model_file_is_a_one_line_422_and_stores_nothing(api: Api, bad: str) -> None:
    ann = await api.user("ann@example.org")
    sid = await completed(api, ann, "cli-model-2")
    make, status, why = BAD[bad]
    data, digest = make(codec.encode(MODEL))
    answer = await upload(api, ann, sid, data, digest)
    assert answer.status_code == status and why in one_line_detail(answer.json()), answer.text
    assert (await api.client.get(f"/sessions/{sid}", headers=ann)).json()["final_model"] is None
    assert (await upload(api, ann, sid, codec.encode(MODEL))).status_code == 201  # the real one still goes


async def test_only_the_owners_completed_reported_session_takes_one_model(api: Api) -> None:
    ann, bob = await api.user("ann@example.org"), await api.user("bob@example.org")
    data = codec.encode(MODEL)
    running = await opened(api, ann, "cli-model-3")
    answer = await upload(api, ann, running, data)
    assert answer.status_code == 409 and "only a completed one's model" in one_line_detail(answer.json())
    sid = await completed(api, ann, "cli-model-4")
    answer = await upload(api, bob, sid, data)  # another user's: as if it did not exist
    assert answer.status_code == 404 and one_line_detail(answer.json()) == f"no session {sid!r}"
    assert (await upload(api, ann, sid, data)).status_code == 201
    again = await upload(api, ann, sid, codec.encode(Params({"w": np.zeros(2, np.float32)})))
    assert again.status_code == 409 and "already has its model" in one_line_detail(again.json())
    # A platform session's model is its own: a reported upload cannot land on it, even completed.
    with api.services.db.session() as s:
        row = sessions_repo.create_session(
            s,
            config=config("platform-1"),
            rounds_total=3,
            owner_id=api.user_id("ann@example.org"),
            session_id="platform-1",
        )
        sessions_repo.set_session_status(s, row.id, SessionStatus.COMPLETED)
    platform = await upload(api, ann, "platform-1", data)
    assert platform.status_code == 409 and "run by the platform" in one_line_detail(platform.json())


async def test_an_oversized_model_is_a_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, max_upload_bytes=4096)
    db, artifacts = open_stores(settings)
    services = Services(settings=settings, db=db, artifacts=artifacts, launcher=RecordingLauncher(db))
    try:
        transport = httpx.ASGITransport(app=create_app(settings, services))
        async with httpx.AsyncClient(transport=transport, base_url="http://fedhive.test") as client:
            api = Api(client, services, services.launcher)  # type: ignore[arg-type]
            ann = await api.user("ann@example.org")
            sid = await completed(api, ann, "cli-model-5")
            big = codec.encode(Params({"w": np.zeros(4096, np.float32)}))
            answer = await upload(api, ann, sid, big)
            assert answer.status_code == 413, answer.text
            one_line_detail(answer.json())
    finally:
        services.close()


async def test_a_reporter_that_cannot_upload_says_so_once_and_the_session_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sessions/reported/model":
            return httpx.Response(413, json={"detail": "request body is over the limit of 4096 bytes"})
        return httpx.Response(200 if request.url.path.endswith("/events") else 201, json={"id": "cli-model-6"})

    reporter = PlatformReporter(
        "http://fedhive.test", Login(token="t"), config=config("cli-model-6"), transport=httpx.MockTransport(refuse),
        interval_s=60,
    )  # fmt: skip
    bus = EventBus()
    reporter.attach(bus)
    reporter.start()
    await bus.dispatch(ev.SessionCompleted("cli-model-6", 3, MODEL, {}))
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fedhive.report"):
        await reporter.aclose(wait_s=20)
    assert time.monotonic() - began < 20
    lines = [r.getMessage() for r in caplog.records if "model" in r.getMessage()]
    assert lines == [
        "the model of session cli-model-6 was not uploaded to http://fedhive.test: HTTP 413: "
        "request body is over the limit of 4096 bytes"
    ], lines


async def test_a_server_that_never_answers_the_upload_costs_the_session_its_bounded_close_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()

    async def hang_on_the_model(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sessions/reported/model":
            await never.wait()
        return httpx.Response(200 if request.url.path.endswith("/events") else 201, json={"id": "cli-model-7"})

    reporter = PlatformReporter(
        "http://fedhive.test", Login(token="t"), config=config("cli-model-7"),
        transport=httpx.MockTransport(hang_on_the_model), interval_s=60,
    )  # fmt: skip
    bus = EventBus()
    reporter.attach(bus)
    reporter.start()
    await bus.dispatch(ev.SessionCompleted("cli-model-7", 3, MODEL, {}))
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fedhive.report"):
        await reporter.aclose(wait_s=2)
    assert time.monotonic() - began < 15  # the close's bound (2 s), with room for a loaded machine
    lines = [r.getMessage() for r in caplog.records if "model" in r.getMessage()]
    assert lines == ["the model of session cli-model-7 was not uploaded to http://fedhive.test: no time left"], lines
