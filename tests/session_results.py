"""Where a ``simulate`` or ``coordinator`` run left its results: the session's own folder under
``--out``, which ``<out>/latest`` names (src/fedhive/tracking/session_folders.py)."""

from __future__ import annotations

from pathlib import Path


def latest_results(out: Path) -> Path:
    """The folder of the session started last in ``out``; fails the test if there is none."""
    pointer = out / "latest"
    assert pointer.is_file(), f"{out} has no 'latest' file: {sorted(p.name for p in out.iterdir())}"
    folder = out / pointer.read_text(encoding="utf-8").strip()
    assert folder.is_dir(), f"{pointer} names {folder.name}, which is not a folder"
    return folder
