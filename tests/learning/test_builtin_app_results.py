"""The model zoo, now an app on the public API, gives the same bits as before it was one: these
digests were recorded from ``fedhive simulate`` before the rewrite (same commands, same seeds)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

RECORDED = [
    (
        "--dataset digits --clients 10 --rounds 3 --partition dirichlet:0.5 --seed 0",
        "c6ad85aabd7603ebd5dc467290d4ac4fb7a946319c35ab3b771e8d4f726f27a4",
    ),
    (
        "--dataset digits --model logreg-np --clients 20 --rounds 3 --seed 1",
        "534b04823cef484d31b77d2f3423c61c4eef80e6a1f4aa0d9cc09ecbbc2fdba9",
    ),
    (
        "--dataset iris --model logreg --clients 3 --rounds 2 --epochs 5",
        "b7a7e7f6fc3551166846bceb7d2b962b4caaeecb36517ce3d3d476f254140686",
    ),
    (
        "--dataset mnist5k --model cnn --clients 3 --rounds 1 --seed 2",
        "efd667114112ae7f251a87bd87d0e81d03a57fc94b7e93425474a0878013a6cc",
    ),
]


@pytest.mark.parametrize(("args", "digest"), RECORDED)
def test_the_builtin_app_gives_the_recorded_model(args: str, digest: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", *args.split(), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest() == digest


def test_momentum_is_passed_on(tmp_path: Path) -> None:
    """``simulate --momentum`` was once accepted and ignored: two values, two models."""
    models = []
    for momentum in ("0.0", "0.5"):
        out = tmp_path / momentum
        cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", "--dataset", "iris", "--model", "logreg-np",
               "--clients", "2", "--rounds", "1", "--momentum", momentum, "--out", str(out)]  # fmt: skip
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        assert f'"momentum": {momentum}' in (out / "config.json").read_text()
        models.append((out / "model.safetensors").read_bytes())
    assert models[0] != models[1]


def test_federated_evaluation_on_the_clients_shares_equals_the_central_figure(tmp_path: Path) -> None:
    """Each client evaluates on its share of the held-out rows (partitioned like its training
    rows): the example-weighted mean over the clients is the held-out accuracy itself."""
    figures = {}
    for mode in ("central", "clients"):
        args = "--dataset digits --clients 10 --rounds 4 --partition dirichlet:0.5 --seed 0 --json".split()
        cmd = [sys.executable, "-m", "fedhive.cli.main", "simulate", *args, "--evaluate", mode]
        proc = subprocess.run([*cmd, "--out", str(tmp_path / mode)], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        figures[mode] = json.loads(proc.stdout.splitlines()[-1])["accuracy"]
    assert figures["clients"] == pytest.approx(figures["central"], abs=1e-9), figures
