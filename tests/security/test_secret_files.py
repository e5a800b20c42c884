"""Secrets left in files others can read: ``fedhive clients add --out-file`` writes the ids and
secrets readable by their owner only (mode 0600) whatever the umask, never replaces a file unless
told, and ``--json > file`` into a world-readable file is called out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test starts fedhive as a process

FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
LOOSE_UMASK = 0o022  # the usual default: a shell redirect makes files of mode 0644


def fedhive(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDHIVE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, umask=LOOSE_UMASK, check=False
    )


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_out_file_is_0600_and_holds_what_the_store_verifies(tmp_path: Path) -> None:
    done = fedhive(tmp_path, "clients", "add", "demo", "--count", "3", "--out-file", "demo.jsonl")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "demo.jsonl"
    assert mode(out) == 0o600 and mode(tmp_path / "fedhive-clients.json") == 0o600
    records = [json.loads(line) for line in out.read_text().splitlines()]
    store = json.loads((tmp_path / "fedhive-clients.json").read_text())["clients"]
    assert {r["client_id"]: r["secret"] for r in records} == {cid: e["secret"] for cid, e in store.items()}
    for record in records:  # nothing secret on the terminal
        assert record["secret"] not in done.stdout + done.stderr
    assert "mode 0600" in done.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".demo.jsonl")]  # no temporary left


def test_an_existing_file_is_refused_before_any_client_is_made(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    out.write_text("someone else's file\n")
    refused = fedhive(tmp_path, "clients", "add", "demo", "--out-file", "demo.jsonl")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: --out-file: demo.jsonl exists; remove it or add --overwrite"
    assert out.read_text() == "someone else's file\n" and not (tmp_path / "fedhive-clients.json").exists()
    out.chmod(0o644)
    replaced = fedhive(tmp_path, "clients", "add", "demo", "--out-file", "demo.jsonl", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert mode(out) == 0o600 and json.loads(out.read_text())["name"] == "demo"


def test_json_redirected_into_a_readable_file_is_called_out(tmp_path: Path) -> None:
    redirected = tmp_path / "demo.jsonl"
    redirected.touch()
    redirected.chmod(0o644)  # what a shell redirect makes with the usual umask
    with redirected.open("w") as stdout:
        done = subprocess.run(
            [*FEDHIVE, "clients", "add", "demo", "--json"],
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            umask=LOOSE_UMASK,
            check=False,
        )
    assert done.returncode == 0
    assert mode(redirected) == 0o644 and "secret" in redirected.read_text()  # the reason for --out-file
    assert "use --out-file" in done.stderr
