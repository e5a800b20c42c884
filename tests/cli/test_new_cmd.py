"""``fedhive new``: each template gives a project that simulates, passes its own test and lints clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fedhive.cli.new_cmd import TEMPLATES, render

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")

# Digits, 3 IID clients, 3 rounds: each template's measured accuracy is 0.90 or more.
ACCURACY_FLOOR = {"numpy": 0.85, "torch": 0.85, "sklearn": 0.85}


def run(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def fedhive(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run(*FEDHIVE, *args, cwd=cwd, timeout=timeout)


def simulate(project: Path, out: Path) -> dict[str, object]:
    proc = fedhive("simulate", "--app", str(project), "--clients", "3", "--rounds", "3", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_template_makes_a_project_that_federates_and_passes_its_own_test(tmp_path: Path, template: str) -> None:
    started = time.perf_counter()
    proc = fedhive("new", "my-app", "--template", template, "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "my-app"
    assert f"fedhive simulate --app {project}" in proc.stdout
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "my_app/__init__.py",
        "my_app/client_app.py",
        "my_app/task.py",
        "pyproject.toml",
        "session.toml",
        "tests/test_app.py",
    ]
    for f in files:
        text = (project / f).read_text()
        assert "fedhive-template" not in text and "fedhive_template" not in text, f
        assert f in proc.stdout
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "my-app"
    assert meta["tool"]["fedhive"]["app"] == "my_app.client_app:app"
    assert meta["tool"]["fedhive"]["config"]["local_epochs"] >= 1
    assert ("torch" in " ".join(meta["project"]["dependencies"])) == (template == "torch")
    if template == "numpy":
        assert "torch" not in (project / "my_app/task.py").read_text() + (project / "my_app/client_app.py").read_text()

    summary = simulate(project, tmp_path / "run")
    wall = time.perf_counter() - started
    print(f"\n{template}: fedhive new + fedhive simulate (3 clients, 3 rounds): {wall:.1f} s, summary {summary}")
    assert summary["rounds"] == 3 and summary["app"] == "my-app"
    assert ACCURACY_FLOOR[template] < float(summary["accuracy"]) <= 1.0  # type: ignore[arg-type]
    assert float(summary["loss"]) > 0  # type: ignore[arg-type]
    if template == "numpy":
        assert wall < 60, f"fedhive new + simulate took {wall:.1f} s"

    # The project's own test, run as its author would: from the project folder.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    own = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=project,
        env=env,
    )
    assert own.returncode == 0, own.stdout + own.stderr
    assert "1 passed" in own.stdout


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_generated_code_is_ruff_clean(tmp_path: Path, template: str) -> None:
    proc = fedhive("new", "lint-me", "--template", template, "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "lint-me"
    assert RUFF is not None
    for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        lint = run(RUFF, *args, cwd=project, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_placeholders_are_replaced_in_one_pass() -> None:
    # A name that looks like a placeholder is written as it is, never substituted again.
    files = render("numpy", "fedhive-template-name", "fedhive_template_name")
    assert 'name = "fedhive-template-name"' in files["pyproject.toml"]
    assert "fedhive_template_name/client_app.py" in files


def test_into_an_existing_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = fedhive("new", "empty", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "empty/empty/client_app.py").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging folder left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["taken"], "already exists and is not empty"),
        (["my app"], "is not a valid project name"),
        (["1app"], "is not a valid project name"),
        (["../escape"], "is not a valid project name"),
        (["class"], "keyword"),
        (["json"], "would shadow"),
        (["numpy"], "would shadow"),
        (["ok-name", "--template", "tensorflow"], "unknown template 'tensorflow'"),
    ],
)
def test_refusals_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/keep.txt").write_text("mine")
    proc = fedhive("new", *args, "--dir", str(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written
    assert (tmp_path / "taken/keep.txt").read_text() == "mine"
