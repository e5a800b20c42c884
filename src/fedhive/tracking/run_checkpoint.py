"""Checkpoints of a ``fedhive coordinator`` session in its run directory, and resuming from them.

After every round an observer writes ``checkpoint.safetensors``: the global parameters
(``params/NAME``) and the strategy's server state (``strategy/NAME``) as tensors, and in the
safetensors metadata the session id, the last completed round, the global metrics of every round
so far, a fingerprint of what must not change on resume (model, strategy, seed, data, tensor
shapes) and each sender's clock lead (``SenderClocks``: replay protection across the restart).
One file, written to a temporary name, flushed to disk and renamed: a coordinator killed at any
instant leaves the previous checkpoint or the new one, never half of one. When the session
completes (and ``model.safetensors`` is written) the checkpoint is removed.

Rows of ``rounds.csv`` are written before the checkpoint of their round (the run directory is
attached to the bus first), so after a crash the files hold every checkpointed round, and rows of
a round that was not checkpointed are dropped on resume (``RunDirectory(resume_after=N)``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.core import codec
from fedhive.core.params import Params, ParamSpec
from fedhive.core.signing import SenderClocks
from fedhive.errors import ConfigError, FedhiveError
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.resume import Checkpoint
from fedhive.runtime.session_plan import SessionFile
from fedhive.strategies.base import Strategy

log = logging.getLogger("fedhive.checkpoint")

CHECKPOINT_FILE = "checkpoint.safetensors"
_PARAMS, _STATE = "params/", "strategy/"
_MAX_BYTES = 1 << 36


def fingerprint(session: SessionFile, spec: ParamSpec) -> dict[str, Any]:
    """What a resumed session must share with the checkpointed one (rounds and timeouts may change)."""
    c = session.config.model_dump(mode="json")
    same = {k: c[k] for k in ("model", "strategy", "seed", "compression")}
    identity = {**same, "data": session.data_settings, "app": session.config.app_digest, "tensors": spec.to_json()}
    return dict(json.loads(json.dumps(identity)))  # as stored: tuples become lists on both sides


class RunCheckpoint:
    """The observer that writes a checkpoint after every round (in a worker thread; the bus waits,
    so the next checkpoint never overtakes this one) and removes it when the session completes."""

    def __init__(self, root: str | Path, session_id: str, strategy: Strategy, identity: dict[str, Any]) -> None:
        self.path = Path(root) / CHECKPOINT_FILE
        self.session_id = session_id
        self.strategy = strategy
        self.identity = identity
        self.history: list[dict[str, float]] = []
        # Hand these to the coordinator's verifier (``coordinator_codec``): what it measures is
        # checkpointed with every round, and a resumed run starts from what was checkpointed.
        self.clocks = SenderClocks()

    def resume_from(self, checkpoint: Checkpoint | None) -> RunCheckpoint:
        self.history = list(checkpoint.history) if checkpoint else []
        self.clocks = SenderClocks(checkpoint.sender_clocks if checkpoint else None)
        return self

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.SessionCompleted, self._on_completed)

    async def _on_round(self, e: ev.RoundCompleted) -> None:
        self.history.append(dict(e.metrics))
        state = self.strategy.state()  # now, before the next round's aggregate changes it
        tensors: dict[str, np.ndarray] = {_PARAMS + n: a for n, a in e.params.items()}
        tensors.update({_STATE + n: a for n, a in state.items()})
        meta = {
            "session_id": self.session_id,
            "round": str(e.round),
            "history": json.dumps(self.history),
            "identity": json.dumps(self.identity, sort_keys=True),
            "sender_clocks": json.dumps(self.clocks.snapshot(), sort_keys=True),
        }
        await asyncio.to_thread(_write_atomically, self.path, tensors, meta)

    def _on_completed(self, _: ev.SessionCompleted) -> None:
        self.path.unlink(missing_ok=True)  # model.safetensors holds the result now


def _write_atomically(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        for part in codec.encode_parts(tensors, meta):
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_run_checkpoint(
    root: str | Path, session: SessionFile, spec: ParamSpec, *, session_named: bool
) -> tuple[str, Checkpoint] | None:
    """(session id, checkpoint) to resume from ``root``, or None to start afresh.

    A checkpoint is resumed when it belongs to the session file's session, or when the file names
    no session id (the same command again resumes what it started). A checkpoint of another named
    session is left for a fresh start (logged); one whose model, strategy, seed or data differ
    from the file's is a ``ConfigError``, not silently mixed into another session.
    """
    path = Path(root) / CHECKPOINT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        tensors = codec.decode(data, max_bytes=_MAX_BYTES, what="checkpoint")
        _, meta = codec.read_header(data, max_bytes=_MAX_BYTES)
        sid, rnd = meta["session_id"], int(meta["round"])
        history = tuple(dict(h) for h in json.loads(meta["history"]))
        identity = json.loads(meta["identity"])
        clocks = {str(k): float(v) for k, v in json.loads(meta.get("sender_clocks", "{}")).items()}
    except (FedhiveError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable fedhive checkpoint ({exc}); remove it or pass --fresh") from None
    if session_named and sid != session.config.session_id:
        log.warning(
            "%s holds a checkpoint of session %s, not %s: starting session %s afresh",
            path,
            sid,
            session.config.session_id,
            session.config.session_id,
        )
        return None
    expected = fingerprint(session, spec)
    changed = sorted(k for k in expected if identity.get(k) != expected[k])
    if changed:
        raise ConfigError(
            f"{path} holds round {rnd} of session {sid} with other settings ({', '.join(changed)} differ from "
            f"{session.path}): use the same session file to resume, another --out, or --fresh to start over"
        )
    params = Params({n[len(_PARAMS) :]: np.array(a) for n, a in tensors.items() if n.startswith(_PARAMS)})
    state = {n[len(_STATE) :]: np.array(a) for n, a in tensors.items() if n.startswith(_STATE)}
    return sid, Checkpoint(rnd, params, state, history, clocks)
