"""``fedhive simulate --aggregation async`` with heterogeneous clients, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from session_results import latest_results

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
BASE = ["simulate", "--dataset", "digits", "--model", "logreg-np", "--clients", "6", "--lr", "0.1", "--json"]


def fedhive(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDHIVE, *args], capture_output=True, text=True, timeout=120)


def test_an_async_session_of_slow_and_sometimes_offline_clients(tmp_path: Path) -> None:
    proc = fedhive(
        *BASE, "--out", str(tmp_path), "--rounds", "5", "--aggregation", "async", "--buffer-size", "3",
        "--staleness-weighting", "polynomial:1", "--client-speed", "slow:0.5x4", "--availability", "0.9:0.5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["aggregation"] == "async" and summary["rounds"] == 5 and summary["accuracy"] > 0.5
    run = latest_results(tmp_path)
    config = json.loads((run / "config.json").read_text())
    assert (config["client_speed"], config["availability"], config["staleness_exponent"]) == (
        "slow:0.5x4",
        "0.9:0.5",
        1,
    )
    with (run / "rounds.csv").open() as f:
        assert [r["updates"] for r in csv.DictReader(f)] == ["3"] * 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-speed", "fast"], "--client-speed must be lognormal:SIGMA"),
        (["--availability", "2"], "--availability must be SHARE"),
        (["--aggregation", "later"], "aggregation"),
        (["--aggregation", "async", "--secure-aggregation"], "cannot be used with aggregation = async"),
        (["--staleness-weighting", "linear"], "staleness weighting must be constant or polynomial"),
    ],
)
def test_mistakes_give_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = fedhive(*BASE, "--out", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
