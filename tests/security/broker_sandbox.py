"""A RabbitMQ virtual host of a test's own on the shared broker, with an administrator of its own.

Created with ``rabbitmqctl`` (users, a vhost, permissions on it) and deleted afterwards, users
included: the guest user, the default vhost and the broker itself are never touched.

Also what the broker isolation tests share: clients and sites provisioned with broker users of
their own, a site agent started under its site's user, and ``attempt``/``refused``, which try an
attack on a fresh channel of one login and report what the broker answered.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import quote
from uuid import uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.exceptions import PublishError
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from typer.testing import CliRunner

from fedhive.cli import admin_cmd, clients_cmd
from processes import Proc

REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def need_rabbitmqctl() -> None:
    if shutil.which("rabbitmqctl") is None:
        if REQUIRE_SERVICES:
            pytest.fail("rabbitmqctl is not on this machine and FEDHIVE_REQUIRE_SERVICES=1")
        pytest.skip("rabbitmqctl is not on this machine (it creates the test's users and vhost)")


class BrokerSandbox:
    def __init__(self, host: str = "127.0.0.1", port: int = 5672) -> None:
        tag = uuid4().hex[:10]
        self.host, self.port = host, port
        self.vhost = f"fedhive-test-{tag}"
        self.namespace = f"iso-{tag}"
        self.admin = f"fedhive-test-admin-{tag}"
        self.admin_password = secrets.token_urlsafe(16)
        self.users: set[str] = set()

    def create(self) -> None:
        rabbitmqctl("add_vhost", self.vhost)
        self.add_user(self.admin, self.admin_password)
        rabbitmqctl("set_permissions", "-p", self.vhost, self.admin, ".*", ".*", ".*")

    def add_user(self, user: str, password: str) -> None:
        self.users.add(user)
        rabbitmqctl("add_user", user, stdin=password)

    def url(self, user: str, password: str) -> str:
        login = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{login}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"

    @property
    def admin_url(self) -> str:
        return self.url(self.admin, self.admin_password)

    def destroy(self) -> None:
        errors = []
        for args in [("delete_vhost", self.vhost), *(("delete_user", u) for u in sorted(self.users))]:
            try:
                rabbitmqctl(*args)
            except RuntimeError as exc:
                if "not exist" not in str(exc) and "no_such" not in str(exc):
                    errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))


def provision_clients(
    sandbox: BrokerSandbox, store: Path, count: int, *, role: str = "client", name: str = "site"
) -> list[dict[str, str]]:
    """``count`` clients (or, with ``role="combiner"``, combiners) made by ``fedhive clients add
    --broker-user rabbitmqctl`` (their ids, secrets and broker logins); their broker users are
    deleted with the sandbox."""
    out = store.parent / f"{name}.jsonl"
    args = ["add", name, "--count", str(count), "--broker-user", "rabbitmqctl", "--role", role]
    args += ["--namespace", sandbox.namespace, "--vhost", sandbox.vhost, "--store", str(store), "--out-file", str(out)]
    result = CliRunner().invoke(clients_cmd.app, args)
    sites = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    sandbox.users.update(s["broker_user"] for s in sites)
    assert result.exit_code == 0, result.output
    return sites


def create_sites(sandbox: BrokerSandbox, home: Path, count: int) -> list[dict[str, str]]:
    """``fedhive admin site create ward --count N --broker-user rabbitmqctl``: ids, secrets, logins
    (sorted by id); their broker users are deleted with the sandbox."""
    out = home.parent / "sites.jsonl"
    args = ["site", "create", "ward", "--count", str(count), "--out-file", str(out), "--home", str(home)]
    args += ["--broker-user", "rabbitmqctl", "--namespace", sandbox.namespace, "--vhost", sandbox.vhost]
    result = CliRunner().invoke(admin_cmd.app, args)
    sites = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    sandbox.users.update(s["broker_user"] for s in sites)
    assert result.exit_code == 0, result.output
    assert [s["broker_user"] for s in sites] == [s["client_id"] for s in sites]
    return sorted(sites, key=lambda s: s["client_id"])


def site_url(sandbox: BrokerSandbox, site: dict[str, str]) -> str:
    return sandbox.url(site["broker_user"], site["broker_password"])


def start_site_agent(
    sandbox: BrokerSandbox, site: dict[str, str], *, partition: int, partitions: int, app: Path, state_dir: Path
) -> Proc:
    """``fedhive agent`` for one site made by ``create_sites``, logged in as the site's own broker
    user: that login and the site's secret are in its environment, never on its command line."""
    args = ["agent", "--id", site["client_id"], "--namespace", sandbox.namespace, "--app", str(app)]
    args += ["--node", f"partition_id={partition}", "--node", f"num_partitions={partitions}"]
    args += ["--state-dir", str(state_dir / site["client_id"]), "--heartbeat-interval", "0.5"]
    env = {"FEDHIVE_BROKER": site_url(sandbox, site), "FEDHIVE_CLIENT_SECRET": site["secret"]}
    return Proc(site["client_id"], [*FEDHIVE, *args], env=env)


# -- attacks on the broker, each on a fresh channel of one login -------------------------------------

Attack = Callable[[AbstractChannel], Awaitable[object]]


class BrokerLogin(Protocol):
    @property
    def url(self) -> str: ...


async def attempt(login: BrokerLogin | str, attack: Attack) -> BaseException | None:
    """Run ``attack`` on a fresh channel of a broker login (its URL, or anything with a ``url``);
    what the broker answered (None: it was allowed; a ``PublishError``: a mandatory message routed
    to no queue)."""
    connection = await aio_pika.connect(login if isinstance(login, str) else login.url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await attack(channel)
        except (ChannelAccessRefused, ChannelPreconditionFailed, PublishError) as exc:
            return exc
    return None


async def refused(login: BrokerLogin | str, attack: Attack, what: str = "") -> None:
    """The broker refused ``attack`` (``what`` names it in the failure)."""
    answer = await attempt(login, attack)
    named = f"{what}: " if what else ""
    assert isinstance(answer, ChannelAccessRefused), f"{named}the broker allowed it (answer: {answer!r})"


async def ignore(message: AbstractIncomingMessage) -> None:
    del message


async def consume(channel: AbstractChannel, queue: str) -> None:
    """Consume an existing ``queue`` (declared passively: the attacker makes none)."""
    q = await channel.declare_queue(queue, passive=True)
    await q.consume(ignore)


async def bind_own_queue(channel: AbstractChannel, queue: str, exchange: str, key: str) -> None:
    own = await channel.declare_queue(queue, passive=True)
    await own.bind(exchange, routing_key=key)
