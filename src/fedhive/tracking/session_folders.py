"""One folder per session under ``--out``: ``<out>/<session_id>/``; nothing is ever overwritten.

``simulate`` and ``coordinator`` write a session's results (config.json, rounds.csv, clients.csv,
model.safetensors, best.safetensors, the coordinator's checkpoint) into a folder named after its
session id. A folder is only ever created afresh (``mkdir`` without ``exist_ok``, atomic even when
two processes race for the name): when the name is taken, by an earlier run of a session file that
fixes its ``session_id``, the new session gets the first free ``<session_id>-2``, ``-3``, ...
A coordinator that resumes a checkpoint reopens the folder that holds it instead.

``<out>/latest`` is a one-line text file naming the folder of the session started last (a plain
file, not a symlink: it works on every file system and in every archive), so scripts find the
newest results with ``cat runs/x/latest``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from fedhive.errors import ConfigError

log = logging.getLogger("fedhive.results")

LATEST_FILE = "latest"
# The names a session folder may have: no separators, no "." or "..", nothing a shell mangles.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_SUFFIX = 10_000


def check_folder_name(session_id: str) -> str:
    """``session_id`` if it can name a folder; else one ``ConfigError`` line."""
    if not _SAFE_ID.match(session_id):
        raise ConfigError(
            f"session_id {session_id[:64]!r} cannot name a results folder: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return session_id


def new_session_folder(out: str | Path, session_id: str) -> Path:
    """A folder of its own for a new session: ``<out>/<session_id>``, or ``<session_id>-N`` with
    the first free N when that name is taken. ``latest`` names it afterwards."""
    out = Path(out)
    name = check_folder_name(session_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create results folder {out}: {exc.strerror}") from None
    for n in range(1, _MAX_SUFFIX):
        folder = out / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create results folder {folder}: {exc.strerror}") from None
        mark_latest(out, folder)
        return folder
    raise ConfigError(f"{out} holds {_MAX_SUFFIX} folders of session {session_id}: use another --out")


def mark_latest(out: Path, folder: Path) -> None:
    """Point ``<out>/latest`` at ``folder`` (a temporary file and a rename: never half written).
    The pointer is a convenience: when it cannot be written (``latest`` is a folder of an older
    layout, say) the session goes on and says why."""
    tmp = out / f".{LATEST_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(folder.name + "\n", encoding="utf-8")
        os.replace(tmp, out / LATEST_FILE)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("cannot point %s at %s: %s", out / LATEST_FILE, folder.name, exc.strerror)


def latest_session_folder(out: str | Path) -> Path | None:
    """The folder of the session started last in ``out`` (None when there is none)."""
    out = Path(out)
    try:
        name = (out / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # no pointer (or the old layout's folder)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {out / LATEST_FILE}: {exc}") from None
    folder = out / name
    return folder if _SAFE_ID.match(name) and folder.is_dir() else None


def newest_folder_of(out: str | Path, session_id: str) -> Path | None:
    """The most recent folder of the session ``session_id`` in ``out``: ``<id>-N`` with the highest
    N, else ``<id>`` itself (None when the session has none yet)."""
    out, name = Path(out), check_folder_name(session_id)
    suffixed = re.compile(re.escape(name) + r"-([0-9]+)$")
    numbers = [int(m.group(1)) for p in _children(out) if (m := suffixed.match(p.name)) and p.is_dir()]
    if numbers:
        return out / f"{name}-{max(numbers)}"
    return out / name if (out / name).is_dir() else None


def _children(out: Path) -> list[Path]:
    try:
        return list(out.iterdir())
    except FileNotFoundError:
        return []
