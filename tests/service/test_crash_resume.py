"""A coordinator killed with SIGKILL mid-session and started again resumes from its last
checkpoint: the session ends with the configured rounds, none skipped or run twice."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROUNDS = 8


class Server:
    """``fedhive serve`` as a user starts it; the API's URL is read from its ready line."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedhive.cli.main",
                "-v",
                "serve",
                "--port",
                "0",
                "--home",
                str(home),
                "--local-clients",
                "3",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FEDHIVE_BCRYPT_ROUNDS": "4"},
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60):
            self.kill()
            pytest.fail("fedhive serve did not start within 60 s:\n" + "".join(self.lines[-20:]))
        self.url = re.search(r"serving on (\S+)", "".join(self.lines)).group(1)  # type: ignore[union-attr]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "serving on" in line:
                self._ready.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def poll(fn, deadline_s: float, every: float = 0.2):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = fn()
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"condition not met within {deadline_s} s")


def csv_bytes() -> bytes:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 3000)
    x = rng.normal(size=(3000, 24)) + np.eye(4, 24)[y] * 2.0
    rows = [",".join(f"{v:.3f}" for v in xi) + f",{yi}" for xi, yi in zip(x, y, strict=True)]
    return ("\n".join([",".join(f"f{i}" for i in range(24)) + ",y", *rows]) + "\n").encode()


def test_kill_and_restart_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    server = Server(tmp_path)
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

        server = Server(tmp_path)
        http = httpx.Client(base_url=server.url, timeout=30)
        done = poll(
            lambda: (s := http.get(f"/sessions/{sid}", headers=auth).json())["status"] in ("COMPLETED", "FAILED") and s,
            180,
        )
        assert done["status"] == "COMPLETED", done
        assert done["rounds_done"] == ROUNDS
        rounds = http.get(f"/sessions/{sid}/rounds", headers=auth).json()
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        resumed = re.search(rf"resuming session {sid} at round (\d+)", "".join(server.lines))
        assert resumed is not None, "".join(server.lines[-30:])
        assert int(resumed.group(1)) >= seen + 1  # continued after the last durable round, not from 1
        assert done["final_model"] is not None
    finally:
        server.stop()
