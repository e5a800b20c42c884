"""Case (e) of bench/compare_flower.py, fedhive's side only, for comparing code trees round by round.

    .venv/bin/python bench/amqp_case_e_profile.py --tree old=OLD/src --tree new=src --repeats 2

Each ``--tree LABEL=SRC`` is a fedhive source folder (put first on PYTHONPATH); runs alternate
ABBA (A B B A, repeated ``--repeats`` times), so that the machine's drift (other jobs on a shared
machine) falls on every tree alike. A run is what bench/fedhive_amqp_side.py does: ``fedhive
coordinator`` (waited on for its "coordinator ready" line), then ``fedhive client --virtual N``,
100 clients x 5 rounds of mnist5k softmax regression by default. Its figure is the steady round
time: the median of rounds 2.. of the coordinator's rounds.csv ``duration_s`` (round 1 pays for
imports and first contact).

``--profile DIR`` runs the processes of ``--profile-tree`` under cProfile (``--profile-side``:
coordinator, client or both), writing DIR/LABEL-SIDE-RUN.prof; read them with ``python -m pstats``.
With ``--profiler py-spy`` (when py-spy is installed beside this Python; not a dependency) they run
under py-spy's sampler instead, writing collapsed stacks (DIR/LABEL-SIDE-RUN.txt). ``--launcher
FILE`` runs FILE instead of ``-m fedhive.cli.main`` (hooks that time the transport, say), with
CASE_E_RUN=LABEL-RUN in its environment.

Each tree gets its own namespace on the broker (older trees declare other exchanges). Prints a
table and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fedhive_amqp_side
import workload

THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
BENCH = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 600  # a run takes seconds; one stuck this long (a broker in trouble) ends the bench


def tree_env(src: Path) -> dict[str, str]:
    env = dict(os.environ) | THREADS
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(BENCH)])
    return env


def fedhive(profile: Path | None, profiler: str = "cprofile", launcher: Path | None = None) -> list[str]:
    py = [sys.executable]
    if profile is not None and profiler == "py-spy":  # sampled: idle waits stay out of the figures
        spy = Path(sys.executable).parent / "py-spy"
        py = [str(spy), "record", "--rate", "250", "--format", "raw", "--output", str(profile), "--", *py]
    elif profile is not None:
        py += ["-m", "cProfile", "-o", str(profile)]
    return [*py, str(launcher)] if launcher else [*py, "-m", "fedhive.cli.main"]


def prepare(workdir: Path, src: Path, clients: int, rounds: int) -> None:
    """The session file and client store, made by the tree's own ``fedhive clients add``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("store.json", "store.json.lock", "credentials.jsonl"):
        (workdir / stale).unlink(missing_ok=True)
    session = fedhive_amqp_side.SESSION.format(
        rounds=rounds,
        clients=clients,
        seed=workload.SEED,
        dataset="mnist5k",
        partition="iid",
        **workload.SOFTMAX_HP,
    )
    (workdir / "session.toml").write_text(session)
    add = [*fedhive(None), "clients", "add", "bench", "--count", str(clients), "--json"]
    with open(workdir / "credentials.jsonl", "w") as out:
        cmd = [*add, "--store", str(workdir / "store.json")]
        subprocess.run(cmd, stdout=out, check=True, env=tree_env(src))


def clean_broker(workdir: Path, broker: str, namespace: str) -> None:
    """Delete the namespace's queues and exchanges: each run starts on a bare broker, whatever an
    earlier run (of another tree, whose queues may have other arguments) left there."""
    from fedhive.transports.amqp import delete_namespace  # this checkout's, whichever tree runs

    with open(workdir / "credentials.jsonl") as f:
        ids = [json.loads(line)["client_id"] for line in f if line.strip()]
    asyncio.run(delete_namespace(broker, namespace, ["coordinator", *ids]))


def run_once(
    workdir: Path, src: Path, label: str, run: int, args: argparse.Namespace, profiles: dict[str, Path | None]
) -> list[float]:
    """One case (e) run; the coordinator's round times."""
    env = tree_env(src) | {"CASE_E_RUN": f"{label}-{run}"}
    namespace = f"fedhive-bench-case-e-{label}"
    clean_broker(workdir, args.broker, namespace)
    common = ["--broker", args.broker, "--namespace", namespace]
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    coordinator_cmd = [
        *fedhive(profiles["coordinator"], args.profiler, args.launcher),
        "coordinator",
        "--config",
        str(workdir / "session.toml"),
    ]
    coordinator_cmd += ["--out", str(run_dir), "--json", "--fresh", "--store", str(workdir / "store.json"), *common]
    clients_cmd = [*fedhive(profiles["client"], args.profiler, args.launcher), "client", "--virtual", str(args.clients)]
    clients_cmd += ["--credentials", str(workdir / "credentials.jsonl"), "--dataset", "mnist5k", "--partition", "iid"]
    clients_cmd += common
    try:
        codes = fedhive_amqp_side.run_networked(workdir, coordinator_cmd, clients_cmd, env, RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        sys.exit(f"{label}: the run took over {RUN_TIMEOUT_S} s; logs in {workdir}")
    if any(codes):
        sys.exit(f"{label}: coordinator exited {codes[0]}, clients {codes[1]}; logs in {workdir}")
    latest = run_dir / "latest"  # newer trees keep each session in its own folder under --out
    if latest.exists():
        run_dir /= latest.read_text().strip()
    with open(run_dir / "rounds.csv", newline="") as f:
        return [float(r["duration_s"]) for r in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="LABEL=SRC, a fedhive source folder")
    ap.add_argument("--repeats", type=int, default=1, help="ABBA cycles")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--broker", default=os.environ.get("FEDHIVE_BROKER", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--workdir", type=Path, default=BENCH / "out" / "case-e-profile")
    ap.add_argument("--profile", type=Path, help="write cProfile files here")
    ap.add_argument("--profile-tree", help="the label of the tree to profile (default: every tree)")
    ap.add_argument("--launcher", type=Path, help="a Python file run instead of fedhive.cli.main (timing hooks)")
    ap.add_argument("--profiler", choices=["cprofile", "py-spy"], default="cprofile", help="py-spy: if installed")
    ap.add_argument("--profile-side", choices=["coordinator", "client", "both"], default="both")
    args = ap.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.tree)
    trees = {label: Path(src).resolve() for label, src in trees.items()}
    for label, src in trees.items():
        prepare(args.workdir / label, src, args.clients, args.rounds)
    labels = list(trees)
    order = [*labels, *reversed(labels)] * args.repeats
    rounds: dict[str, list[list[float]]] = {label: [] for label in labels}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(order):
        profiles: dict[str, Path | None] = {"coordinator": None, "client": None}
        if args.profile and args.profile_tree in (None, label):
            for side in profiles:
                if args.profile_side in (side, "both"):
                    suffix = "txt" if args.profiler == "py-spy" else "prof"
                    profiles[side] = args.profile / f"{label}-{side}-{i}.{suffix}"
        started = time.perf_counter()
        times = run_once(args.workdir / label, trees[label], label, i, args, profiles)
        rounds[label].append(times)
        steady = statistics.median(times[1:])
        print(
            f"run {i:2d} {label:>8}: steady {steady:.3f} s, rounds {' '.join(f'{t:.3f}' for t in times)}"
            f" ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    print(f"\n{'tree':>8} | steady round s (median of each run's rounds 2..) | median")
    summary = {}
    for label in labels:
        per_run = [statistics.median(t[1:]) for t in rounds[label]]
        summary[label] = {"steady_s": statistics.median(per_run), "per_run": per_run, "rounds": rounds[label]}
        print(f"{label:>8} | {' '.join(f'{s:.3f}' for s in per_run)} | {summary[label]['steady_s']:.3f}")
    print(json.dumps({"bench": "amqp_case_e_profile", "clients": args.clients, "trees": summary}), flush=True)


if __name__ == "__main__":
    main()
