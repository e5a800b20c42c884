"""Loading an app by reference, its code digest, and the one-line errors of ``fedhive simulate
--app`` for the mistakes users make."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fedhive
from fedhive.app.loader import load_app
from session_results import latest_results

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
APP = """
import numpy as np
import fedhive

app = fedhive.ClientApp()

@app.init
def init(weights, config, ctx):
    return {"w": np.zeros(3, np.float32)}

@app.train
def train(weights, config, ctx):
    return fedhive.TrainResult({"w": weights["w"] + np.float32(config["step"])}, 10, {"step": config["step"]})
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_file_a_module_and_a_project_folder_load(tmp_path: Path) -> None:
    file_app = load_app(f"{write(tmp_path / 'one' / 'my_app.py', APP)}:app")
    assert file_app.name == "my_app" and len(file_app.digest) == 64
    project = tmp_path / "proj"
    write(project / "proj_pkg" / "__init__.py", "")
    write(project / "proj_pkg" / "client.py", APP)
    write(
        project / "pyproject.toml",
        '[project]\nname = "proj"\n[tool.fedhive]\napp = "proj_pkg.client:app"\n[tool.fedhive.config]\nstep = 0.5\n',
    )
    folder_app = load_app(str(project))
    assert folder_app.name == "proj" and folder_app.run_config == {"step": 0.5}
    assert load_app("builtin").name == "builtin"


def test_the_digest_follows_the_code(tmp_path: Path) -> None:
    first = load_app(f"{write(tmp_path / 'a' / 'app_v1.py', APP)}:app")
    again = load_app(f"{write(tmp_path / 'b' / 'app_v1.py', APP)}:app")
    changed = load_app(f"{write(tmp_path / 'c' / 'app_v1.py', APP + '# a change')}:app")
    assert first.digest == again.digest != changed.digest


def test_a_class_becomes_an_app(tmp_path: Path) -> None:
    source = APP.replace("app = fedhive.ClientApp()", "class Client:\n    pass\napp = fedhive.ClientApp()")
    source += "\nclass Site:\n    def init(self, w, c, x):\n        return init(w, c, x)\n"
    source += "    def train(self, w, c, x):\n        return train(w, c, x)\n"
    loaded = load_app(f"{write(tmp_path / 'cls_app.py', source)}:Site")
    assert isinstance(loaded.app, fedhive.ClientApp) and loaded.app.has("train") and not loaded.app.has("evaluate")


@pytest.mark.parametrize(
    ("source", "ref_suffix", "message"),
    [
        ("import numpy\nraise ValueError('bad setting in my module')\n", ":app", "raised ValueError: bad setting"),
        (APP, ":nope", "has no attribute 'nope'"),
        ("app = 3\n", ":app", "app is a int, not a fedhive.ClientApp"),
        ("import fedhive\napp = fedhive.ClientApp()\n", ":app", "needs @app.init and @app.train"),
    ],
)
def test_load_errors_are_one_line(tmp_path: Path, source: str, ref_suffix: str, message: str) -> None:
    path = write(tmp_path / "bad_app.py", source)
    with pytest.raises(fedhive.AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_app(f"{path}{ref_suffix}")


def test_unknown_module_and_folder_without_table(tmp_path: Path) -> None:
    with pytest.raises(fedhive.AppError, match="no module named 'no_such_pkg'"):
        load_app("no_such_pkg.client:app")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(fedhive.AppError, match=r"\[tool.fedhive\] needs app"):
        load_app(str(tmp_path))


def fedhive_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDHIVE, *args], capture_output=True, text=True, timeout=120)


def test_simulate_runs_a_user_app_with_its_run_config(tmp_path: Path) -> None:
    path = write(tmp_path / "step_app.py", APP)
    proc = fedhive_cli(
        "simulate", "--app", f"{path}:app", "--clients", "3", "--rounds", "2", "--run-config", "step=0.25",
        "--out", str(tmp_path / "run"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["app"] == "step_app" and summary["rounds"] == 2
    with (latest_results(tmp_path / "run") / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["train_step"] for r in rows] == ["0.250000", "0.250000"] and rows[1]["accuracy"] == ""


@pytest.mark.parametrize(
    ("app_ref", "message"),
    [
        ("no_such_pkg.client:app", "error: app 'no_such_pkg.client:app': no module named 'no_such_pkg'"),
        ("fedhive.app.loader:nothing", "has no attribute 'nothing'"),
    ],
)
def test_simulate_with_a_broken_app_exits_2_with_one_line(app_ref: str, message: str) -> None:
    proc = fedhive_cli("simulate", "--app", app_ref, "--clients", "2", "--rounds", "1")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
