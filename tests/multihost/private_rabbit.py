"""A RabbitMQ node of the test's own, in one of the lab's namespaces (never the machine's shared one).

Its node name, cookie, config, database and logs all live in a temporary folder; the Erlang port
mapper (epmd) it starts runs in its namespace, apart from the machine's. It listens only on TLS
(``amqps://``, port 5671) when given a certificate, else on plain AMQP (5672); its one user has a
random password, kept in a 0600 config file and handed to fedhive through the environment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from netns_lab import Host
from throwaway_ca import ServerTls

from processes import Proc

USER = "fedhive"


def rabbitmq_scripts() -> Path | None:
    """The folder of the real ``rabbitmq-server`` and ``rabbitmqctl`` scripts, or None. (Debian's
    ``/usr/sbin`` ones are a wrapper that switches to the rabbitmq user, who cannot read a test's
    temporary folder, and sends the node's output to /var/log.)"""
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    folder = Path(found).resolve().parent
    return folder if (folder / "rabbitmqctl").exists() else None


class PrivateRabbit:
    def __init__(self, host: Host, root: Path, scripts: Path, tls: ServerTls | None) -> None:
        self.host = host
        self.root = root
        self.scripts = scripts
        self.node = f"fedhive-{host.namespace}@localhost"
        self.password = secrets.token_urlsafe(24)
        self.port = 5671 if tls else 5672
        self.url = f"{'amqps' if tls else 'amqp'}://{USER}:{self.password}@{host.address}:{self.port}/"
        self._tls = tls
        self.proc: Proc | None = None

    def start(self, timeout: float) -> None:
        """Start the node and wait until it accepts connections (fails with its output otherwise)."""
        self._write_files()
        self.proc = Proc("broker", self.host.run([str(self.scripts / "rabbitmq-server")]), env=self._env())
        try:
            # "wait" first waits for the node's pid file (``await_startup`` fails at once while the
            # Erlang VM is not up yet), then for the broker to start: bounded by its own timeout.
            self.ctl("wait", str(self.root / "node.pid"), "--timeout", str(int(timeout)), timeout=timeout + 30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            said = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
            pytest.fail(f"the private RabbitMQ node did not start within {timeout:g} s: {said}\n{self.proc.tail(40)}")

    def ctl(self, *args: str, timeout: float) -> None:
        subprocess.run(
            self.host.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args]),
            env={**os.environ, **self._env()}, check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the node gracefully if it answers; the lab's teardown kills whatever is left."""
        if self.proc is None or self.proc.popen.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=60)
            self.proc.popen.wait(30)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.proc.kill()

    def _write_files(self) -> None:
        for folder in ("home", "mnesia", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        # The CLI and the node authenticate to each other with this cookie, read from $HOME.
        _write_private(self.root / "home" / ".erlang.cookie", secrets.token_hex(20), mode=0o400)
        (self.root / "enabled_plugins").write_text("[].\n")  # no plugins: a faster start
        (self.root / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq one
        lines = [
            f"default_user = {USER}",
            f"default_pass = {self.password}",
            "loopback_users = none",  # the user connects from other hosts (namespaces)
        ]
        if self._tls is None:
            lines.append(f"listeners.tcp.default = {self.port}")
        else:
            lines += [
                "listeners.tcp = none",
                f"listeners.ssl.default = {self.port}",
                f"ssl_options.cacertfile = {self._tls.ca_file}",
                f"ssl_options.certfile = {self._tls.cert_file}",
                f"ssl_options.keyfile = {self._tls.key_file}",
                "ssl_options.verify = verify_none",  # clients prove who they are by fedhive's signatures
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        _write_private(self.root / "rabbitmq.conf", "\n".join(lines) + "\n", mode=0o600)

    def _env(self) -> dict[str, str]:
        return {
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),  # none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_LOGS": "-",  # to its stdout, which the test shows when the node fails
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
        }


def _write_private(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
