"""Each session writes its results to a folder of its own under ``--out``, named by its session
id, and nothing is ever overwritten; ``<out>/latest`` names the session started last."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fedhive.errors import ConfigError
from fedhive.tracking.session_folders import latest_session_folder, new_session_folder, newest_folder_of
from session_results import latest_results

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
APP = Path(__file__).parents[1] / "linear_app.py"
RESULTS = {"config.json", "rounds.csv", "clients.csv", "model.safetensors"}


def simulate(out: Path) -> dict[str, object]:
    args = ["simulate", "--app", f"{APP}:app", "--clients", "3", "--rounds", "2", "--out", str(out), "--json"]
    proc = subprocess.run([*FEDHIVE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_two_sessions_in_one_out_keep_both(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    first = simulate(out)
    first_folder = Path(str(first["out"]))
    kept = {name: (first_folder / name).read_bytes() for name in RESULTS}
    second = simulate(out)
    second_folder = Path(str(second["out"]))

    assert first["session_id"] != second["session_id"]
    assert first_folder == out / str(first["session_id"]) and second_folder == out / str(second["session_id"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["latest", first_folder.name, second_folder.name])
    assert {p.name for p in second_folder.iterdir()} >= RESULTS
    assert {name: (first_folder / name).read_bytes() for name in RESULTS} == kept  # untouched
    assert latest_results(out) == second_folder
    assert second["model"] == str(second_folder / "model.safetensors")


def test_a_taken_name_gets_the_next_free_suffix(tmp_path: Path) -> None:
    made = [new_session_folder(tmp_path, "demo") for _ in range(3)]
    assert [p.name for p in made] == ["demo", "demo-2", "demo-3"]
    assert latest_session_folder(tmp_path) == made[-1]
    assert newest_folder_of(tmp_path, "demo") == made[-1]
    assert newest_folder_of(tmp_path, "other") is None
    (made[0] / "model.safetensors").write_bytes(b"first")
    new_session_folder(tmp_path, "demo")
    assert (made[0] / "model.safetensors").read_bytes() == b"first"


@pytest.mark.parametrize("session_id", ["../escape", "a/b", ".hidden", "x" * 65, "tab\there"])
def test_a_session_id_that_cannot_name_a_folder_is_one_line(tmp_path: Path, session_id: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a results folder"):
        new_session_folder(tmp_path, session_id)
    assert list(tmp_path.iterdir()) == []


def test_a_latest_folder_of_the_old_layout_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "rounds.csv").write_text("round\n1\n")
    with caplog.at_level(logging.WARNING, logger="fedhive.results"):
        folder = new_session_folder(tmp_path, "s")
    assert folder.is_dir() and (tmp_path / "latest" / "rounds.csv").read_text() == "round\n1\n"
    assert "cannot point" in caplog.text
    assert latest_session_folder(tmp_path) is None
