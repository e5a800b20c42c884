"""The P2P platform flow end to end in one process: the real API server (uvicorn), hub, session
manager and three local peers on the in-memory transport, driven over HTTP as a user would."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fedhive.core import codec
from fedhive.service.platform import ServeOptions, serve
from fedhive.service.settings import Settings

pytestmark = pytest.mark.slow
_READY_S = 180.0


def csv_bytes(rows: int = 300, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    x = rng.normal(size=(rows, 4)) + np.eye(3, 4)[y] * 3.0
    lines = ["a,b,c,d,kind"] + [",".join(f"{v:.4f}" for v in xi) + f",k{yi}" for xi, yi in zip(x, y, strict=True)]
    return ("\n".join(lines) + "\n").encode()


@contextlib.asynccontextmanager
async def platform(tmp_path: Path, local_clients: int = 3, **urls: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The platform in this process; ``urls``: more ``Settings`` fields (URLs, ``apps``)."""
    settings = Settings(home=tmp_path, bcrypt_rounds=4, heartbeat_timeout_s=10, **urls)
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(settings, ServeOptions(port=0, local_clients=local_clients), on_ready=ready.set_result)
    )
    try:
        # Ready, or the reason it never will be: a loaded 2-core machine has taken over 30 s to
        # start it (imports, migrations, the hub), so the wait is long, and ends early if serve dies.
        await asyncio.wait({ready, task}, timeout=_READY_S, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            if task.done():
                task.result()  # serve's own error
                raise AssertionError("serve returned before it was ready")
            raise TimeoutError(f"the platform was not ready within {_READY_S:.0f} s")
        base = ready.result()
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            yield http
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_for(check, *, deadline_s: float = 60.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(every)
    except TimeoutError:  # say what was waited for, not a bare TimeoutError
        pytest.fail(f"{getattr(check, '__qualname__', check)!s}: not true within {deadline_s} s")


async def sign_up_and_in(http: httpx.AsyncClient, email: str = "ada@example.org") -> dict[str, str]:
    r = await http.post("/auth/signup", json={"email": email, "password": "correct horse"})
    assert r.status_code == 201, r.text
    r = await http.post("/auth/signin", json={"email": email, "password": "correct horse"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_signup_upload_train_and_download(tmp_path: Path, deployment: dict[str, str]) -> None:
    async with platform(tmp_path, **deployment) as http:
        auth = await sign_up_and_in(http)

        async def three_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 3

        await wait_for(three_online)
        r = await http.post(
            "/sessions/start",
            headers=auth,
            data={
                "label": "kind",
                "model": "simple-dnn:16",
                "rounds": "3",
                "epochs": "2",
                "batch_size": "16",
                "lr": "0.05",
                "min_peers": "3",
            },
            files={"dataset": ("data.csv", io.BytesIO(csv_bytes()), "text/csv")},
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        status = await wait_for(finished, deadline_s=120)
        assert status["status"] == "COMPLETED", status
        assert status["round"] == 3
        rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert rounds[-1]["metrics"]["accuracy"] > 0.8
        session = (await http.get(f"/sessions/{sid}", headers=auth)).json()
        model = session["final_model"]
        assert model is not None
        r = await http.get(f"/models/{model['name']}/versions/{model['version']}/download", headers=auth)
        assert r.status_code == 200
        params = codec.decode(r.content, max_bytes=1 << 24)
        assert params["out.weight"].shape == (3, 16)

        # the peers are released: all three ONLINE again, so a second session can start
        peers = (await http.get("/peers", headers=auth)).json()
        assert sorted(p["status"] for p in peers) == ["ONLINE"] * 3


async def test_not_enough_peers_is_400_and_leaves_nothing(tmp_path: Path) -> None:
    async with platform(tmp_path, local_clients=1) as http:
        auth = await sign_up_and_in(http)
        r = await http.post("/sessions/start", headers=auth, data={"model": "logreg", "min_peers": "3"})
        assert r.status_code == 400 and "not enough peers" in r.json()["detail"]
        assert (await http.get("/sessions", headers=auth)).json() == []
