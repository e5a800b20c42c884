"""The model zoo's results do not drift: the same commands and seeds give the same model.

The zoo became an app on the public API without changing a bit (checked then against sha256
digests of model.safetensors). Bits are not portable across machines, though: numpy's OpenBLAS
and torch pick their kernels by CPU (AVX2 or AVX-512, Zen or Intel), and those round the last bits
differently, so the recorded digests failed on another machine with the same code. What is kept
is each tensor's float64 sum and L2 norm, to 6 decimals, compared at 1e-4 relative: far tighter than
any real change of the training (one step more or a changed learning rate moves them at the
second or third digit), far looser than a kernel's rounding (the 7th significant digit). Bitwise
reproducibility on one machine is checked in tests/cli (the same seed, identical files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from session_results import latest_results

Fingerprint = dict[str, tuple[float, float]]  # tensor -> (sum, L2 norm)

RECORDED: list[tuple[str, Fingerprint]] = [
    (
        "--dataset digits --clients 10 --rounds 3 --partition dirichlet:0.5 --seed 0",
        {
            "hidden1.bias": (0.337664, 0.803101),
            "hidden1.weight": (-2.619039, 6.5724),
            "hidden2.bias": (0.739171, 0.43197),
            "hidden2.weight": (24.967411, 4.736217),
            "out.bias": (-0.34916, 0.245636),
            "out.weight": (1.135725, 1.980955),
        },
    ),
    (
        "--dataset digits --model logreg-np --clients 20 --rounds 3 --seed 1",
        {"bias": (0.0, 0.006632), "weight": (-0.477559, 0.98386)},
    ),
    (
        "--dataset iris --model logreg --clients 3 --rounds 2 --epochs 5",
        {"linear.bias": (-1.014927, 0.641809), "linear.weight": (-0.348429, 1.773672)},
    ),
    (
        "--dataset mnist5k --model cnn --clients 3 --rounds 1 --seed 2",
        {
            "conv1.bias": (-0.406786, 0.652962),
            "conv1.weight": (-2.374853, 2.379815),
            "conv2.bias": (-0.693943, 0.273523),
            "conv2.weight": (-45.652143, 3.932252),
            "hidden.bias": (0.737497, 0.210159),
            "hidden.weight": (-91.21806, 6.476584),
            "out.bias": (-0.296877, 0.410955),
            "out.weight": (1.532872, 3.445058),
        },
    ),
]


def fingerprint(model: Path) -> Fingerprint:
    wide = {n: t.astype(np.float64) for n, t in load_file(model).items()}
    return {n: (float(t.sum()), float(np.linalg.norm(t))) for n, t in wide.items()}


@pytest.mark.parametrize(("args", "recorded"), RECORDED)
def test_the_builtin_app_gives_the_recorded_model(args: str, recorded: Fingerprint, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", *args.split(), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    got = fingerprint(latest_results(tmp_path) / "model.safetensors")
    assert got.keys() == recorded.keys()
    for name, (total, norm) in recorded.items():
        # abs: a sum near zero (a bias that starts at zeros) has no relative scale of its own.
        assert got[name][0] == pytest.approx(total, rel=1e-4, abs=1e-5), name
        assert got[name][1] == pytest.approx(norm, rel=1e-4, abs=1e-5), name


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
