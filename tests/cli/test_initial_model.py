"""``--initial-model`` and a session file's ``initial_model``: a session starts from weights
trained before, checked against the app's model with the first mismatch named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhive.cli.initial_model import load_initial_model
from fedhive.cli.session_file import load_session_file
from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import ConfigError

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
APP = Path(__file__).parents[1] / "linear_app.py"


def simulate(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["simulate", "--app", f"{APP}:app", "--clients", "3", "--rounds", "2", "--lr", "0.2", "--out", str(out)]
    return subprocess.run([*FEDHIVE, *args, "--json", *extra], capture_output=True, text=True, timeout=120)


def test_a_session_goes_on_from_an_earlier_sessions_model(tmp_path: Path) -> None:
    first = simulate(tmp_path / "a")
    assert first.returncode == 0, first.stderr
    earlier = json.loads(first.stdout.splitlines()[-1])
    before = earlier["metrics"]["mse"]
    again = simulate(tmp_path / "b", "--initial-model", earlier["model"])
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["initial_model"].endswith("model.safetensors")
    # Two more rounds from where the first session ended: better than it got in its two.
    assert summary["metrics"]["mse"] < before


def test_a_model_of_the_wrong_shape_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(codec.encode(Params({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)})))
    proc = simulate(tmp_path / "run", "--initial-model", str(wrong))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: initial model {wrong} tensor 'w' has shape (3,), expected (5,) (the app's model)"
    ), proc.stderr


def test_unreadable_sources_are_one_line(tmp_path: Path) -> None:
    spec = Params({"w": np.zeros(5, np.float32)}).spec
    with pytest.raises(ConfigError, match="does not exist"):
        load_initial_model(str(tmp_path / "nope.safetensors"), spec)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        load_initial_model(str(tmp_path / "junk.safetensors"), spec)
    with pytest.raises(ConfigError, match="no credentials"):
        load_initial_model("s3://user:pass@bucket/key", spec)


def test_a_session_file_names_its_initial_model(tmp_path: Path) -> None:
    weights = tmp_path / "seed.safetensors"
    weights.write_bytes(codec.encode(Params({"w": np.ones(5, np.float32), "b": np.zeros(1, np.float32)})))
    config = tmp_path / "session.toml"
    config.write_text(f'app = "{APP}:app"\nrounds = 2\ninitial_model = "seed.safetensors"\n')
    session = load_session_file(config)
    assert session.initial_params is not None and session.initial_params["w"].tolist() == [1.0] * 5
