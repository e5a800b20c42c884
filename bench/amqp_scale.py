"""Ten thousand networked clients on one coordinator (issue 18, item 2).

    .venv/bin/python bench/amqp_scale.py                          # 10,000 clients, 10 hosts (~5 minutes)
    .venv/bin/python bench/amqp_scale.py --clients 1000 --hosts 2 --per-round 100   # a smoke run

A coordinator process (this script, ``--coordinator-child``: ``run_coordinator`` as ``fedhive
coordinator`` runs it, with an observer that prints timestamps and its own CPU time) and ``--hosts``
processes of ``fedhive client --virtual N --host ID --slice I/K`` (one AMQP connection each; every
client its own signing key, registering with it). Each host is one broker identity (the default):
a broker user of its own (``BrokerGrant.host``) and one queue, where the coordinator routes what is
for any of its clients, whose ids name it (``fedhive clients add --hosted-by``); with
``--shared-login`` the hosts log in as the coordinator does and every client has a queue of its
own (the layout before host users). The app is
bench/workload_app.py (a 10,010-parameter logistic regression, each client's data derived from its
index: any population size), ``--per-round`` clients selected per round.

Reported: the time from starting the hosts until the coordinator counts every client ONLINE
(target < 60 s); each round's duration and the coordinator's CPU time during it; the steady round
(median of rounds 2..R) and its overhead per selected client against the same session in
``fedhive simulate`` (same app, seed, population and fraction: the same clients selected; target:
networked round < 2x the simulated one); the broker's memory and the namespace's queue count.

The broker: a private RabbitMQ node started here (``--private-node``, the default when
``rabbitmq-server`` is installed: port 5698, its files in a temporary folder, stopped at the end),
or ``--broker URL`` (with ``--broker-node NODE`` for ``rabbitmqctl``). The namespace's queues and
exchanges are deleted at the end either way. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import workload  # noqa: E402  (bench/workload.py: the app's hyperparameters)
from scale_broker import BrokerProbe, PrivateBroker, make_host_user, shared_ctl  # noqa: E402

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
APP = f"{BENCH / 'workload_app.py'}:app"
REGISTER_TARGET_S = 60.0
PROFILE_ENV = "FEDHIVE_BENCH_PROFILE"  # the coordinator child's cProfile output (--profile)
ROUND_RATIO_TARGET = 2.0


def model_digest(params: Any) -> dict[str, Any]:
    """The final model's L2 norm and a SHA-256 of its arrays' bytes (names sorted): equal digests,
    equal bits, whatever changed in how the rounds ran."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(params[name]).tobytes())
    norm = float(np.sqrt(sum(float(np.square(params[n], dtype=np.float64).sum()) for n in params)))
    return {"norm": norm, "sha256": digest.hexdigest()[:16]}


def session_settings(clients: int, per_round: int, rounds: int, heartbeat_s: float = 30.0) -> dict[str, Any]:
    return {
        "session_id": "amqp-scale",
        "rounds": rounds,
        "min_clients": clients,
        "fraction": per_round / clients,
        "registration_timeout_s": 600,
        "round_timeout_s": 300,
        # Hosts beat once for all their clients (docs/networked.md, "Virtual clients at scale"):
        # the interval costs little, but a host's beat still waits behind what trains.
        "heartbeat_interval_s": heartbeat_s,
        "heartbeat_timeout_s": 4 * heartbeat_s,
        "lr": workload.LR,
        "momentum": 0.0,
        "local_steps": workload.STEPS,
        "batch_size": workload.SAMPLES,
        "seed": workload.SEED,
    }


# -- the coordinator's process -----------------------------------------------------------------------
async def coordinator_child(url: str, namespace: str, store: str, settings_json: str, out: str) -> None:
    from fedhive.cli.session_file import parse_session
    from fedhive.runtime import events as ev
    from fedhive.runtime.bus import EventBus
    from fedhive.runtime.credentials import CredentialStore
    from fedhive.runtime.networked import BrokerSettings, run_coordinator
    from fedhive.runtime.registry import PeerStatus

    settings = json.loads(settings_json)
    session = parse_session({**settings, "app": APP}, Path(out) / "session.toml")
    total = settings["min_clients"]
    online = 0

    def say(what: str, **fields: object) -> None:
        print(json.dumps({"event": what, "t": time.time(), "cpu": time.process_time(), **fields}), flush=True)

    def on_status(e: ev.ClientStatusChanged) -> None:
        nonlocal online
        if e.status is PeerStatus.ONLINE and e.previous is not PeerStatus.ONLINE:
            online += 1
            if online == 1 or online % (total // 10 or 1) == 0:
                say("online", count=online)

    def watch(bus: EventBus) -> None:
        bus.on(ev.ClientStatusChanged, on_status)
        bus.on(ev.RoundStarted, lambda e: say("round_started", round=e.round, selected=len(e.selected)))
        bus.on(ev.RoundCompleted, lambda e: say("round_completed", round=e.round, updates=e.num_updates,
                                                duration_s=e.duration_s))  # fmt: skip

    broker = BrokerSettings(url, namespace)
    profile = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        done = await run_coordinator(
            session, CredentialStore(store), broker, observers=[watch], on_ready=lambda: say("ready")
        )
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
    say("done", model=model_digest(done.params))


# -- the run ----------------------------------------------------------------------------------------------
class Lines:
    """A process's stdout lines, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, []  # type: ignore[var-annotated]
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{") and '"event"' in line:
                out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events():
                    if e["event"] == name:
                        return e
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the coordinator gave no {name!r} event: {self.lines[-10:]}")
                self.cond.wait(1.0)


def write_credentials(
    root: Path, clients: int, hosts: int, *, host_users: bool
) -> tuple[Path, Path, list[tuple[str, str]]]:
    """The coordinator's store (every client and host) and the hosts' credentials file (the
    clients only), written at once: ``CredentialStore.add`` rewrites the store on each call.
    ``host_users``: each host a broker user, its clients' ids naming it, as ``fedhive clients add
    gw --role host --broker-user ...`` and ``fedhive clients add c --hosted-by HOST`` record them."""
    from fedhive.transports.amqp_topology import hosted_id

    width = len(str(clients))
    host_ids = [(f"host{i:02d}-{secrets.token_hex(3)}", secrets.token_hex(32)) for i in range(1, hosts + 1)]
    per_host = clients // hosts
    ids = []
    for i in range(1, clients + 1):
        cid = f"c{i:0{width}d}-{secrets.token_hex(3)}"  # sorted ids: host I gets slice I/K
        ids.append((hosted_id(cid, host_ids[(i - 1) // per_host][0]) if host_users else cid, secrets.token_hex(32)))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store = root / "clients.json"
    entries: dict[str, dict[str, str]] = {
        cid: {"name": cid.rsplit("-", 1)[0], "secret": s, "created_at": created} for cid, s in ids + host_ids
    }
    if host_users:
        for host, _ in host_ids:
            entries[host] |= {"role": "host", "broker_user": host}
        for cid, _ in ids:
            host = cid.rsplit(":", 1)[1]
            entries[cid] |= {"host": host, "broker_user": host}
    store.write_text(json.dumps({"version": 1, "clients": entries}))
    store.chmod(0o600)
    lines = root / "clients.jsonl"
    lines.write_text("".join(json.dumps({"client_id": c, "secret": s}) + "\n" for c, s in ids))
    lines.chmod(0o600)
    return store, lines, host_ids


def simulate_rounds(clients: int, per_round: int, rounds: int) -> tuple[list[float], dict[str, Any]]:
    """Each round's duration in the same session simulated (``run_federation``, what ``fedhive
    simulate`` runs: the clients behind one host in one process, on the memory transport, with one
    BLAS thread as ``fedhive simulate`` sets it), and the final model's digest."""
    from fedhive.app.loader import load_app
    from fedhive.runtime import events as ev
    from fedhive.runtime.bus import EventBus
    from fedhive.runtime.session_config import SessionConfig
    from fedhive.runtime.simulation import plan_simulation, run_federation
    from fedhive.runtime.worker_devices import one_thread_per_trainer

    one_thread_per_trainer()  # as fedhive simulate does: OpenBLAS's threads spin on a busy machine

    settings = {k: v for k, v in session_settings(clients, per_round, rounds).items() if "heartbeat" not in k}
    plan = plan_simulation(SessionConfig(**settings), load_app(APP), clients)
    durations: list[float] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, lambda e: durations.append(e.duration_s))

    result = asyncio.run(
        run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, observers=[watch])
    )
    return durations, model_digest(result.params)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fedhive-amqp-scale-"))
    broker: PrivateBroker | None = None
    url = args.broker
    if url is None:
        broker = PrivateBroker(root / "broker", args.private_port)
        broker.start()
        url = broker.url
        probe = BrokerProbe(broker.ctl)
    else:
        probe = BrokerProbe(shared_ctl(args.broker_node))
    namespace = f"scale-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[str]] = []
    per_host = args.clients // args.hosts
    clients = per_host * args.hosts
    try:
        store, creds, host_ids = write_credentials(root, clients, args.hosts, host_users=not args.shared_login)
        host_urls = {host: url for host, _ in host_ids}
        if not args.shared_login:
            host_urls = {host: make_host_user(probe, url, host, namespace) for host, _ in host_ids}
        memory_before = probe.memory_mb()
        settings = session_settings(clients, args.per_round, args.rounds, args.heartbeat)
        child = [sys.executable, __file__, "--coordinator-child", url, namespace, str(store), json.dumps(settings),
                 str(root)]  # fmt: skip
        coordinator_log = (root / "coordinator.log").open("w")  # its warnings: why a round failed
        child_env = {**os.environ, PROFILE_ENV: str(Path(args.profile).resolve())} if args.profile else None
        coordinator = subprocess.Popen(child, stdout=subprocess.PIPE, stderr=coordinator_log, text=True, env=child_env)
        procs.append(coordinator)
        watch = Lines(coordinator)
        watch.wait_event("ready", 120)
        # --host-profile: the first host under cProfile (every thread) with a probe of its loop's lag
        profile_to = str(Path(args.host_profile).resolve()) if args.host_profile else None
        profiled = [sys.executable, str(BENCH / "host_profile.py"), profile_to] if profile_to else []
        started = time.time()
        for i, (host, secret) in enumerate(host_ids, start=1):
            cmd = [*(profiled if profiled and i == 1 else FEDHIVE), "client", "--namespace", namespace, "--app", APP,
                   "--virtual", str(per_host), "--slice", f"{i}/{args.hosts}", "--host", host,
                   "--credentials", str(creds), "--workers", "1", "--register-timeout", "600",
                   "--coordinator-timeout", "300"]  # fmt: skip
            # bench/workload_app.py imports bench/workload.py
            path = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
            # The broker URL (with the host's password) in the environment, not on the command line.
            env = {**os.environ, "FEDHIVE_CLIENT_SECRET": secret, "PYTHONPATH": path, "FEDHIVE_BROKER": host_urls[host]}
            log = (root / f"host{i:02d}.log").open("w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
            procs.append(p)
        try:
            watch.wait_event("round_started", 900)
        except SystemExit:
            for log_file in sorted(root.glob("host*.log")):
                print(log_file.name, log_file.read_text()[-2000:], file=sys.stderr)
            raise
        online = [e for e in watch.events() if e["event"] == "online"]
        registered = [e for e in online if e["count"] == clients]
        registered_s = registered[0]["t"] - started if registered else float("nan")
        # From the first client ONLINE: without the hosts' start (1000 queues each to declare).
        from_first_s = registered[0]["t"] - online[0]["t"] if registered else float("nan")
        load_registered = os.getloadavg()
        queues = probe.queues(namespace)
        memory_registered = probe.memory_mb()
        if coordinator.wait(1800) != 0:
            said = (root / "coordinator.log").read_text()[-3000:]
            raise SystemExit(f"the coordinator failed: {watch.lines[-3:]}\n{said}")
        for p in procs[1:]:
            p.wait(120)
        events = watch.events()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        try:
            from fedhive.runtime.coordinator import COORDINATOR_ID
            from fedhive.transports.amqp import delete_namespace

            ids = [COORDINATOR_ID, *(c for c, _ in host_ids),
                   *(json.loads(line)["client_id"] for line in creds.read_text().splitlines())]  # fmt: skip
            asyncio.run(delete_namespace(url, namespace, ids, timeout_s=120))
        except Exception as exc:  # cleanup must not hide the result
            print(f"could not delete namespace {namespace}: {exc}", file=sys.stderr)
        if broker is not None:
            broker.stop()
        elif not args.shared_login:
            for host, _ in host_ids:
                try:
                    probe.ctl("delete_user", host)
                except subprocess.SubprocessError as exc:
                    print(f"could not delete broker user {host}: {exc}", file=sys.stderr)
    starts = {e["round"]: e for e in events if e["event"] == "round_started"}
    ends = {e["round"]: e for e in events if e["event"] == "round_completed"}
    rounds = [
        {"round": r, "duration_s": round(ends[r]["duration_s"], 3), "updates": ends[r]["updates"],
         "coordinator_cpu_s": round(ends[r]["cpu"] - starts[r]["cpu"], 3)}
        for r in sorted(ends)
    ]  # fmt: skip
    sim, sim_model = simulate_rounds(clients, args.per_round, args.rounds)
    done = [e for e in events if e["event"] == "done"]
    steady_rounds = rounds[1:] or rounds  # round 1 also loads every client's data
    steady = statistics.median(r["duration_s"] for r in steady_rounds)
    sim_steady = statistics.median(sim[1:]) if len(sim) > 1 else sim[0]
    selected = round(clients * settings["fraction"])
    shutil.rmtree(root, ignore_errors=True)
    result = {
        "clients": clients,
        "hosts": args.hosts,
        "host_users": not args.shared_login,
        "selected_per_round": selected,
        "registered_s": round(registered_s, 2),
        "registered_from_first_s": round(from_first_s, 2),
        "load_average_registered": load_registered,
        "rounds": rounds,
        "steady_round_s": round(steady, 3),
        "simulate_round_s": round(sim_steady, 3),
        "simulate_rounds_s": [round(x, 3) for x in sim],
        "round_ratio": round(steady / sim_steady, 2),
        "final_model": done[0].get("model") if done else None,
        "simulate_final_model": sim_model,
        "overhead_per_client_ms": round(1000 * (steady - sim_steady) / selected, 3),
        "coordinator_cpu_per_round_s": round(
            statistics.median(r["coordinator_cpu_s"] for r in rounds[1:] or rounds), 3
        ),
        "broker_memory_mb": {"before": memory_before, "registered": memory_registered},
        "namespace_queues": None if queues is None else {"count": queues[0], "memory_mb": queues[1]},
        "load_average": os.getloadavg(),
    }
    result["targets"] = {
        "registered_under_60_s": registered_s < REGISTER_TARGET_S,
        "round_under_2x_simulate": steady < ROUND_RATIO_TARGET * sim_steady,
    }
    return result


def report(r: dict[str, Any]) -> None:
    print(f"{r['clients']} clients in {r['hosts']} host processes, {r['selected_per_round']} selected per round")
    print(
        f"all registered after {r['registered_s']} s (target < {REGISTER_TARGET_S:.0f} s), "
        f"{r['registered_from_first_s']} s after the first; load average then {r['load_average_registered']}"
    )
    print(f"{'round':>5} {'duration s':>11} {'updates':>8} {'coordinator CPU s':>18}")
    for row in r["rounds"]:
        print(f"{row['round']:>5} {row['duration_s']:>11.3f} {row['updates']:>8} {row['coordinator_cpu_s']:>18.3f}")
    ratio = f"ratio {r['round_ratio']} (target < {ROUND_RATIO_TARGET})"
    print(f"steady round {r['steady_round_s']} s; simulate {r['simulate_round_s']} s; {ratio}")
    print(f"overhead {r['overhead_per_client_ms']} ms per selected client")
    print(f"final model {r['final_model']} (simulated: {r['simulate_final_model']})")
    print(f"broker memory {r['broker_memory_mb']}, namespace queues {r['namespace_queues']}")
    print(f"load average {r['load_average']} (at the end, after simulate)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--broker", help="an existing broker's URL (default: a private node started here)")
    ap.add_argument("--broker-node", help="with --broker: its RabbitMQ node, for rabbitmqctl")
    ap.add_argument("--private-port", type=int, default=5698)
    ap.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat interval s (timeout: 4 times it)")
    ap.add_argument("--profile", help="write the coordinator's cProfile stats to this file, print its top 25")
    ap.add_argument("--host-profile", help="run the first host under cProfile: its stats to this file (and .json)")
    ap.add_argument(
        "--shared-login",
        action="store_true",
        help="hosts log in as the coordinator; a queue per client (the layout before host users)",
    )
    ap.add_argument("--coordinator-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.coordinator_child:
        asyncio.run(coordinator_child(*args.coordinator_child))
        return
    result = run(args)
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
    report(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
