"""A real ``mlflow server`` (SQLite backend, local artifact store) that the tests start, shared by
the tracking tests and the API tests (``from tracking.conftest import mlflow_server``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_executable() -> str:
    """The ``mlflow`` script next to this Python, else on PATH; skip (fail in CI) without it."""
    local = Path(sys.executable).with_name("mlflow")
    found = str(local) if local.exists() else shutil.which("mlflow")
    if found is None:
        if REQUIRE_SERVICES:
            pytest.fail("mlflow is not installed and FEDHIVE_REQUIRE_SERVICES=1")
        pytest.skip("mlflow is not installed: pip install 'fedhive[mlflow]'")
    return found


class MlflowProcess:
    """``mlflow server`` (SQLite backend, local artifacts) started now, waited for later: its
    start (database tables, then its web workers) is the slowest of the services, so the tests
    start it first and make sites and apps meanwhile."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
             "--port", self.url.rsplit(":", 1)[1], "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT,
            # no job runner (a process of its own, for MLflow's GenAI jobs): nothing here uses it
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip

    def ready(self, deadline_s: float = 180) -> str:
        """The server's URL once it answers /health (a loaded 2-core machine takes over a minute)."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)  # polling a port that opens when it opens: there is no line to wait on

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MlflowProcess(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server.ready()
    finally:
        server.stop()
