"""The broker side of bench/amqp_scale.py: a private RabbitMQ node, its probes, host users.

A node of the benchmark's own (``--private-node``, the default), or the user's broker through
``rabbitmqctl`` (``--broker URL --broker-node NODE``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any


# -- a private broker node ----------------------------------------------------------------------------
class PrivateBroker:
    """A RabbitMQ node of this benchmark's own: its files in ``root``, its port ``port``."""

    def __init__(self, root: Path, port: int) -> None:
        found = shutil.which("rabbitmq-server")
        folder = Path(found).resolve().parent if found else None
        if folder is None or not (folder / "rabbitmqctl").exists():
            raise SystemExit("rabbitmq-server is not installed: give --broker URL")
        self.scripts, self.root, self.port = folder, root, port
        self.node = f"fedhive-scale-{port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        r = self.root
        return {**os.environ, "HOME": str(r / "home"), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_CONF_ENV_FILE": str(r / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(r / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(r / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(r / "enabled_plugins"), "RABBITMQ_MNESIA_BASE": str(r / "mnesia"),
                "RABBITMQ_LOG_BASE": str(r / "log"), "RABBITMQ_LOGS": str(r / "log" / "node.log"),
                "RABBITMQ_PID_FILE": str(r / "node.pid"), "RABBITMQ_DIST_PORT": str(self.port + 20000),
                # A node that cannot start writes its crash dump here, not into the working directory.
                "ERL_CRASH_DUMP": str(r / "erl_crash.dump")}  # fmt: skip

    def start(self) -> None:
        for folder in ("home", "mnesia", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\n")
        self.proc = subprocess.Popen([str(self.scripts / "rabbitmq-server")], env=self.env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            self.ctl("wait", str(self.root / "node.pid"), "--timeout", "120")
        except subprocess.CalledProcessError:
            self.stop()
            raise SystemExit(
                f"the private RabbitMQ node did not start on ports {self.port}/{self.port + 20000} "
                f"(in use by another run? give --private-port): see {self.root / 'log'}"
            ) from None

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self.env(),
                              input=stdin, capture_output=True, text=True, timeout=180, check=True)  # fmt: skip
        return done.stdout

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.ctl("stop")
            self.proc.wait(60)
        except (subprocess.SubprocessError, OSError):
            self.proc.kill()


class BrokerProbe:
    """Memory and queue counts of the broker, through ``rabbitmqctl``."""

    def __init__(self, ctl: Any) -> None:
        self._ctl = ctl
        self.ctl = ctl

    def memory_mb(self) -> float | None:
        try:
            status = json.loads(self._ctl("status", "--formatter", "json"))
            return round(float(status["memory"]["total"]["rss"]) / 1e6, 1)
        except (subprocess.SubprocessError, OSError, ValueError, KeyError, TypeError):
            return None

    def queues(self, namespace: str) -> tuple[int, float] | None:
        """(queues of the namespace, their memory in MB)."""
        try:
            rows = json.loads(self._ctl("list_queues", "name", "memory", "--formatter", "json"))
        except (subprocess.SubprocessError, OSError, ValueError):
            return None
        ours = [r for r in rows if str(r.get("name", "")).startswith(f"{namespace}.")]
        return len(ours), round(sum(int(r.get("memory", 0)) for r in ours) / 1e6, 1)


def shared_ctl(node: str | None) -> Any:
    def ctl(*args: str, stdin: str | None = None) -> str:
        extra = ["-n", node] if node else []
        done = subprocess.run(["rabbitmqctl", *extra, *args], input=stdin, capture_output=True, text=True,
                              timeout=180, check=True)  # fmt: skip
        return done.stdout

    return ctl


def make_host_user(probe: BrokerProbe, url: str, host: str, namespace: str) -> str:
    """The host's broker user (``BrokerGrant.host``: its queue, its clients' keys, nothing to
    configure), made with rabbitmqctl; the URL it logs in with."""
    from urllib.parse import quote, urlsplit

    from fedhive.transports.broker_users import BrokerGrant, new_password

    vhost = urlsplit(url).path.lstrip("/") or "/"
    grant = BrokerGrant.host(host, namespace=namespace, vhost=vhost)
    password = new_password()
    add_user, *rights = grant.commands()
    probe.ctl(*add_user, stdin=password)
    for argv in rights:
        probe.ctl(*argv)
    where = urlsplit(url)
    login = f"{quote(host, safe='')}:{quote(password, safe='')}"
    return where._replace(netloc=f"{login}@{where.hostname}:{where.port}").geturl()
