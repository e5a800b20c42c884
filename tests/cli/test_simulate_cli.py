"""``fedhive simulate`` as a user runs it: a subprocess, its stdout, its exit code, its files."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedhive.core import codec
from session_results import latest_results

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


def fedhive(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDHIVE, *args], capture_output=True, text=True, timeout=timeout)


def simulate(out: Path, *extra: str) -> dict[str, object]:
    proc = fedhive(
        "simulate",
        "--dataset",
        "digits",
        "--model",
        "logreg-np",
        "--clients",
        "5",
        "--rounds",
        "4",
        "--partition",
        "dirichlet:0.5",
        "--lr",
        "0.1",
        "--seed",
        "3",
        "--out",
        str(out),
        "--json",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_simulate_writes_a_complete_run_directory(tmp_path: Path) -> None:
    summary = simulate(tmp_path / "run")
    assert summary["rounds"] == 4 and summary["clients"] == 5
    assert 0.8 < float(summary["accuracy"]) <= 1.0  # type: ignore[arg-type]
    run = latest_results(tmp_path / "run")  # the session's own folder, which --json names
    assert run.name == summary["session_id"] and Path(str(summary["out"])) == run
    config = json.loads((run / "config.json").read_text())
    assert config["rounds"] == 4 and config["partition"] == "dirichlet:0.5"
    rounds = list(csv.DictReader((run / "rounds.csv").open()))
    assert [r["round"] for r in rounds] == ["1", "2", "3", "4"]
    assert float(rounds[-1]["accuracy"]) == pytest.approx(float(summary["accuracy"]))  # type: ignore[arg-type]
    clients = list(csv.DictReader((run / "clients.csv").open()))
    assert len(clients) == 4 * 5 and {c["status"] for c in clients} == {"accepted"}
    model = codec.decode((run / "model.safetensors").read_bytes(), max_bytes=1 << 24)
    assert list(model) == ["weight", "bias"] and model["weight"].shape == (64, 10)


def test_same_seed_gives_a_bitwise_identical_model(tmp_path: Path) -> None:
    simulate(tmp_path / "a")
    simulate(tmp_path / "b")
    simulate(tmp_path / "c", "--seed", "4")

    def digest(run: str) -> str:
        return hashlib.sha256((latest_results(tmp_path / run) / "model.safetensors").read_bytes()).hexdigest()

    assert digest("a") == digest("b")
    assert digest("a") != digest("c")


def test_torch_model_is_reproducible_too(tmp_path: Path) -> None:
    args = ("simulate", "--dataset", "iris", "--model", "simple-dnn:16", "--clients", "3", "--rounds", "2", "--json")
    a = fedhive(*args, "--out", str(tmp_path / "a"))
    b = fedhive(*args, "--out", str(tmp_path / "b"))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    model_a, model_b = (latest_results(tmp_path / run) / "model.safetensors" for run in ("a", "b"))
    assert model_a.read_bytes() == model_b.read_bytes()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["--model", "transformer"], "transformer"),
        (["--partition", "zipf:2"], "zipf"),
        (["--rounds", "0"], "rounds"),
        (["--clients", "5000", "--dataset", "iris"], "5000 clients but only"),
        (["--strategy", "fedmagic"], "unknown strategy 'fedmagic'"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = fedhive("simulate", "--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_csv_names_row_and_column(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.csv", "a,b,y\n1,2,0\n3,oops,1\n5,6,0\n")
    proc = fedhive("simulate", "--csv", str(bad), "--label", "y", "--clients", "1", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "row 3" in proc.stderr and "'b'" in proc.stderr and "oops" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_csv_missing_label_column(tmp_path: Path) -> None:
    data = write(tmp_path / "d.csv", "a,b,c\n1,2,0\n")
    proc = fedhive("simulate", "--csv", str(data), "--label", "target", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "target" in proc.stderr and "Traceback" not in proc.stderr


def test_csv_federation_trains(tmp_path: Path) -> None:
    rows = ["f1,f2,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 7 > 3 else 'no'}" for i in range(400)]
    data = write(tmp_path / "d.csv", "\n".join(rows) + "\n")
    proc = fedhive(
        "simulate",
        "--csv",
        str(data),
        "--label",
        "label",
        "--clients",
        "4",
        "--rounds",
        "10",
        "--model",
        "simple-dnn:16",
        "--out",
        str(tmp_path / "x"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"] > 0.9
