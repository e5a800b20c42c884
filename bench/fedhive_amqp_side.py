"""fedhive's side of case (e) of bench/compare_flower.py: the networked commands over RabbitMQ.

    .venv/bin/python bench/fedhive_amqp_side.py WORKDIR --broker URL --clients N --dataset D --partition P

WORKDIR holds what ``prepare`` wrote (session.toml, the client store and the clients' credentials,
made with ``fedhive clients add``): setting up identities is a one-off, not part of a run. This
process then does what a user does: it starts ``fedhive coordinator``, waits for its "coordinator
ready" line, starts ``fedhive client --virtual N``, and waits for both to end. Its process tree
(this launcher, the coordinator, the client process) is what compare_flower.py measures; the
broker is a shared service outside it. Round times and accuracies come from the coordinator's
results (rounds.csv in the session's folder under --out), the final model from model.safetensors.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import workload

NAMESPACE = "fedhive-bench-compare-flower"
SESSION = """\
session_id = "compare-flower-e"
rounds = {rounds}
min_clients = {clients}
registration_timeout_s = 120
round_timeout_s = 300
model = "logreg-np"
epochs = {epochs}
batch_size = {batch_size}
lr = {lr}
momentum = {momentum}
seed = {seed}

[data]
dataset = "{dataset}"
partition = "{partition}"
"""


def fedhive_cmd() -> str:
    return str(Path(sys.executable).parent / "fedhive")


def prepare(workdir: Path, clients: int, rounds: int, dataset: str, partition: str) -> None:
    """Session file and client identities (``fedhive clients add --count N --out-file``, mode 0600)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("store.json", "store.json.lock", "credentials.jsonl"):
        (workdir / stale).unlink(missing_ok=True)
    hp = workload.SOFTMAX_HP
    (workdir / "session.toml").write_text(
        SESSION.format(rounds=rounds, clients=clients, seed=workload.SEED, dataset=dataset, partition=partition, **hp)
    )
    add = [fedhive_cmd(), "clients", "add", "bench", "--count", str(clients), "--store", str(workdir / "store.json")]
    subprocess.run([*add, "--out-file", str(workdir / "credentials.jsonl")], stdout=subprocess.DEVNULL, check=True)


def run_networked(
    wd: Path,
    coordinator_cmd: list[str],
    clients_cmd: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> tuple[int, int]:
    """Starts the coordinator, waits for its "coordinator ready" line (a readiness handshake, not a
    sleep), starts the clients and waits for both: their exit codes. Output goes to coordinator.out,
    coordinator.err and clients.log in ``wd``. Past ``timeout_s`` both are killed and
    ``subprocess.TimeoutExpired`` raised."""
    with open(wd / "coordinator.out", "wb") as c_out, open(wd / "coordinator.err", "wb") as c_err:
        coordinator = subprocess.Popen(coordinator_cmd, stdout=c_out, stderr=subprocess.PIPE, env=env)
        err = coordinator.stderr
        assert err is not None
        for line in err:
            c_err.write(line)
            if line.startswith(b"coordinator ready"):
                break
        c_err.flush()
        drain = threading.Thread(target=lambda: c_err.write(err.read()), daemon=True)
        drain.start()
        with open(wd / "clients.log", "wb") as log:
            clients = subprocess.Popen(clients_cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                codes = coordinator.wait(timeout=timeout_s), clients.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                for p in (coordinator, clients):
                    p.kill()
                    p.wait()
                raise
        drain.join()
    return codes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--partition", required=True)
    args = ap.parse_args()
    wd: Path = args.workdir
    fedhive = fedhive_cmd()
    common = ["--broker", args.broker, "--namespace", NAMESPACE]
    run_dir = wd / "run"
    coordinator_cmd = [fedhive, "coordinator", "--config", str(wd / "session.toml"), "--out", str(run_dir), "--json"]
    coordinator_cmd += ["--store", str(wd / "store.json"), *common]
    clients_cmd = [fedhive, "client", "--virtual", str(args.clients), "--credentials", str(wd / "credentials.jsonl")]
    clients_cmd += ["--dataset", args.dataset, "--partition", args.partition, *common]
    codes = run_networked(wd, coordinator_cmd, clients_cmd)
    if any(codes):
        sys.exit(f"coordinator exited {codes[0]}, clients {codes[1]}; logs in {wd}")
    run_dir /= (run_dir / "latest").read_text().strip()  # the session's own folder under --out
    with open(run_dir / "rounds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    from safetensors.numpy import load_file  # after the run: the launcher stays small while it runs

    print(
        json.dumps(
            {
                "side": "fedhive-amqp",
                "round_s": [float(r["duration_s"]) for r in rows],
                "accuracy": [float(r["accuracy"]) for r in rows],
                "norm": workload.norm(load_file(str(run_dir / "model.safetensors"))),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
