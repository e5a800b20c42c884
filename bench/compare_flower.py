"""fedhive against Flower on the same workloads, side by side in one run.

    .venv/bin/python bench/compare_flower.py            # everything: 15-20 minutes on 2 cores
    .venv/bin/python bench/compare_flower.py --cases fg # the compute-bound cases only
    .venv/bin/python bench/compare_flower.py --quick    # case (a) once: a smoke run (~30 s)
    .venv/bin/python bench/compare_flower.py --docs     # also write the plots and results into docs/

Flower (``flwr[simulation]``, pinned in bench/flower-requirements.txt) is installed into its own
virtual environment, bench/.flwr-venv, on first use. Every run of either side is a child process
of its own (bench/flower_side.py in Flower's environment, bench/fedhive_side.py or
bench/fedhive_amqp_side.py in fedhive's) that calls the same numpy functions (bench/workload.py)
through its framework; runs alternate between the sides (ABBA) so that drift on a noisy machine
hits both alike, and figures are medians.

Cases: (a) 10 clients x 10 rounds, (b) 100 x 5, (c) 1000 x 2 of binary logistic regression with
10,000 weights, 5 full-batch gradient steps on 50 x 10,000 synthetic samples per client; (d) 10 x 3
of a 25M-parameter float32 model whose client update is a copy; (e) 100 x 5 on mnist5k (softmax
regression, iid shards) with fedhive's networked commands over RabbitMQ (``fedhive coordinator``
+ ``fedhive client --virtual 100``) against Flower's simulation. Then digits, ``dirichlet:0.5``, 10
clients x 20 rounds: test accuracy per round on both sides, and against seconds since start.

Compute-bound cases, where clients' work dominates and both sides use every core (fedhive: one
worker process per core, ``fedhive simulate --workers``; Flower: one Ray actor per core): (f) the
logistic regression of (a)-(c) with 330 steps, about 20 ms per client, 100 clients x 20 rounds;
(g) the PyTorch CNN example app (examples/torch_mnist) on mnist5k, 100 clients x 20 rounds of 10
local epochs. Each also reports the parallel floor: the clients' summed compute (timed inside
fedhive's workers) divided by the cores, against which both sides' whole-run wall time is set.

Per case and side: whole-process wall time (spawn to exit), steady round time (median of rounds
2..R over all repeats), peak memory of the process tree (PSS summed, bench/process_tree.py), and
the final model's norm. Both sides run with one BLAS/OpenMP thread per process. Prints a table and,
last, one JSON line with the ratios Flower/fedhive and which targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fedhive_amqp_side
import report
from process_tree import Measured, measure

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
FLOWER_VENV = BENCH / ".flwr-venv"
FEDHIVE_PY = Path(sys.executable)
THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Case:
    key: str
    workload: str  # logreg | copy | shards (bench/workload.py)
    clients: int
    rounds: int
    title: str
    label: str  # two short lines for the plot
    repeats: int = 2
    data: tuple[str, str] | None = None  # (dataset, partition) of a ``shards`` workload
    networked: bool = False  # fedhive's side runs over RabbitMQ (bench/fedhive_amqp_side.py)
    compute: bool = False  # compute-bound: every core on both sides, set against the parallel floor
    # Significant digits to which both sides' final model norms must agree. Where clients train
    # many SGD steps a round (the CNN), Flower's float32 averages and fedhive's float64 ones, equal
    # to 8 digits after one round, drift apart as training amplifies them.
    norm_digits: int = 6


CASES = [
    Case("a", "logreg", 10, 10, "logreg 10k, 10 clients x 10 rounds", "logreg 10k\n10 x 10", repeats=3),
    Case("b", "logreg", 100, 5, "logreg 10k, 100 clients x 5 rounds", "logreg 10k\n100 x 5"),
    Case("c", "logreg", 1000, 2, "logreg 10k, 1000 clients x 2 rounds", "logreg 10k\n1000 x 2"),
    Case("d", "copy", 10, 3, "25M float32 copy, 10 clients x 3 rounds", "25M copy\n10 x 3"),
    Case(
        "e",
        "shards",
        100,
        5,
        "mnist5k softmax, 100 clients x 5 rounds; fedhive over RabbitMQ",
        "mnist5k, 100 x 5\nfedhive on RabbitMQ",
        data=("mnist5k", "iid"),
        networked=True,
    ),
    Case(
        "f",
        "logreg-compute",
        100,
        20,
        "logreg 10k, ~20 ms per client, 100 clients x 20 rounds; every core",
        "logreg, 20 ms\n100 x 20",
        compute=True,
    ),
    Case(
        "g",
        "cnn",
        100,
        20,
        "PyTorch CNN example app, mnist5k, 100 clients x 20 rounds x 10 epochs; every core",
        "CNN mnist5k\n100 x 20",
        compute=True,
        norm_digits=3,
    ),
]
DIGITS = Case(
    "digits",
    "shards",
    10,
    20,
    "digits dirichlet:0.5, 10 clients x 20 rounds",
    "digits\n10 x 20",
    repeats=1,
    data=("digits", "dirichlet:0.5"),
)


def ensure_flower_venv(venv: Path) -> str:
    """Create ``venv`` with Flower if it has none; returns the flwr version found there."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import flwr, ray, numpy; print(flwr.__version__, ray.__version__)"]
    if not py.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        print(f"installing Flower into {venv} (bench/flower-requirements.txt) ...", file=sys.stderr)
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(BENCH / "flower-requirements.txt")], check=True)
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def ensure_packages(venv: Path, names: list[str]) -> None:
    """Install ``names`` into Flower's environment at the versions fedhive's has (case (g) runs the
    PyTorch example there: the same torch on both sides)."""
    py = str(venv / "bin" / "python")
    missing = []
    for name in names:
        probe = f"import importlib.metadata as m; print(m.version({name!r}))"
        found = subprocess.run([py, "-c", probe], capture_output=True, text=True)
        if found.returncode != 0 or found.stdout.strip() != metadata.version(name):
            missing.append(f"{name}=={metadata.version(name)}")
    if missing:
        print(f"installing into {venv}: {' '.join(missing)} (fedhive's versions) ...", file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "-q", *missing], check=True)


def child_env() -> dict[str, str]:
    env = dict(os.environ) | THREADS
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # no background HTTP posts from inside the measurement
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH", "")) if p)
    return env


class RunFailed(Exception):
    pass


def shard_file(case: Case) -> Path:
    return OUT / f"shards-{case.key}.npz"


def export_shards(case: Case) -> None:
    """fedhive's partition of the case's data set, written for the Flower side to load."""
    assert case.data is not None
    cmd = [str(FEDHIVE_PY), str(BENCH / "fedhive_side.py"), "export", str(shard_file(case)), str(case.clients)]
    subprocess.run([*cmd, "--dataset", case.data[0], "--partition", case.data[1]], check=True, env=child_env())


def side_command(side: str, case: Case, flower_py: Path, broker: str) -> list[str]:
    data = ["--dataset", case.data[0], "--partition", case.data[1]] if case.data else []
    if side == "fedhive" and case.networked:
        workdir = OUT / f"amqp-{case.key}"
        fedhive_amqp_side.prepare(workdir, case.clients, case.rounds, *case.data)  # type: ignore[misc]
        script = str(BENCH / "fedhive_amqp_side.py")
        return [str(FEDHIVE_PY), script, str(workdir), "--broker", broker, "--clients", str(case.clients), *data]
    py, script = (flower_py, "flower_side.py") if side == "flower" else (FEDHIVE_PY, "fedhive_side.py")
    cmd = [str(py), str(BENCH / script), case.workload, str(case.clients), str(case.rounds), *data]
    return cmd + (["--data", str(shard_file(case))] if case.data else [])


def run_side(side: str, case: Case, repeat: int, flower_py: Path, broker: str) -> dict[str, object]:
    cmd = side_command(side, case, flower_py, broker)
    log = OUT / "logs" / f"{case.key}-{side}-{repeat}.log"
    spawned_at = time.time()
    m: Measured = measure(cmd, env=child_env(), cwd=str(ROOT), stderr_path=log)
    lines = [ln for ln in m.stdout.splitlines() if ln.startswith("{")]
    if m.returncode != 0 or not lines:
        raise RunFailed(f"the {side} run failed (exit {m.returncode}); see {log}")
    result: dict[str, object] = json.loads(lines[-1])
    result.update(
        wall_s=m.wall_s,
        peak_mb=m.peak_mb,
        processes=m.peak_processes,
        memory_metric=m.metric,
        spawned_at=spawned_at,
        sampler_cpu_s=m.sampler_cpu_s,
    )
    print(
        f"  {case.key} {side:7} #{repeat}: wall {m.wall_s:6.2f} s, peak {m.peak_mb:7.0f} MiB "
        f"({m.peak_processes} processes), norm {result['norm']:.9g}",
        file=sys.stderr,
    )
    return result


def run_case(case: Case, repeats: int, flower_py: Path, broker: str) -> dict[str, list[dict[str, object]]]:
    if case.data:
        export_shards(case)
    runs: dict[str, list[dict[str, object]]] = {"flower": [], "fedhive": []}
    for i in range(repeats):
        order = ("flower", "fedhive") if i % 2 == 0 else ("fedhive", "flower")
        for side in order:
            runs[side].append(run_side(side, case, i, flower_py, broker))
    return runs


def summarise(runs: list[dict[str, object]]) -> dict[str, float]:
    steady = [t for r in runs for t in r["round_s"][1:]]  # type: ignore[index]
    out = {
        "wall_s": statistics.median(float(r["wall_s"]) for r in runs),  # type: ignore[arg-type]
        "round_s": statistics.median(steady) if steady else float("nan"),
        "peak_mb": statistics.median(float(r["peak_mb"]) for r in runs),  # type: ignore[arg-type]
        "norm": float(runs[0]["norm"]),  # type: ignore[arg-type]
    }
    if all(r.get("compute_s") is not None for r in runs):  # fedhive's workers timed the clients' compute
        out["compute_s"] = statistics.median(float(r["compute_s"]) for r in runs)  # type: ignore[arg-type]
        out["workers"] = float(runs[0]["workers"])  # type: ignore[arg-type]
    return out


def machine() -> dict[str, object]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem_kb = int(
        next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    )
    import numpy

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }


def networked_missing(broker: str) -> str | None:
    """Why case (e) cannot run here, or None when it can."""
    probe = subprocess.run(
        [str(FEDHIVE_PY), "-m", "fedhive.cli.main", "client", "--help"], capture_output=True, text=True, env=child_env()
    )
    if probe.returncode != 0 or "--virtual" not in probe.stdout:
        return "`fedhive client --virtual N` (the networked CLI) is not in this build yet"
    url = urlsplit(broker)
    try:
        socket.create_connection((url.hostname or "127.0.0.1", url.port or 5672), timeout=3).close()
    except OSError:
        return f"no RabbitMQ at {url.hostname}:{url.port or 5672} (--broker)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="case (a) once, no digits: a smoke run")
    ap.add_argument("--repeats", type=int, help="runs per side of every case (default: 3 for (a), 2 for the others)")
    ap.add_argument("--cases", default="abcdefg", help="which of a to g to run (default all; fg: compute-bound)")
    ap.add_argument("--no-digits", action="store_true", help="skip the time-to-accuracy run")
    ap.add_argument("--flower-venv", type=Path, default=FLOWER_VENV)
    ap.add_argument("--broker", default=os.environ.get("FEDHIVE_BROKER", "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--docs", action="store_true", help="write plots and the results section into docs/")
    ap.add_argument("--render", type=Path, metavar="JSON", help="run nothing: report a saved compare_flower.json")
    args = ap.parse_args()
    saved = OUT / ("compare_flower-quick.json" if args.quick else "compare_flower.json")
    if args.render:
        doc = json.loads(args.render.read_text())
        info, results, command = doc["machine"], doc["results"], doc["command"]
    else:
        info, results = run_all(args)
        command = " ".join(sys.argv[1:])
        saved.write_text(json.dumps({"machine": info, "command": command, "results": results}, indent=1))

    summary = report.summary(results, {c.key: c for c in [*CASES, DIGITS]})
    titles = {c.key: c.title for c in CASES}
    report.print_table(summary, info, titles)
    plots = report.plots(results, summary, ROOT / "docs" if args.docs else OUT)
    if args.docs:
        report.write_docs(ROOT / "docs" / "benchmarks.md", summary, info, titles, plots, command)
    print(json.dumps({"bench": "compare_flower", "flwr": info["flwr"]} | summary))


def run_all(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    cases = [c for c in CASES if c.key in args.cases]
    if args.quick:
        cases, args.repeats, args.no_digits = CASES[:1], 1, True
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    versions = ensure_flower_venv(args.flower_venv)
    if any(c.key == "g" for c in cases):
        ensure_packages(args.flower_venv, ["torch", "mlxtend"])
    flower_py = args.flower_venv / "bin" / "python"
    info = machine() | {"flwr": versions.split()[0], "ray": versions.split()[1], "threads": THREADS}
    results: dict[str, Any] = {}
    for case in [*cases, *([] if args.no_digits else [DIGITS])]:
        print(f"case ({case.key}) {case.title}", file=sys.stderr)
        why = networked_missing(args.broker) if case.networked else None
        if why:
            print(f"  pending: {why}", file=sys.stderr)
            results[case.key] = {"status": "pending", "why": why}
            continue
        try:
            runs = run_case(case, args.repeats or case.repeats, flower_py, args.broker)
        except RunFailed as exc:  # reported as such; the other cases still run
            print(f"  failed: {exc}", file=sys.stderr)
            results[case.key] = {"status": "failed", "why": str(exc)}
            continue
        results[case.key] = {side: summarise(r) for side, r in runs.items()} | {"runs": runs}
    return info, results


if __name__ == "__main__":
    main()
