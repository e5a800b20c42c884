"""A coordinator killed with SIGKILL mid-session and started again resumes from its last
checkpoint: the session ends with the configured rounds, none skipped or run twice. On the
embedded defaults, and over RabbitMQ + PostgreSQL + S3 (where the killed process leaves queued
messages behind, its peers must register with the new process, and checkpoints come from S3)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_process import Server, poll

from fedhive.core import codec

pytestmark = pytest.mark.slow
ROUNDS = 8


def csv_bytes() -> bytes:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 3000)
    x = rng.normal(size=(3000, 24)) + np.eye(4, 24)[y] * 2.0
    rows = [",".join(f"{v:.3f}" for v in xi) + f",{yi}" for xi, yi in zip(x, y, strict=True)]
    return ("\n".join([",".join(f"f{i}" for i in range(24)) + ",y", *rows]) + "\n").encode()


def test_kill_and_restart_resumes_from_the_last_checkpoint(tmp_path: Path, deployment: dict[str, str]) -> None:
    server = Server(tmp_path, deployment)
    try:
        http = httpx.Client(base_url=server.url, timeout=30)
        http.post("/auth/signup", json={"email": "ada@example.org", "password": "correct horse"})
        token = http.post("/auth/signin", json={"email": "ada@example.org", "password": "correct horse"}).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}
        poll(lambda: sum(p["status"] == "ONLINE" for p in http.get("/peers", headers=auth).json()) == 3, 60)
        r = http.post(
            "/sessions/start",
            headers=auth,
            data={
                "label": "y",
                "model": "simple-dnn:256,256",
                "rounds": str(ROUNDS),
                "epochs": "3",
                "batch_size": "16",
                "lr": "0.02",
                "min_peers": "3",
            },
            files={"dataset": ("d.csv", io.BytesIO(csv_bytes()), "text/csv")},
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        seen = poll(lambda: (n := http.get(f"/sessions/{sid}", headers=auth).json()["rounds_done"]) >= 2 and n, 120)
        assert seen < ROUNDS, "the session finished before it could be interrupted; make rounds slower"
        server.kill()

        server = Server(tmp_path, deployment)
        http = httpx.Client(base_url=server.url, timeout=30)
        status = poll(
            lambda: (
                (s := http.get(f"/sessions/{sid}/training-status", headers=auth).json())["status"]
                in ("COMPLETED", "FAILED")
                and s
            ),
            180,
            what="the resumed session's end",
        )
        assert status["status"] == "COMPLETED", f"{status}\n{server.tail()}"
        done = http.get(f"/sessions/{sid}", headers=auth).json()
        assert done["rounds_done"] == ROUNDS
        rounds = http.get(f"/sessions/{sid}/rounds", headers=auth).json()
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        resumed = re.search(rf"resuming session {sid} at round (\d+)", "".join(server.lines))
        assert resumed is not None, server.tail()
        assert int(resumed.group(1)) >= seen + 1  # continued after the last durable round, not from 1
        model = done["final_model"]
        assert model is not None
        r = http.get(f"/models/{model['name']}/versions/{model['version']}/download", headers=auth)
        assert r.status_code == 200
        assert codec.decode(r.content, max_bytes=1 << 26)["out.weight"].shape == (4, 256)
        # the peers are released for the next session
        poll(lambda: sorted(p["status"] for p in http.get("/peers", headers=auth).json()) == ["ONLINE"] * 3, 30)
    finally:
        server.stop()
