"""Checkpoints of ``fedhive coordinator`` in its run directory: what is written after a round,
what a restart resumes (and what it refuses), and the run directory's rows on resume."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhive.cli.session_file import parse_session
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.runtime import events as ev
from fedhive.runtime.resume import coordinator_kwargs, strategy_for
from fedhive.runtime.session_plan import SessionFile
from fedhive.tracking.run_checkpoint import CHECKPOINT_FILE, RunCheckpoint, fingerprint, load_run_checkpoint
from fedhive.tracking.run_directory import RunDirectory

PARAMS = Params({"weight": np.arange(640, dtype=np.float32).reshape(64, 10), "bias": np.ones(10, np.float32)})


def session(tmp_path: Path, **settings: Any) -> SessionFile:
    raw = {"session_id": "s1", "rounds": 5, "model": "logreg-np", "strategy": "fedadam", **settings}
    return parse_session({**raw, "data": {"dataset": "digits"}}, tmp_path / "session.toml")


class Handlers:
    """Collects what an observer subscribes, to call it as the bus would."""

    def __init__(self) -> None:
        self.by_kind: dict[type, Any] = {}

    def on(self, kind: type, handler: Any) -> None:
        self.by_kind[kind] = handler


def round_completed(rnd: int, params: Params = PARAMS) -> ev.RoundCompleted:
    return ev.RoundCompleted(rnd, params, {"accuracy": 0.5 + rnd / 100}, {}, 3, 3, 300, 0.1)


def checkpoint_rounds(tmp_path: Path, s: SessionFile, rounds: int) -> RunCheckpoint:
    """Rounds 1..``rounds`` completed, each checkpointed as the bus would (the handler awaited)."""
    strategy = strategy_for(s.config, None)
    strategy.load_state({"m/weight": np.full((64, 10), 0.25), "v/weight": np.full((64, 10), 0.5), "step": np.array(2)})
    writer = RunCheckpoint(tmp_path, s.config.session_id, strategy, fingerprint(s, PARAMS.spec))
    bus = Handlers()
    writer.attach(bus)  # type: ignore[arg-type]
    for rnd in range(1, rounds + 1):
        asyncio.run(bus.by_kind[ev.RoundCompleted](round_completed(rnd)))
    return writer


def test_the_last_round_its_model_strategy_state_and_history_come_back(tmp_path: Path) -> None:
    s = session(tmp_path)
    writer = checkpoint_rounds(tmp_path, s, 3)
    found = load_run_checkpoint(tmp_path, s, PARAMS.spec, session_named=True)
    assert found is not None
    sid, ckpt = found
    assert (sid, ckpt.round, ckpt.next_round) == ("s1", 3, 4)
    assert [h["accuracy"] for h in ckpt.history] == [0.51, 0.52, 0.53]
    assert list(ckpt.params) == ["weight", "bias"] and np.array_equal(ckpt.params["weight"], PARAMS["weight"])
    kwargs = coordinator_kwargs(s.config, ckpt)
    assert kwargs["start_round"] == 4 and len(kwargs["history"]) == 3
    restored = kwargs["strategy"].state()
    for name, value in writer.strategy.state().items():
        assert np.array_equal(restored[name], value), name
    assert not list(tmp_path.glob("*.tmp"))  # written to a temporary name, then renamed


def test_a_completed_session_leaves_no_checkpoint(tmp_path: Path) -> None:
    s = session(tmp_path)
    writer = checkpoint_rounds(tmp_path, s, 1)
    bus = Handlers()
    writer.attach(bus)  # type: ignore[arg-type]
    bus.by_kind[ev.SessionCompleted](ev.SessionCompleted("s1", 5, PARAMS, {}))
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    assert load_run_checkpoint(tmp_path, s, PARAMS.spec, session_named=True) is None


def test_whose_checkpoint_is_resumed(tmp_path: Path) -> None:
    checkpoint_rounds(tmp_path, session(tmp_path), 2)
    # another named session starts afresh; a file that names none takes the checkpoint's session
    assert load_run_checkpoint(tmp_path, session(tmp_path, session_id="s2"), PARAMS.spec, session_named=True) is None
    unnamed = session(tmp_path, session_id="random-1")
    found = load_run_checkpoint(tmp_path, unnamed, PARAMS.spec, session_named=False)
    assert found is not None and found[0] == "s1"
    # more rounds is fine: the session goes on longer
    assert load_run_checkpoint(tmp_path, session(tmp_path, rounds=9), PARAMS.spec, session_named=True) is not None


@pytest.mark.parametrize("change", [{"model": "logreg"}, {"strategy": "fedavg"}, {"seed": 3}])
def test_other_settings_are_refused_not_mixed(tmp_path: Path, change: dict[str, Any]) -> None:
    checkpoint_rounds(tmp_path, session(tmp_path), 2)
    with pytest.raises(ConfigError, match=f"round 2 of session s1 with other settings \\({next(iter(change))}"):
        load_run_checkpoint(tmp_path, session(tmp_path, **change), PARAMS.spec, session_named=True)


def test_a_damaged_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00" * 5)
    with pytest.raises(ConfigError, match=r"not a readable fedhive checkpoint.*--fresh"):
        load_run_checkpoint(tmp_path, session(tmp_path), PARAMS.spec, session_named=True)


def test_a_resumed_run_directory_keeps_the_checkpointed_rounds_rows(tmp_path: Path) -> None:
    first = RunDirectory(tmp_path, {})
    for rnd in (1, 2, 3):  # round 3's row was written, its checkpoint was not: it runs again
        first._on_update(ev.UpdateAccepted(rnd, "c1", 100, {"loss": 0.1}, 10))
        first._on_round(round_completed(rnd))
    first.close()
    resumed = RunDirectory(tmp_path, {}, resume_after=2)
    resumed._on_update(ev.UpdateAccepted(3, "c1", 100, {"loss": 0.1}, 10))
    resumed._on_round(round_completed(3))
    resumed.close()
    for name in ("rounds.csv", "clients.csv"):
        with (tmp_path / name).open() as f:
            assert [r["round"] for r in csv.DictReader(f)] == ["1", "2", "3"], name
