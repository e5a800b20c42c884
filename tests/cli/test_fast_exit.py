"""``fedhive simulate`` ends its process without the interpreter's teardown (cli/fast_exit.py),
yet as a normal exit would for the user: atexit handlers run, stdout and stderr are flushed, the
exit status is kept; with a thread still running, or when a test calls ``main()`` in its own
process, it exits normally."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedhive.cli.main import main

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
# An object whose __del__ runs only in the interpreter's teardown (when its module is cleared).
MARKER = """
import sys
class Marker:
    def __del__(self):
        sys.stderr.write("teardown ran\\n")
marker = Marker()
"""
PLAIN_APP = """
import numpy as np
import fedhive

app = fedhive.ClientApp()

@app.init
def init(weights, config, ctx):
    return {"w": np.zeros(3, np.float32)}

@app.train
def train(weights, config, ctx):
    return fedhive.TrainResult({"w": weights["w"] + np.float32(1)}, 10, {})
"""
APP = MARKER + PLAIN_APP


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_exit_now_runs_atexit_and_flushes_but_skips_the_teardown() -> None:
    proc = python(
        MARKER
        + "import atexit\n"
        + "from fedhive.cli.fast_exit import exit_now\n"
        + "atexit.register(lambda: print('atexit ran', end=''))\n"
        + "print('result ', end='')\n"  # still in stdout's buffer: a pipe is block-buffered
        + "exit_now(3)\n"
    )
    assert proc.returncode == 3
    assert proc.stdout == "result atexit ran"
    assert "teardown ran" not in proc.stderr


def test_exit_now_with_a_thread_still_running_exits_normally() -> None:
    # The thread waits until exit_now has decided (its fallback raises SystemExit through the
    # finally); a normal exit then waits for the thread and tears the interpreter down.
    proc = python(
        MARKER
        + "import threading\n"
        + "from fedhive.cli.fast_exit import exit_now\n"
        + "go = threading.Event()\n"
        + "worker = threading.Thread(target=lambda: (go.wait(30), print('thread finished')))\n"
        + "worker.start()\n"
        + "try:\n    exit_now(4)\nfinally:\n    go.set()\n"
    )
    assert proc.returncode == 4
    assert proc.stdout == "thread finished\n"
    assert "teardown ran" in proc.stderr


def test_simulate_prints_its_results_and_skips_the_teardown(tmp_path: Path) -> None:
    app = tmp_path / "marked_app.py"
    app.write_text(APP)
    cmd = [*FEDHIVE, "simulate", "--app", f"{app}:app", "--clients", "2", "--rounds", "2", "--out", str(tmp_path)]
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rounds"] == 2
    assert "teardown ran" not in proc.stderr
    # A mistake still ends in one line and exit status 2.
    bad = subprocess.run([*cmd, "--rounds", "x"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_main_called_in_a_process_of_its_own_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def ended(status: int) -> None:
        raise AssertionError(f"main() would have ended the test's process (os._exit({status}))")

    monkeypatch.setattr("os._exit", ended)
    app = tmp_path / "kept_app.py"
    app.write_text(PLAIN_APP)
    args = ["simulate", "--app", f"{app}:app", "--clients", "2", "--rounds", "1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
