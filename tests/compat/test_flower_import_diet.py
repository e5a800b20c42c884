"""What ``fedhive simulate --flower-app`` imports for the scikit-learn app: what the app imports
itself, fedhive's simulation, and no more. torch (the PyTorch apps' library), MLflow and its
database layer (only with ``--mlflow``), the platform's web server, the broker client and Flower's
simulation engine each cost a short run seconds and tens of MiB (docs/flower.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (docs/flower.md)")

APPS = Path(__file__).parent / "apps"
NOT_NEEDED = {"torch", "mlflow", "sqlalchemy", "alembic", "fastapi", "uvicorn", "aio_pika", "ray", "flwr.simulation"}
# The CLI run as the ``fedhive`` script runs it; at exit (its atexit handlers run, fast exit or
# not) it prints the names of the packages and subpackages it imported.
RUN = """
import atexit, json, runpy, sys
def imported():
    names = {m.split(".")[0] for m in sys.modules} | {".".join(m.split(".")[:2]) for m in sys.modules}
    print("IMPORTED " + json.dumps(sorted(names)), file=sys.stderr)
atexit.register(imported)
sys.argv = ["fedhive", *sys.argv[1:]]
runpy.run_module("fedhive.cli.main", run_name="__main__")
"""


def test_the_sklearn_app_run_imports_no_torch_mlflow_or_platform(tmp_path: Path) -> None:
    app = tmp_path / "sklearn_legacy"
    shutil.copytree(APPS / "sklearn_legacy", app, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["simulate", "--flower-app", str(app), "--clients", "3", "--out", str(tmp_path / "out"), "--json"]
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rounds"] == 3
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED "))
    imported = set(json.loads(line.removeprefix("IMPORTED ")))
    assert {"sklearn", "flwr", "fedhive.compat"} <= imported  # the app and the adapter did load
    assert imported & NOT_NEEDED == set()
