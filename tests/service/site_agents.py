"""What the end-to-end tests of ``fedhive serve`` with site agents run, as a user runs it: sites
made with ``fedhive admin site create``, one ``fedhive agent`` process per site (SIGKILLed and
started again as a crash and a restart would), an MLflow server started in the background while
the rest is set up (it takes the longest to start), and the REST calls that start a session and
wait for its end. Every wait is bounded and ends on a printed line or a state, never a sleep."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from processes import Proc
from service.test_platform_flow import wait_for

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED")
REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"


def need_module(name: str, install: str) -> Any:
    """The module; without it, skip locally and fail in CI (FEDHIVE_REQUIRE_SERVICES=1)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        msg = f"{name} is not installed ({install})"
        if REQUIRE_SERVICES:
            pytest.fail(f"{msg} and FEDHIVE_REQUIRE_SERVICES=1: real-service tests are required here")
        pytest.skip(msg)


@dataclass(frozen=True)
class Site:
    site_id: str
    secret: str


def create_sites(home: Path, db_url: str, count: int, out_file: Path) -> Proc:
    """``fedhive admin site create ward --count N`` (started, not waited for: see ``read_sites``)."""
    return Proc(
        "admin",
        [*FEDHIVE, "admin", "site", "create", "ward", "--count", str(count), "--out-file", str(out_file),
         "--home", str(home), "--db", db_url],
    )  # fmt: skip


def read_sites(admin: Proc, out_file: Path) -> list[Site]:
    assert admin.finish(90) == 0, admin.tail()
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    return sorted((Site(line["client_id"], line["secret"]) for line in lines), key=lambda s: s.site_id)


def virtual_agents(count: int, credentials: Path, *, broker: str, namespace: str, app: Path, state_dir: Path) -> Proc:
    """``fedhive agent --virtual N``: one process for the ``count`` sites of ``credentials`` (the file
    ``fedhive admin site create --out-file`` wrote); it prints ``N agents connected``."""
    return Proc(
        "agents",
        [*FEDHIVE, "agent", "--broker", broker, "--namespace", namespace, "--virtual", str(count),
         "--credentials", str(credentials), "--app", str(app), "--state-dir", str(state_dir),
         "--heartbeat-interval", "0.5"],
    )  # fmt: skip


class SiteAgent:
    """``fedhive agent`` for one site, in a process of its own (the secret in its environment)."""

    def __init__(
        self, site: Site, index: int, count: int, *, broker: str, namespace: str, app: Path, state_dir: Path
    ) -> None:
        self.site = site
        self.args = [
            *FEDHIVE, "agent", "--broker", broker, "--namespace", namespace, "--id", site.site_id,
            "--app", str(app), "--state-dir", str(state_dir / site.site_id), "--heartbeat-interval", "0.5",
            # the app's share of the data: which part this site holds, of how many
            "--node", f"partition_id={index}", "--node", f"num_partitions={count}",
        ]  # fmt: skip
        self.proc = self.start()

    def start(self) -> Proc:
        self.proc = Proc(f"agent {self.site.site_id}", self.args, env={"FEDHIVE_CLIENT_SECRET": self.site.secret})
        return self.proc

    def connected(self, timeout: float = 90) -> None:
        self.proc.wait_for(f"agent {self.site.site_id} connected", timeout=timeout)

    def sigkill(self) -> None:
        """Gone without a word, as a crashed machine: no stop message, no state saved."""
        self.proc.popen.send_signal(signal.SIGKILL)
        self.proc.finish(30)

    def stop(self) -> None:
        self.proc.kill()


class Rest:
    """The REST calls of a session's owner."""

    def __init__(self, http: httpx.AsyncClient, auth: dict[str, str]) -> None:
        self.http, self.auth = http, auth

    async def online(self) -> list[str]:
        peers = (await self.http.get("/peers", headers=self.auth)).json()
        return sorted(p["id"] for p in peers if p["status"] == "ONLINE")

    async def wait_online(self, site_ids: list[str], deadline_s: float = 60) -> None:
        async def all_online() -> bool:
            return await self.online() == sorted(site_ids)

        await wait_for(all_online, deadline_s=deadline_s)

    async def wait_online_roles(self, expected: set[tuple[str, str]], deadline_s: float = 60) -> None:
        """Until the ONLINE nodes of ``GET /sites`` are exactly ``expected``, as (id, role) pairs:
        sites and combiners alike."""

        async def exactly_these() -> bool:
            nodes = (await self.http.get("/sites", headers=self.auth)).json()
            return {(n["id"], n["role"]) for n in nodes if n["status"] == "ONLINE"} == expected

        await wait_for(exactly_these, deadline_s=deadline_s)

    async def start(self, topology: str, *, rounds: int, min_peers: int, **more: str) -> str:
        form = {"rounds": str(rounds), "min_peers": str(min_peers), "topology": topology, "epochs": "2", "lr": "0.1",
                "name": f"{topology} over three agents", **more}  # fmt: skip
        r = await self.http.post("/sessions/start", headers=self.auth, data=form)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def ended(self, sid: str, deadline_s: float, explain: Callable[[], object] = dict) -> dict[str, Any]:
        """The session once it has ended; ``explain`` says what was going on if it does not end."""

        async def finished() -> dict[str, Any] | None:
            s = (await self.http.get(f"/sessions/{sid}", headers=self.auth)).json()
            return s if s["status"] in ENDED else None

        try:
            session: dict[str, Any] = await wait_for(finished, deadline_s=deadline_s, every=0.25)
        except TimeoutError:
            pytest.fail(f"session {sid} did not end within {deadline_s} s\n{explain()}")
        return session

    async def rounds(self, sid: str) -> list[dict[str, Any]]:
        return list((await self.http.get(f"/sessions/{sid}/rounds", headers=self.auth)).json())

    async def page(self, sid: str) -> dict[str, Any]:
        """The session page's data (each combiner, and the sites behind it)."""
        return dict((await self.http.get(f"/ui/data/sessions/{sid}", headers=self.auth)).json())


async def sign_in(http: httpx.AsyncClient, email: str = "ada@example.org") -> dict[str, str]:
    """The auth header of the account ``sign_up_and_in`` made, e.g. on a server started again."""
    r = await http.post("/auth/signin", json={"email": email, "password": "correct horse"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
