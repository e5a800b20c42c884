"""The model zoo's results do not drift: the same commands and seeds give the same bits.

The zoo became an app on the public API without changing a bit (checked against digests recorded
before that rewrite, and again after the round loop was rewritten). These digests were recorded
afterwards, when FedAvg's weighted products became exact float64 ones, which moves the last bits
of every model (the digits demo's accuracy is the same 0.9415)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from session_results import latest_results

RECORDED = [
    (
        "--dataset digits --clients 10 --rounds 3 --partition dirichlet:0.5 --seed 0",
        "6d6acd40f9309a2bcfd1e5cfae6e9017289b77cce93077ae19089d82b5460167",
    ),
    (
        "--dataset digits --model logreg-np --clients 20 --rounds 3 --seed 1",
        "b3d1951d6d47082f5583462a459ea679a5a24a283ee21052ae3a6f18e673f1ac",
    ),
    (
        "--dataset iris --model logreg --clients 3 --rounds 2 --epochs 5",
        "2c7d3a30fd85cac56044c135b4196587b24e3d4a2a7ef0ea4d0429d47b37fd41",
    ),
    (
        "--dataset mnist5k --model cnn --clients 3 --rounds 1 --seed 2",
        "31fd435400f8435481b63baa957ccddd5928042e6fe97e353dcbbbbb6db7cce5",
    ),
]


@pytest.mark.parametrize(("args", "digest"), RECORDED)
def test_the_builtin_app_gives_the_recorded_model(args: str, digest: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", *args.split(), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((latest_results(tmp_path) / "model.safetensors").read_bytes()).hexdigest() == digest


def test_momentum_is_passed_on(tmp_path: Path) -> None:
    """``simulate --momentum`` was once accepted and ignored: two values, two models."""
    models = []
    for momentum in ("0.0", "0.5"):
        out = tmp_path / momentum
        cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", "--dataset", "iris", "--model", "logreg-np",
               "--clients", "2", "--rounds", "1", "--momentum", momentum, "--out", str(out)]  # fmt: skip
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        run = latest_results(out)
        assert f'"momentum": {momentum}' in (run / "config.json").read_text()
        models.append((run / "model.safetensors").read_bytes())
    assert models[0] != models[1]


def test_federated_evaluation_on_the_clients_shares_equals_the_central_figure(tmp_path: Path) -> None:
    """Each client evaluates on its share of the held-out rows (partitioned like its training
    rows): the example-weighted mean over the clients is the held-out accuracy itself."""
    figures = {}
    for mode in ("central", "clients"):
        args = [
            "--dataset",
            "digits",
            "--clients",
            "10",
            "--rounds",
            "4",
            "--partition",
            "dirichlet:0.5",
            "--seed",
            "0",
            "--json",
        ]
        cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", *args, "--evaluate", mode]
        proc = subprocess.run([*cmd, "--out", str(tmp_path / mode)], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        figures[mode] = json.loads(proc.stdout.splitlines()[-1])["accuracy"]
    assert figures["clients"] == pytest.approx(figures["central"], abs=1e-9), figures
