"""What idle site agents cost the server and the broker (issue 14's idle-cost figure).

    .venv/bin/python bench/idle_agents.py                 # 100 agents, 60 s window (~2 minutes)
    .venv/bin/python bench/idle_agents.py --agents 20 --window 15   # a smoke run

Sets up a throw-away server home with ``fedhive admin site create idle --count N``, starts
``fedhive serve --broker URL`` (no local peers, its own AMQP namespace) and, in another process,
``fedhive agent --virtual N`` with the builtin app on digits (each agent its own part, its own
AMQP connection and signing key, beating every 5 s as by default). Once every site is ONLINE it
measures, over the window:

- the server process's CPU (user + system time from /proc, as a share of one core): the hub
  verifying every heartbeat's signature and recording each site's last heartbeat in the database;
- the broker's memory: RabbitMQ's total (``rabbitmqctl status``) before the agents connected and
  at the end of the window, and the namespace's queues' own memory (``rabbitmqctl list_queues``).
  On a broker shared with other work the difference of totals is noise; for a clean figure give a
  node of the benchmark's own (``--broker amqp://guest:guest@127.0.0.1:5699/ --broker-node
  idle@localhost``, a node started with ``RABBITMQ_NODENAME=idle@localhost RABBITMQ_NODE_PORT=5699``).

Prints a table and, last, one JSON line (targets: server < 5 % of one core, broker < 50 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


BROKER_NODE: list[str] = []  # ["-n", NODE] with --broker-node


def rabbitmqctl(*args: str) -> object | None:
    if shutil.which("rabbitmqctl") is None:
        return None
    done = subprocess.run(
        ["rabbitmqctl", *BROKER_NODE, *args, "--formatter", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else None


def broker_total_bytes() -> int | None:
    status = rabbitmqctl("status")
    return int(status["memory"]["total"]["erlang"]) if isinstance(status, dict) else None


def namespace_queue_bytes(namespace: str) -> tuple[int, int] | None:
    queues = rabbitmqctl("list_queues", "name", "memory")
    if not isinstance(queues, list):
        return None
    mine = [q for q in queues if str(q["name"]).startswith(f"{namespace}.")]
    return len(mine), sum(int(q["memory"]) for q in mine)


class Server:
    def __init__(self, home: Path, broker: str, namespace: str) -> None:
        env = {**os.environ, "FEDHIVE_NAMESPACE": namespace}
        self.proc = subprocess.Popen(
            [*FEDHIVE, "serve", "--port", "0", "--home", str(home), "--local-clients", "0", "--broker", broker],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"serving on (\S+)", line)
            if found:
                self.url = found.group(1)
                self.ready.set()


def online_sites(home: Path) -> int:
    done = subprocess.run(
        [*FEDHIVE, "admin", "site", "list", "--json", "--home", str(home)], capture_output=True, text=True, check=True
    )
    return sum(json.loads(line)["status"] == "ONLINE" for line in done.stdout.splitlines() if line.strip())


def run(agents: int, window_s: float, broker: str) -> dict[str, object]:
    namespace = f"bench-idle-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="fedhive-idle-") as tmp:
        home, creds = Path(tmp) / "home", Path(tmp) / "sites.jsonl"
        subprocess.run(
            [*FEDHIVE, "admin", "site", "create", "idle", "--count", str(agents), "--out-file", str(creds),
             "--home", str(home)],
            check=True, capture_output=True,
        )  # fmt: skip
        broker_before = broker_total_bytes()
        server = Server(home, broker, namespace)
        agent_proc = None
        try:
            if not server.ready.wait(90):
                raise SystemExit("fedhive serve did not start within 90 s")
            agent_proc = subprocess.Popen(
                [*FEDHIVE, "agent", "--broker", broker, "--namespace", namespace, "--virtual", str(agents),
                 "--credentials", str(creds), "--dataset", "digits", "--state-dir", str(Path(tmp) / "state")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            started = time.monotonic()
            while (online := online_sites(home)) < agents:
                if time.monotonic() - started > 300 or agent_proc.poll() is not None:
                    said = agent_proc.stderr.read() if agent_proc.poll() is not None and agent_proc.stderr else ""
                    raise SystemExit(f"only {online} of {agents} agents came ONLINE\n{said[-2000:]}")
                time.sleep(1.0)
            joined_s = time.monotonic() - started
            cpu0, agents_cpu0, t0 = cpu_seconds(server.proc.pid), cpu_seconds(agent_proc.pid), time.monotonic()
            time.sleep(window_s)  # the measurement window itself: idle agents beating
            cpu1, agents_cpu1, t1 = cpu_seconds(server.proc.pid), cpu_seconds(agent_proc.pid), time.monotonic()
            still_online = online_sites(home)
            broker_after = broker_total_bytes()
            queues = namespace_queue_bytes(namespace)
        finally:
            for proc in (agent_proc, server.proc):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    server_share = (cpu1 - cpu0) / (t1 - t0)
    broker_delta = broker_after - broker_before if broker_after is not None and broker_before is not None else None
    return {
        "agents": agents,
        "window_s": round(t1 - t0, 1),
        "all_online_after_s": round(joined_s, 1),
        "still_online": still_online,
        "server_cpu_share_of_one_core": round(server_share, 4),
        "agents_process_cpu_share": round((agents_cpu1 - agents_cpu0) / (t1 - t0), 4),
        "broker_total_before_mb": None if broker_before is None else round(broker_before / 2**20, 1),
        "broker_total_delta_mb": None if broker_delta is None else round(broker_delta / 2**20, 1),
        "namespace_queues": None if queues is None else queues[0],
        "namespace_queue_mb": None if queues is None else round(queues[1] / 2**20, 2),
        "targets": {
            "server_under_5pct_of_a_core": server_share < 0.05,
            "broker_under_50mb": broker_delta is not None and broker_delta < 50 * 2**20,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured once all are ONLINE")
    parser.add_argument("--broker", default=os.environ.get("FEDHIVE_BROKER", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--broker-node", help="the RabbitMQ node behind --broker, for rabbitmqctl (default: its own)")
    args = parser.parse_args()
    if args.broker_node:
        BROKER_NODE.extend(["-n", args.broker_node])
    result = run(args.agents, args.window, args.broker)
    print(f"{'idle agents':<34}{result['agents']}")
    print(f"{'all ONLINE after':<34}{result['all_online_after_s']} s")
    print(f"{'server CPU (share of one core)':<34}{100 * float(result['server_cpu_share_of_one_core']):.2f} %")  # type: ignore[arg-type]
    print(f"{'agents process CPU':<34}{100 * float(result['agents_process_cpu_share']):.2f} %")  # type: ignore[arg-type]
    print(f"{'broker memory, total: before':<34}{result['broker_total_before_mb']} MB")
    print(f"{'broker memory, total: change':<34}{result['broker_total_delta_mb']} MB")
    print(f"{'namespace queues / their memory':<34}{result['namespace_queues']} / {result['namespace_queue_mb']} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
