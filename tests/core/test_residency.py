"""Pages of a memory-mapped update are given back as it is hashed, checked and folded, and the
FedAvg accumulator as it becomes the result: same numbers, less resident memory."""

from __future__ import annotations

import hashlib
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhive.core import residency, wire
from fedhive.core.envelope import PayloadDescriptor
from fedhive.core.params import Params, check_finite
from fedhive.errors import NonFiniteError, PayloadError
from fedhive.strategies.base import Update
from fedhive.strategies.fedavg import WeightedMeanAggregator

N = 8 * 1024 * 1024  # float32 elements: 32 MiB, over the release threshold
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.fixture
def mapped(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 32 MiB float32 array and the same values read through a memory map of a file."""
    values = np.random.default_rng(0).standard_normal(N, dtype=np.float32)
    path = tmp_path / "update.bin"
    path.write_bytes(values.tobytes())
    with path.open("rb") as f:  # the map outlives the file object; it is unmapped when collected
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return values, np.frombuffer(memoryview(mm), np.float32)


def test_only_memory_maps_count_as_file_mapped(mapped: tuple[np.ndarray, np.ndarray]) -> None:
    values, view = mapped
    assert residency.file_mapped(view) and residency.file_mapped(view[10:20].reshape(2, 5))
    assert not residency.file_mapped(values) and not residency.file_mapped(memoryview(b"abc"))


@linux_only
def test_hashing_a_mapped_payload_keeps_it_out_of_memory(mapped: tuple[np.ndarray, np.ndarray]) -> None:
    values, view = mapped
    desc = PayloadDescriptor(codec="raw", nbytes=values.nbytes, sha256=hashlib.sha256(values).hexdigest())
    before = rss_file_kib()
    wire.verify_payload(memoryview(view).cast("B"), desc)  # right digest: accepted
    assert rss_file_kib() - before < 8 * 1024, "the whole 32 MiB became resident"
    forged = desc.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(PayloadError, match="sha256"):
        wire.verify_payload(memoryview(view).cast("B"), forged)


@linux_only
def test_checking_a_mapped_tensor_finds_nan_and_keeps_it_out_of_memory(tmp_path: Path) -> None:
    values = np.ones(N, np.float32)
    values[-1] = np.nan  # in the last chunk: everything before it was already given back
    path = tmp_path / "nan.bin"
    path.write_bytes(values.tobytes())
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(memoryview(mm), np.float32)
    before = rss_file_kib()
    with pytest.raises(NonFiniteError, match="'w'"):
        check_finite({"w": view})
    check_finite({"w": view[:-1]})
    assert rss_file_kib() - before < 8 * 1024


@linux_only
def test_folding_a_mapped_update_gives_the_same_sum_without_keeping_it(
    mapped: tuple[np.ndarray, np.ndarray],
) -> None:
    values, view = mapped
    template = Params({"w": values})
    from_memory, from_map = WeightedMeanAggregator(template), WeightedMeanAggregator(template)
    from_memory.add(Update("a", Params({"w": values}), 3, {}))
    before = rss_file_kib()
    from_map.add(Update("a", Params({"w": view}), 3, {}))
    assert rss_file_kib() - before < 8 * 1024
    assert np.array_equal(from_memory.result().params["w"], from_map.result().params["w"])
    assert np.array_equal(values, view), "the mapped data itself is untouched"


def test_result_consumes_the_aggregator() -> None:
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(N // 2, dtype=np.float32) for _ in range(2))
    agg = WeightedMeanAggregator(Params({"w": a}))
    agg.add(Update("a", Params({"w": a}), 1, {"loss": 1.0}))
    agg.add(Update("b", Params({"w": b}), 3, {"loss": 3.0}))
    # float64 products and sum (exact FedAvg sums), cast once at the end
    expected = ((a.astype(np.float64) * 1.0 + b.astype(np.float64) * 3.0) / 4).astype(np.float32)
    first = agg.result()
    assert np.array_equal(first.params["w"], expected) and first.metrics == {"loss": 2.5}
    assert agg.result() is first  # the accumulator is gone; the result stays
    with pytest.raises(RuntimeError, match="produced its result"):
        agg.add(Update("c", Params({"w": a}), 1, {}))
    with pytest.raises(RuntimeError, match="produced its result"):
        agg.partial()
