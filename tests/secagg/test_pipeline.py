"""The secure sum in a thread of its own (``simulate`` on more than one core): the same exact sum
as one run inline, the key steps' failure surfaced in one line, and a bounded queue of updates;
and a session's graph seed gives the same clients the same neighbours every round."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedhive.secagg import SecAggError
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.pipeline import MAX_QUEUED, SecureSumPipeline
from fedhive.secagg.round import LocalSecureSum, round_context
from fedhive.secagg.server import session_graph_seed


def _vectors(n: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {f"c{i:02d}": rng.integers(0, 2**64, length, dtype=np.uint64, endpoint=False) for i in range(n)}


def _build(ids: list[str], length: int, **kwargs: object) -> functools.partial[LocalSecureSum]:
    return functools.partial(
        LocalSecureSum, ids, round_context("s", 1, 0), length, 0.5, "round 1", neighbours=6, **kwargs
    )


@pytest.mark.parametrize("threads", [1, 3])
def test_the_threaded_sum_is_the_exact_sum_with_dropouts(threads: int) -> None:
    vectors = _vectors(20, 500)
    ids = sorted(vectors)
    with ThreadPoolExecutor(threads) as thread:
        secure = SecureSumPipeline(thread, _build(ids, 500))
        for c in ids:
            secure.submit(c, vectors[c])
        total = secure.finish(lambda submitted: submitted[:3])  # three vanish before unmasking
    expected = np.zeros(500, np.uint64)
    for v in vectors.values():
        expected += v
    assert np.array_equal(total, expected)


def test_a_failed_key_step_is_raised_and_stops_the_round_early() -> None:
    with ThreadPoolExecutor(1) as thread:
        secure = SecureSumPipeline(thread, _build(["c00"], 8))  # one client: no secure sum
        with pytest.raises(SecAggError, match="at least 2"):
            secure.finish(lambda submitted: [])
        assert isinstance(secure.failed_early(), SecAggError)


def test_at_most_a_few_updates_wait_for_the_thread() -> None:
    vectors = _vectors(12, 64)
    ids = sorted(vectors)
    release = threading.Event()
    build = _build(ids, 64)

    def slow_build() -> LocalSecureSum:
        release.wait(timeout=30)  # the key steps take long: updates queue up meanwhile
        return build()

    with ThreadPoolExecutor(2) as thread:
        secure = SecureSumPipeline(thread, slow_build)
        for c in ids[:MAX_QUEUED]:
            secure.submit(c, vectors[c])  # queued, not yet masked: submit returns at once
        assert len(secure._queued) == MAX_QUEUED
        release.set()
        for c in ids[MAX_QUEUED:]:
            secure.submit(c, vectors[c])
            assert len(secure._queued) <= MAX_QUEUED
        total = secure.finish(lambda submitted: [])
    expected = np.zeros(64, np.uint64)
    for v in vectors.values():
        expected += v
    assert np.array_equal(total, expected)


def test_a_session_graph_seed_keeps_the_neighbours_and_the_agreed_secrets() -> None:
    ids = [f"c{i:02d}" for i in range(30)]
    channels: dict[str, ChannelKeys] = {}
    seed = session_graph_seed()
    graphs = []
    for rnd in (1, 2, 3):
        secure = LocalSecureSum(ids, round_context("s", rnd, 0), 4, 0.5, "r", neighbours=6, channels=channels,
                                graph_seed=seed)  # fmt: skip
        graphs.append(secure.server.roster().graph)
    assert graphs[0] == graphs[1] == graphs[2]
    # Each client agreed a secret with its 6 neighbours in round 1 and with nobody new after it.
    assert {channels[c].mask_peers for c in ids} == {6}
    fresh: dict[str, ChannelKeys] = {}
    per_round = [LocalSecureSum(ids, round_context("t", r, 0), 4, 0.5, "r", neighbours=6, channels=fresh)
                 for r in (1, 2, 3)]  # fmt: skip
    assert len({frozenset(s.server.roster().graph.items()) for s in per_round}) > 1  # drawn per round


def test_a_graph_seed_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        LocalSecureSum(["a", "b"], round_context("s", 1, 0), 4, 0.5, "r", graph_seed=b"short")
