"""Hosts on one machine: a network namespace each, joined to a bridge in a "switch" namespace.

    fh<tag>-sw:     br0 ── v-<host> ══veth══ eth0 (10.203.15.N/24) in fh<tag>-<host>

Nothing is created in the machine's own namespace: the bridge and every switch-side veth live in
the switch namespace, so deleting the namespaces removes every link, and no address of the lab is
reachable from (or routes to) anything outside it. Names carry a random tag, unique per test run.
Needs root and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.203.15"  # private, and only inside the lab's namespaces
RTO_MAX = "/proc/sys/net/ipv4/tcp_rto_max_ms"


class LabError(Exception):
    """An ``ip`` or ``tc`` command failed: its command line and what it printed."""


def ip(*args: str, timeout: float = 30) -> str:
    return _run(["ip", *args], timeout)


def _run(argv: list[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str  # on eth0
    switch_port: str  # its veth's end on the bridge, in the switch namespace

    def run(self, argv: list[str]) -> list[str]:
        """``argv`` as a command line that runs it inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Lab:
    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"fh{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    def __enter__(self) -> Lab:
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        host = Host(name, f"fh{self.tag}-{name}", f"{SUBNET}.{len(self.hosts) + 1}", f"v-{name}"[:15])
        self._add_namespace(host.namespace)
        veth = ["type", "veth", "peer", "name", "eth0", "netns", host.namespace]
        ip("-n", self.switch, "link", "add", host.switch_port, *veth)
        ip("-n", self.switch, "link", "set", host.switch_port, "master", "br0", "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")  # a broker node talks to its own epmd over it
        if Path(RTO_MAX).exists():  # Linux 6.15+; per namespace
            # Retransmit at least once a second (the default backs off to 2 minutes): a link that
            # comes back is used again within a second, not after a backoff of a random length.
            _run(host.run(["sh", "-c", f"echo 1000 > {RTO_MAX}"]), 30)
        self.hosts[name] = host
        return host

    # -- the wire -------------------------------------------------------------------------------
    def impair(self, host: Host, rtt_ms: int, loss_percent: float) -> bool:
        """``rtt_ms`` more round trip (half of it each way) and ``loss_percent`` random loss each way on
        ``host``'s link (``tc netem`` at each end); False, changing nothing, when the kernel has no
        netem (CONFIG_NET_SCH_NETEM): see impaired_relay.py for what the test does then."""
        for namespace, device in ((host.namespace, "eth0"), (self.switch, host.switch_port)):
            netem = ["root", "netem", "delay", f"{rtt_ms / 2:g}ms", "loss", f"{loss_percent:g}%"]
            try:
                _run(["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, *netem], 30)
            except LabError as exc:
                if "qdisc kind is unknown" in str(exc):
                    return False
                raise
        return True

    def cut(self, host: Host) -> None:
        """Unplug ``host``'s cable at the switch: its frames go nowhere, its sockets stay open."""
        ip("-n", self.switch, "link", "set", host.switch_port, "down")

    def restore(self, host: Host) -> None:
        ip("-n", self.switch, "link", "set", host.switch_port, "up")

    # -- teardown -------------------------------------------------------------------------------
    def _add_namespace(self, namespace: str) -> None:
        ip("netns", "add", namespace)
        self._namespaces.append(namespace)

    def kill_everything_inside(self) -> None:
        """SIGKILL every process still in the lab's namespaces (daemons such as epmd included):
        they are this test's, as the namespaces are."""
        for namespace in self._namespaces:
            try:
                pids = ip("netns", "pids", namespace).split()
            except LabError:
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        """Kill what runs inside, then delete the namespaces (and with them every link). Every step
        is tried even when one fails, so that a failed test leaves nothing behind."""
        self.kill_everything_inside()
        errors = []
        for namespace in reversed(self._namespaces):
            try:
                ip("netns", "del", namespace)
            except LabError as exc:
                errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise LabError("; ".join(errors))
