"""A RabbitMQ virtual host of a test's own on the shared broker, with an administrator of its own.

Created with ``rabbitmqctl`` (users, a vhost, permissions on it) and deleted afterwards, users
included: the guest user, the default vhost and the broker itself are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import pytest
from typer.testing import CliRunner

from fedhive.cli import clients_cmd

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
