"""``fedhive simulate`` with a population far larger than a round, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def simulate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["simulate", "--dataset", "digits", "--model", "logreg-np", "--workers", "1", "--out", str(out), *extra]
    return subprocess.run([*FEDHIVE, *args], capture_output=True, text=True, timeout=240)


def test_rows_only_for_the_clients_that_trained(tmp_path: Path) -> None:
    # 100,000 clients on 1437 training rows: clients share the data set's shards.
    proc = simulate(tmp_path, "--clients", "100000", "--per-round", "20", "--rounds", "3", "--seed", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    folder = Path(summary["out"])
    with (folder / "clients.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (folder / "rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    assert [r["selected"] for r in rounds] == ["20", "20", "20"]
    assert len(rows) == 60 and {r["status"] for r in rows} == {"accepted"}
    assert summary["clients"] == 100_000
    assert summary["clients_trained"] == len({r["client"] for r in rows})
    assert 0 < summary["accuracy"] <= 1
    config = json.loads((folder / "config.json").read_text())
    assert config["clients"] == 100_000 and config["max_clients"] == 20

    again = simulate(tmp_path / "again", "--clients", "100000", "--per-round", "20", "--rounds", "3", "--seed", "2")
    assert again.returncode == 0, again.stderr
    (second,) = [p for p in (tmp_path / "again").iterdir() if p.name != "latest"]
    assert (second / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    with (second / "clients.csv").open() as f:
        assert [r["client"] for r in csv.DictReader(f)] == [r["client"] for r in rows]


def test_a_population_refuses_paced_clients_in_one_line(tmp_path: Path) -> None:
    proc = simulate(tmp_path, "--clients", "20000", "--per-round", "10", "--client-speed", "lognormal:0.5")
    assert proc.returncode != 0
    assert "pace a node per client: not with a population of 20,000" in proc.stderr
    assert "Traceback" not in proc.stderr
