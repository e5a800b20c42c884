"""``fedhive coordinator`` and the checkpoint in its session's folder, as a user meets them without
a broker: a session whose last round was checkpointed just before the crash, a session file that
no longer matches its checkpoint, ``--fresh``, and a second session of the same id, which gets a
folder of its own. (Resuming mid-session with live clients: tests/networked/test_coordinator_restart.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from fedhive.cli.session_file import load_session_file
from fedhive.core import codec
from fedhive.runtime import events as ev
from fedhive.runtime.networked import BrokerSettings, plan_coordinator
from fedhive.runtime.resume import strategy_for
from fedhive.tracking.run_checkpoint import CHECKPOINT_FILE, RunCheckpoint, fingerprint

NOBODY = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1
SESSION = 'session_id = "s1"\nrounds = 3\nmodel = "logreg-np"\nseed = 0\n[data]\ndataset = "digits"\n'


def coordinator(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["coordinator", "--broker", NOBODY, "--config", str(config), "--out", str(out), "--json", *extra]
    cmd = [sys.executable, "-m", "fedhive.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def checkpoint(config: Path, out: Path, rnd: int) -> Path:
    """What a coordinator killed right after checkpointing round ``rnd`` leaves in its session's
    folder under ``out``; returns that folder."""
    session = load_session_file(config)
    _, initial = plan_coordinator(session, BrokerSettings(NOBODY))
    strategy = strategy_for(session.config, None)
    folder = out / "s1"
    writer = RunCheckpoint(folder, "s1", strategy, fingerprint(session, initial.spec))
    folder.mkdir(parents=True)
    for r in range(1, rnd + 1):
        event = ev.RoundCompleted(r, initial, {"accuracy": 0.9, "loss": 0.3}, {}, 2, 2, 100, 0.1)
        asyncio.run(writer._on_round(event))
    return folder


def test_a_session_checkpointed_after_its_last_round_is_finished_without_a_broker(tmp_path: Path) -> None:
    config = tmp_path / "session.toml"
    config.write_text(SESSION)
    out = tmp_path / "run"
    folder = checkpoint(config, out, 3)
    done = coordinator(config, out)
    assert done.returncode == 0, done.stderr
    assert "session s1 completed its 3 rounds before it stopped" in done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["rounds"] == 3 and Path(summary["out"]) == folder  # the folder it resumed, no other
    assert codec.decode((folder / "model.safetensors").read_bytes(), max_bytes=1 << 20)["weight"].shape == (64, 10)
    assert not (folder / CHECKPOINT_FILE).exists()
    assert sorted(p.name for p in out.iterdir()) == ["s1"]

    # The same command again: a new session of the same id, in a folder of its own (goes on to
    # connect: no broker here); the finished one keeps its model.
    model = (folder / "model.safetensors").read_bytes()
    again = coordinator(config, out)
    assert again.returncode == 2 and "resuming" not in again.stderr, again.stderr
    assert (out / "latest").read_text().strip() == "s1-2" and (out / "s1-2" / "config.json").is_file()
    assert (folder / "model.safetensors").read_bytes() == model


def test_a_changed_session_file_is_refused_and_fresh_starts_over(tmp_path: Path) -> None:
    config = tmp_path / "session.toml"
    config.write_text(SESSION)
    out = tmp_path / "run"
    folder = checkpoint(config, out, 1)
    config.write_text(SESSION.replace("seed = 0", "seed = 1"))
    refused = coordinator(config, out)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "round 1 of session s1 with other settings (seed differ" in lines[0], lines
    assert (folder / CHECKPOINT_FILE).exists()  # nothing lost

    fresh = coordinator(config, out, "--fresh")  # goes on to connect: no broker here
    assert fresh.returncode == 2 and "resuming" not in fresh.stderr, fresh.stderr
    # --fresh starts over in a new folder: the interrupted session's folder is left as it was
    assert (folder / CHECKPOINT_FILE).exists() and (out / "s1-2" / "config.json").is_file()
    assert (out / "latest").read_text().strip() == "s1-2"
