"""Where a parallel simulation's time goes, from a ``FEDHIVE_TIMELINE`` file (runtime/worker_timeline.py).

    FEDHIVE_TIMELINE=/tmp/t.jsonl .venv/bin/python bench/fedhive_side.py cnn 100 20
    .venv/bin/python bench/floor_timeline.py /tmp/t.jsonl [--exit-at UNIX_TIME]

Prints, from the bench process's start: when the app was loaded, the workers spawned, each
worker's hello (imports done) and app load, the first task; then, summed over rounds, each
worker's busy time (wall inside tasks) and its idle time split into the round boundary (from its
last task of round r to its first of round r+1) and gaps inside a round; the last-client tail of
each round (from the first worker's last end to the last worker's); the end.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return sorted((json.loads(line) for line in f if line.strip()), key=lambda r: r["t"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--start-at", type=float, help="when the bench process was started (unix time)")
    ap.add_argument("--exit-at", type=float, help="when it exited")
    args = ap.parse_args()
    rows = load(args.file)
    zero = args.start_at if args.start_at is not None else rows[0]["t"]

    def at(r: dict[str, Any]) -> str:
        return f"{r['t'] - zero:7.2f} s"

    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        firsts.setdefault((r["who"], r["what"]), r)
    for (who, what), r in firsts.items():
        if what not in ("task-begin", "task-end", "round-started", "round-completed", "publish"):
            print(f"{at(r)}  {who:9} {what}" + (f"  main CPU {r['main_cpu_s']:.2f} s" if "main_cpu_s" in r else ""))
        elif what == "task-begin":
            print(f"{at(r)}  {who:9} first task")
    tasks: dict[str, list[tuple[int, float, float]]] = collections.defaultdict(list)
    begun: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["what"] == "task-begin":
            begun[r["who"]] = r
        elif r["what"] == "task-end":
            b = begun.pop(r["who"])
            tasks[r["who"]].append((int(b.get("round") or 0), b["t"], r["t"]))
    busy_cpu = sum(float(r.get("busy_s") or 0) for r in rows if r["what"] == "task-end")
    print(f"tasks {sum(map(len, tasks.values()))}, summed CPU in tasks {busy_cpu:.2f} s")
    rounds = sorted({t[0] for ts in tasks.values() for t in ts})
    tails = []
    for rnd in rounds:
        ends = sorted(max(e for r, _, e in ts if r == rnd) for ts in tasks.values() if any(r == rnd for r, _, _ in ts))
        if len(ends) > 1:
            tails.append(ends[-1] - ends[0])
    for who, ts in sorted(tasks.items()):
        busy = sum(e - b for _, b, e in ts)
        boundary = within = 0.0
        for (r0, _, e0), (r1, b1, _) in itertools.pairwise(ts):
            if r1 != r0:
                boundary += b1 - e0
            else:
                within += b1 - e0
        print(
            f"{who}: {len(ts)} tasks, busy (wall) {busy:.2f} s, idle at round boundaries {boundary:.2f} s, "
            f"idle within rounds {within:.2f} s, first task at {ts[0][1] - zero:.2f} s, "
            f"last end {ts[-1][2] - zero:.2f} s"
        )
    mean_ms = 1000 * sum(tails) / max(1, len(tails))
    print(f"last-client tail: {sum(tails):.2f} s over {len(tails)} rounds (mean {mean_ms:.0f} ms)")
    last_end = max(ts[-1][2] for ts in tasks.values())
    done = firsts.get(("main", "session-done"))
    if done is not None:
        print(f"from the last task's end to session-done: {done['t'] - last_end:.2f} s")
    if args.exit_at is not None:
        whole = args.exit_at - zero
        print(f"from the last task's end to exit: {args.exit_at - last_end:.2f} s; whole run {whole:.2f} s")
        floor = busy_cpu / max(1, len(tasks))
        if floor:
            print(f"floor (CPU in tasks / {len(tasks)} workers) {floor:.2f} s: ratio {whole / floor:.3f}")


if __name__ == "__main__":
    main()
