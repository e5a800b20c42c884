"""Secure aggregation in ``simulate``: the model of plain FedAvg within the quantisation bound,
dropouts recovered, too many dropouts a failed session with a reason, unfit settings refused."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhive.app.loader import load_app
from fedhive.core.params import Params
from fedhive.errors import ConfigError, SessionFailed
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import SessionResult
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation, run_federation

NODE = {"dataset": "digits", "partition": "iid", "test_fraction": 0.2}
CLIENTS = 10


def _run(
    secure: bool, *, rounds: int = 2, dropout: float = 0.0, **settings: object
) -> tuple[SessionResult, list[ev.RoundCompleted]]:
    config = make_config(
        session_id="secagg-test",
        rounds=rounds,
        min_clients=CLIENTS,
        seed=1,
        model="logreg",
        data={"dataset": "digits", "partition": "iid"},
        secure_aggregation=secure,
        max_round_retries=1,
        **settings,
    )
    plan = plan_simulation(config, load_app("builtin"), CLIENTS, node=NODE, evaluate="central")
    completed: list[ev.RoundCompleted] = []

    def observe(bus: EventBus) -> None:
        bus.on(ev.RoundCompleted, completed.append)

    result = asyncio.run(
        asyncio.wait_for(
            run_federation(
                plan.config,
                plan.trainers,
                plan.num_examples,
                plan.initial_params,
                evaluator=plan.evaluator,
                observers=[observe],
                secagg_dropout=dropout,
            ),
            timeout=240,
        )
    )
    return result, completed


def _max_diff(a: Params, b: Params) -> float:
    return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) for n in a)


@pytest.mark.parametrize("neighbours", [None, 2])
def test_one_secure_round_is_fedavg_within_the_quantisation_bound(neighbours: int | None) -> None:
    plain, plain_completed = _run(False, rounds=1)
    secure, completed = _run(True, rounds=1, secagg_bits=20, secagg_neighbours=neighbours)
    bound = 2.0**-21  # 2**-(bits+1): the fixed point's rounding, larger than float32's here
    half_ulp = max(float(np.spacing(np.max(np.abs(a)))) / 2 for a in plain.params.values())
    assert 0 < _max_diff(plain.params, secure.params) <= bound + half_ulp
    assert completed[0].num_updates == CLIENTS
    assert completed[0].num_examples == plain_completed[0].num_examples  # the examples' total, summed securely


def test_dropouts_after_the_masked_update_leave_every_round_complete() -> None:
    plain, _ = _run(False, rounds=3)
    secure, completed = _run(True, rounds=3, dropout=0.2)
    assert secure.rounds == 3 and [c.round for c in completed] == [1, 2, 3]
    # Their updates are in the sum: the model is FedAvg's over all clients, not over the survivors.
    assert all(c.num_updates == CLIENTS for c in completed)
    assert _max_diff(plain.params, secure.params) < 1e-6


def test_too_many_dropouts_fail_the_session_with_the_reason() -> None:
    # 4 neighbours each, threshold 4 of a client's 5 share holders: with 6 of 10 gone, some
    # client keeps at most 3 of them.
    with pytest.raises(SessionFailed) as info:
        _run(True, rounds=1, dropout=0.6, secagg_neighbours=4, secagg_threshold=1.0)
    assert re.search(
        r"only [0-3] of client-\d+'s 5 share holders sent unmasking shares, fewer than the threshold 4", str(info.value)
    ), str(info.value)


@pytest.mark.parametrize("strategy", ["fedmedian", "krum:f=1", "dp-fedavg:clip=1.0,noise=1.0", "fedavg+clip=1.0"])
def test_strategies_that_need_each_update_are_refused(strategy: str) -> None:
    config = make_config(min_clients=3, strategy=strategy, secure_aggregation=True)
    with pytest.raises(ConfigError, match="needs each client's update, which secure aggregation hides"):
        plan_simulation(config, load_app("builtin"), 3, node=NODE)


def test_fedavg_family_strategies_are_accepted() -> None:
    for strategy in ("fedavg", "fedavg:unweighted", "fedprox:mu=0.1", "fedadam", "fedavgm"):
        config = make_config(min_clients=3, strategy=strategy, secure_aggregation=True)
        plan_simulation(config, load_app("builtin"), 3, node=NODE)


def test_compression_with_secure_aggregation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="compression must be none"):
        make_config(secure_aggregation=True, compression="int8")


def test_the_cli_refuses_a_median_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedhive.cli.main", "simulate", "--clients", "3", "--rounds", "1",
         "--strategy", "fedmedian", "--secure-aggregation", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs each client's update" in lines[0] and "Traceback" not in proc.stderr
