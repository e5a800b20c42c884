"""``fedhive peer --initial-model``: decentralised peers start from the given weights instead of the
app's init, whichever peer seeds; a peer refuses a seed model other than the one it was given, and
weights that do not fit the app's model are refused naming the tensor, before anything connects."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakes import ShiftTrainer
from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import PayloadError, SessionFailed
from fedhive.runtime.peer import PeerNode
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.runtime.session_config import SessionConfig
from fedhive.transports.memory import MemoryNetwork

FAST = {"beat_s": 0.05, "peer_timeout_s": 0.4}
CONFIG = SessionConfig(rounds=2, round_timeout_s=2.0, registration_timeout_s=10.0)
NOBODY = "amqp://127.0.0.1:1/"  # nothing listens on port 1 (and the command never gets that far)
APP = Path(__file__).parents[1] / "linear_app.py"


def seed_model(value: float) -> Params:
    return Params({"w": np.full(4, value, np.float32), "b": np.full(1, value, np.float32)})


def peer(net: MemoryNetwork, shift: float, initial: Params | None) -> PeerNode:
    return PeerNode(net.connect(new_peer_id()), ShiftTrainer(shift, 10), CONFIG, min_peers=3, initial=initial, **FAST)


async def test_every_peer_starts_from_the_given_model() -> None:
    net = MemoryNetwork()
    start = seed_model(5.0)
    nodes = [peer(net, shift, start.copy()) for shift in (1.0, 2.0, 3.0)]
    async with asyncio.timeout(20):
        results = await asyncio.gather(*(p.run() for p in nodes))
    assert all([h.digest for h in r] == [h.digest for h in results[0]] for r in results)
    # Two rounds of the mean shift (1 + 2 + 3) / 3 = 2 on top of the given 5.0 (the app's init is 0).
    for p in nodes:
        assert p.params is not None
        np.testing.assert_array_equal(p.params["w"], np.full(4, 9.0, np.float32))


async def test_a_peer_refuses_a_seed_model_other_than_its_own() -> None:
    net = MemoryNetwork()
    nodes = sorted((peer(net, 1.0, None) for _ in range(3)), key=lambda p: p.peer_id)
    # The lowest id seeds (with the app's init); the last peer was told to start from other weights.
    told = PeerNode(nodes[2].transport, ShiftTrainer(1.0, 10), CONFIG, min_peers=3, initial=seed_model(5.0), **FAST)
    others = [asyncio.create_task(p.run()) for p in nodes[:2]]
    try:
        async with asyncio.timeout(20):
            with pytest.raises(SessionFailed, match="seeded a model other than this peer's --initial-model"):
                await told.run()
    finally:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def test_weights_of_the_wrong_shape_are_refused_naming_the_tensor() -> None:
    wrong = Params({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)})
    with pytest.raises(PayloadError, match="initial model tensor 'w' has shape \\(3,\\), expected \\(4,\\)"):
        PeerNode(MemoryNetwork().connect(new_peer_id()), ShiftTrainer(1.0), CONFIG, initial=wrong)


def test_the_peer_command_names_the_tensor_in_one_line(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(codec.encode(Params({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)})))
    args = ["peer", "--broker", NOBODY, "--secret", "5e" * 32, "--app", f"{APP}:app", "--initial-model", str(wrong)]
    proc = subprocess.run(
        [sys.executable, "-m", "fedhive.cli.main", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    expected = f"error: initial model {wrong} tensor 'w' has shape (3,), expected (5,) (the app's model)"
    assert proc.stderr.strip() == expected
