"""Figures, table, plots and the docs section of bench/compare_flower.py."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TARGETS = [  # (name, case, figure, at least): Flower / fedhive
    ("(a) whole-process wall time >= 5x", "a", "wall", 5.0),
    ("(a) steady round >= 3x", "a", "round", 3.0),
    ("(c) steady round >= 1.8x", "c", "round", 1.8),
    ("(a) peak memory <= 1/4", "a", "memory", 4.0),
    ("(b) peak memory <= 1/4", "b", "memory", 4.0),
    ("(c) peak memory <= 1/4", "c", "memory", 4.0),
    ("(d) peak memory <= 1/3", "d", "memory", 3.0),
]
COMPUTE_TARGETS = {"floor": 1.15, "wall": 1.3}  # compute-bound: fedhive within 1.15x of the floor, 1.3x Flower's
ACCURACY_TOLERANCE = 0.01  # final accuracies must agree within 1 point
MARK_START, MARK_END = "<!-- compare_flower:start -->", "<!-- compare_flower:end -->"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _digits(x: float, digits: int) -> str:
    return f"{x:.{digits}g}"


def _final_accuracy(runs: list[dict[str, Any]]) -> float:
    return float(runs[0]["accuracy"][-1])


def summary(results: dict[str, Any], cases: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"ratios": {}, "cases": {}}
    for key, res in results.items():
        if "flower" not in res:  # a pending or failed case
            out["ratios"][key] = res
            continue
        runs = res["runs"]
        if key == "digits":
            a_fl, a_fh = _final_accuracy(runs["flower"]), _final_accuracy(runs["fedhive"])
            fl, fh = res["flower"], res["fedhive"]
            out["digits"] = {
                "final_accuracy": {"flower": round(a_fl, 4), "fedhive": round(a_fh, 4)},
                "agree_within_1_point": abs(a_fl - a_fh) <= ACCURACY_TOLERANCE,
                "wall_s": {"flower": round(fl["wall_s"], 2), "fedhive": round(fh["wall_s"], 2)},
                "wall_ratio": round(_ratio(fl["wall_s"], fh["wall_s"]), 2),
            }
            continue
        fl, fh = res["flower"], res["fedhive"]
        digits = cases[key].norm_digits
        norms = {_digits(float(r["norm"]), digits) for side in ("flower", "fedhive") for r in runs[side]}
        ratio: dict[str, Any] = {
            "wall": round(_ratio(fl["wall_s"], fh["wall_s"]), 2),
            "round": round(_ratio(fl["round_s"], fh["round_s"]), 2),
            "memory": round(_ratio(fl["peak_mb"], fh["peak_mb"]), 2),
        }
        if cases[key].workload != "copy":
            ratio["norms_agree"] = len(norms) == 1
        case = {
            "title": cases[key].title,
            "label": cases[key].label,
            "flower": {k: round(v, 4) for k, v in fl.items()},
            "fedhive": {k: round(v, 4) for k, v in fh.items()},
            "norms": sorted(norms),
            "norm_digits": digits,
        }
        if cases[key].workload == "shards":
            a_fl, a_fh = _final_accuracy(runs["flower"]), _final_accuracy(runs["fedhive"])
            case["final_accuracy"] = {"flower": round(a_fl, 4), "fedhive": round(a_fh, 4)}
            ratio["accuracy_within_1_point"] = abs(a_fl - a_fh) <= ACCURACY_TOLERANCE
        if "compute_s" in fh:
            case["floor"] = _floor(fl, fh)
            ratio["fedhive_vs_floor"] = case["floor"]["fedhive_x"]
        out["ratios"][key] = ratio
        out["cases"][key] = case
    met = {}
    for name, key, figure, least in TARGETS:
        r = out["ratios"].get(key, {})
        if figure in r:
            met[name] = {"ratio": r[figure], "met": bool(r[figure] >= least)}
    for key, r in out["ratios"].items():
        if "fedhive_vs_floor" in r:
            most, least = COMPUTE_TARGETS["floor"], COMPUTE_TARGETS["wall"]
            met[f"({key}) fedhive whole-run wall <= {most}x the parallel floor"] = {
                "ratio": r["fedhive_vs_floor"],
                "met": bool(r["fedhive_vs_floor"] <= most),
            }
            met[f"({key}) whole-process wall time >= {least}x"] = {"ratio": r["wall"], "met": bool(r["wall"] >= least)}
    out["targets"] = met
    return out


def _floor(fl: dict[str, float], fh: dict[str, float]) -> dict[str, float]:
    """The parallel floor of a compute-bound case: the clients' summed compute (fedhive's workers
    time each task) over the cores (one worker per core), and each side's wall time against it."""
    floor = fh["compute_s"] / fh["workers"]
    return {
        "compute_s": round(fh["compute_s"], 2),
        "cores": fh["workers"],
        "floor_s": round(floor, 2),
        "fedhive_x": round(fh["wall_s"] / floor, 3),
        "flower_x": round(fl["wall_s"] / floor, 3),
    }


def floor_line(key: str, f: dict[str, float], fl_wall: float, fh_wall: float) -> str:
    return (
        f"({key}) parallel floor {f['floor_s']:.1f} s (clients' summed compute {f['compute_s']:.1f} s / "
        f"{f['cores']:.0f} cores): fedhive {fh_wall:.1f} s = {f['fedhive_x']:.2f}x, "
        f"Flower {fl_wall:.1f} s = {f['flower_x']:.2f}x"
    )


def print_table(s: dict[str, Any], info: dict[str, Any], titles: dict[str, str]) -> None:
    t = Table(
        title=f"Flower {info['flwr']} (Ray {info['ray']}) vs fedhive: medians; x = Flower / fedhive "
        f"({info['cores']} cores, {info['cpu']})"
    )
    for col in (
        "case",
        "wall s Flower",
        "fedhive",
        "x",
        "round s Flower",
        "fedhive",
        "x",
        "MiB Flower",
        "fedhive",
        "x",
    ):
        t.add_column(col, justify="left" if col == "case" else "right")
    for key, c in s["cases"].items():
        fl, fh, r = c["flower"], c["fedhive"], s["ratios"][key]
        t.add_row(
            f"({key}) {c['title']}",
            f"{fl['wall_s']:.2f}",
            f"{fh['wall_s']:.2f}",
            f"{r['wall']:.1f}",
            f"{fl['round_s']:.4f}",
            f"{fh['round_s']:.4f}",
            f"{r['round']:.1f}",
            f"{fl['peak_mb']:.0f}",
            f"{fh['peak_mb']:.0f}",
            f"{r['memory']:.1f}",
        )
    for key, r in s["ratios"].items():
        if "status" in r:
            t.add_row(f"({key}) {titles.get(key, '')}", r["status"], *[""] * 8)
    console = Console(width=170)
    console.print(t)
    for key, c in s["cases"].items():
        if "norms_agree" in s["ratios"][key]:
            ok = "agree" if s["ratios"][key]["norms_agree"] else "DIFFER"
            digits = c["norm_digits"]
            console.print(
                f"({key}) final model norm, {digits} significant digits, all runs of both sides: {c['norms']} {ok}"
            )
        if "final_accuracy" in c:
            fa = c["final_accuracy"]
            console.print(f"({key}) final test accuracy: Flower {fa['flower']:.4f}, fedhive {fa['fedhive']:.4f}")
        if "floor" in c:
            console.print(floor_line(key, c["floor"], c["flower"]["wall_s"], c["fedhive"]["wall_s"]))
    for key, r in s["ratios"].items():
        if "status" in r:
            console.print(f"({key}) {r['status']}: {r['why']}")
    if "digits" in s:
        d = s["digits"]
        console.print(
            f"digits time to accuracy: final accuracy Flower {d['final_accuracy']['flower']:.4f}, "
            f"fedhive {d['final_accuracy']['fedhive']:.4f} "
            f"({'within' if d['agree_within_1_point'] else 'NOT within'} 1 point); "
            f"whole run {d['wall_s']['flower']:.1f} s vs {d['wall_s']['fedhive']:.1f} s ({d['wall_ratio']:.1f}x)"
        )
    for name, m in s["targets"].items():
        console.print(f"target {name}: {m['ratio']:.2f}x {'met' if m['met'] else 'MISSED'}")


def plots(results: dict[str, Any], s: dict[str, Any], where: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    made = []
    colors = {"flower": "#d97706", "fedhive": "#2563eb"}
    shades = ["#1e3a8a", "#3b82f6", "#93c5fd"]
    if s["cases"]:
        keys = list(s["cases"])
        figures = [("wall", "whole-process wall time"), ("round", "steady round"), ("memory", "peak memory")]
        fig, ax = plt.subplots(figsize=(10, 4.2))
        width = 0.26
        for j, (figure, label) in enumerate(figures):
            xs = [i + (j - 1) * width for i in range(len(keys))]
            values = [s["ratios"][k][figure] for k in keys]
            # Bars grow from parity (1x): above it fedhive is faster / lighter.
            ax.bar(xs, [v - 1 for v in values], width, bottom=1, label=label, color=shades[j])
            for x, v in zip(xs, values, strict=True):
                ax.annotate(f"{v:.1f}", (x, max(v, 1)), ha="center", va="bottom", fontsize=8)
            for _name, key, fig_name, least in TARGETS:
                if fig_name == figure and key in keys:
                    x = keys.index(key) + (j - 1) * width
                    ax.hlines(least, x - width / 2, x + width / 2, colors="black", linewidth=2)
        ax.axhline(1, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)), [f"({k}) {s['cases'][k]['label']}" for k in keys])
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("Flower / fedhive (log scale)")
        ax.set_title("How many times faster / lighter fedhive is than Flower (black marks: targets)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = where / "benchmarks-flower-summary.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    if "digits" in s:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        style: dict[str, dict[str, Any]] = {
            "flower": {"lw": 5, "alpha": 0.45},
            "fedhive": {"lw": 1.5, "marker": "o", "ms": 3},
        }
        for side in ("flower", "fedhive"):
            r = results["digits"]["runs"][side][0]
            acc = r["accuracy"]
            left.plot(range(1, len(acc) + 1), acc, label=side, color=colors[side], **style[side])
            elapsed = [t - r["spawned_at"] for t in r["round_end"]]
            right.plot(elapsed, acc, label=side, color=colors[side], **style[side])
        left.set(xlabel="round", ylabel="test accuracy", title="accuracy per round (the two lines coincide)")
        left.set_xticks(range(0, len(acc) + 1, 5))
        right.set(xlabel="seconds since the process was started", ylabel="test accuracy", title="time to accuracy")
        right.set_xlim(left=0)
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("digits, dirichlet:0.5, 10 clients, softmax regression (numpy), 20 rounds")
        fig.tight_layout()
        path = where / "benchmarks-flower-accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def markdown(s: dict[str, Any], info: dict[str, Any], titles: dict[str, str], plots: list[Path], args: str) -> str:
    lines = [
        f"Measured with `.venv/bin/python bench/compare_flower.py {args}`".rstrip() + " on: "
        f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB RAM, Linux {info['kernel']}, "
        f"Python {info['python']}, numpy {info['numpy']}; Flower {info['flwr']} with Ray {info['ray']}; "
        "one BLAS/OpenMP thread per process on both sides.",
        "",
        "| case | wall s Flower | fedhive | x | steady round s Flower | fedhive | x | peak MiB Flower | fedhive | x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, c in s["cases"].items():
        fl, fh, r = c["flower"], c["fedhive"], s["ratios"][key]
        lines.append(
            f"| ({key}) {c['title']} | {fl['wall_s']:.2f} | {fh['wall_s']:.2f} | {r['wall']:.1f} | "
            f"{fl['round_s']:.4f} | {fh['round_s']:.4f} | {r['round']:.1f} | {fl['peak_mb']:.0f} | "
            f"{fh['peak_mb']:.0f} | {r['memory']:.1f} |"
        )
    for key, r in s["ratios"].items():
        if "status" in r:
            lines.append(f"| ({key}) {titles.get(key, '')} | {r['status']}: {r['why']} |||||||||")
    lines.append("")
    for key, c in s["cases"].items():
        if "norms_agree" in s["ratios"][key]:
            verdict = "agree" if s["ratios"][key]["norms_agree"] else "**differ**"
            lines.append(
                f"- ({key}) final model norm to {c['norm_digits']} significant digits, every run of both sides: "
                f"{', '.join(c['norms'])} ({verdict})"
            )
        if "final_accuracy" in c:
            fa = c["final_accuracy"]
            lines.append(f"- ({key}) final test accuracy: Flower {fa['flower']:.4f}, fedhive {fa['fedhive']:.4f}")
        if "floor" in c:
            lines.append("- " + floor_line(key, c["floor"], c["flower"]["wall_s"], c["fedhive"]["wall_s"]))
    if "digits" in s:
        d = s["digits"]
        lines.append(
            f"- digits: final test accuracy Flower {d['final_accuracy']['flower']:.4f}, fedhive "
            f"{d['final_accuracy']['fedhive']:.4f} ({'within' if d['agree_within_1_point'] else '**not** within'} "
            f"1 point); whole run {d['wall_s']['flower']:.1f} s vs {d['wall_s']['fedhive']:.1f} s"
        )
    lines += ["", "| target (Flower / fedhive) | measured | |", "|---|---:|---|"]
    for name, m in s["targets"].items():
        lines.append(f"| {name} | {m['ratio']:.2f}x | {'met' if m['met'] else '**missed**'} |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines)


def write_docs(
    path: Path, s: dict[str, Any], info: dict[str, Any], titles: dict[str, str], plots: list[Path], args: str
) -> None:
    """Replace the generated block of ``path`` (between the markers), keeping the prose around it."""
    block = f"{MARK_START}\n{markdown(s, info, titles, plots, args)}\n{MARK_END}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    path.write_text(pattern.sub(lambda _m: block, text) if pattern.search(text) else text + "\n" + block + "\n")
