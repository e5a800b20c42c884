"""``fedhive simulate --workers N``: the same model whatever N, and mistakes in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from session_results import latest_results

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
DIGITS = ["--dataset", "digits", "--model", "logreg-np", "--clients", "6", "--rounds", "3", "--seed", "5"]


def simulate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*FEDHIVE, "simulate", *DIGITS, "--out", str(out), "--json", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_two_workers_give_the_model_one_process_gives(tmp_path: Path) -> None:
    one, two = simulate(tmp_path / "one", "--workers", "1"), simulate(tmp_path / "two", "--workers", "2")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    model = [(latest_results(tmp_path / run) / "model.safetensors").read_bytes() for run in ("one", "two")]
    assert model[0] == model[1]
    assert json.loads(one.stdout.splitlines()[-1])["accuracy"] == json.loads(two.stdout.splitlines()[-1])["accuracy"]


def test_zero_workers_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = simulate(tmp_path / "x", "--workers", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --workers must be at least 1, got 0"


def test_a_session_that_cannot_use_workers_says_so_and_trains_here(tmp_path: Path) -> None:
    proc = simulate(tmp_path / "x", "--workers", "2", "--compression", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "--workers 2: sessions that compress updates" in proc.stderr
