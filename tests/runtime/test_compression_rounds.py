"""Compression in whole sessions (memory transport): the int8 experiment, bytes reported per round,
and a forged compressed update rejected while the session goes on."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedhive.cli.site_options import plan_builtin
from fedhive.core import compression
from fedhive.core.params import Params
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime import client as client_module
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation
from fedhive.tracking.run_directory import RunDirectory


def run(method: str, *, rounds: int = 10, out: Path | None = None) -> tuple[float, float, list[str]]:
    """(final accuracy, mean bytes per accepted update, rejection reasons): digits, 10 clients."""
    config = make_config(
        rounds=rounds,
        min_clients=10,
        model="logreg-np",
        lr=0.1,
        momentum=0.0,
        epochs=1,
        batch_size=32,
        seed=0,
        compression=method,
    )
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="iid"), 10)
    sizes: list[int] = []
    rejected: list[str] = []

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: sizes.append(e.nbytes))
        bus.on(ev.UpdateRejected, lambda e: rejected.append(e.reason))

    observers = [watch]
    if out is not None:
        observers.append(RunDirectory(out, {}).attach)
    result = asyncio.run(
        run_federation(
            plan.config,
            plan.trainers,
            plan.num_examples,
            plan.initial_params,
            evaluator=plan.evaluator,
            observers=observers,
        )
    )
    assert result.rounds == rounds
    return result.metrics["accuracy"], float(np.mean(sizes)), rejected


def test_int8_sends_four_times_fewer_bytes_at_the_same_accuracy() -> None:
    acc32, bytes32, _ = run("none")
    acc8, bytes8, _ = run("int8")
    assert 3.8 < bytes32 / bytes8 <= 4.0
    assert abs(acc8 - acc32) <= 0.01
    assert acc32 > 0.85


@pytest.mark.parametrize(("method", "low", "high"), [("float16", 1.99, 2.01), ("topk:0.1", 4.9, 5.1)])
def test_other_methods_cut_bytes_and_still_learn(method: str, low: float, high: float) -> None:
    acc, nbytes, _ = run(method)
    assert low < 650 * 4 / nbytes < high  # digits logreg: 640 weights + 10 biases
    assert acc > 0.85


def test_rounds_csv_reports_bytes_and_ratio(tmp_path: Path) -> None:
    run("int8", rounds=2, out=tmp_path)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert [int(r["bytes_received"]) for r in rows] == [10 * (650 + 2 * 4)] * 2  # int8 + one scale per tensor
    assert float(rows[0]["compression_ratio"]) == pytest.approx(2600 / 658, abs=1e-3)


class _Forger(compression.UpdateCompressor):
    """Sends top-k indices in the wrong order: what an attacker, not an encoder, produces."""

    def compress(self, update: Params) -> tuple[Params, dict[str, Any]]:
        wire, body = super().compress(update)
        return Params({n: a[::-1].copy() if n.endswith(".__idx") else a for n, a in wire.items()}), body


def test_a_forged_compressed_update_is_rejected_and_the_session_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [0]

    def factory(method: str = "none") -> compression.UpdateCompressor:
        if method != "none":
            made[0] += 1
            if made[0] == 4:  # one client of the ten
                return _Forger(method)
        return compression.UpdateCompressor(method)

    monkeypatch.setattr(client_module, "UpdateCompressor", factory)
    acc, _, rejected = run("topk:0.1", rounds=3)
    assert len(rejected) == 3
    assert all(r.startswith("update from client-") and "not strictly increasing" in r for r in rejected)
    assert acc > 0.8
