"""The per-update fast paths give the answers of the plain code they stand in for, to the bit.

A host and a coordinator check, screen and fold every update: FedAvg widens a big float32 tensor
before multiplying and sums a one-value tensor in Python floats, ``UpdateScreen.refused`` proves
finiteness from a float32 sum of squares when no bound is set, ``check_against_spec`` compares
against a cached plan of the spec, ``as_params`` takes a plain dict as it is. Each is compared
here with the straightforward computation: the same seed must keep giving the same model.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.app.app_trainer import as_params
from fedhive.core.params import Params, check_against_spec
from fedhive.errors import AppError, NonFiniteError, PayloadError
from fedhive.strategies.base import Update
from fedhive.strategies.fedavg import WeightedMeanAggregator
from fedhive.strategies.screening import UpdateScreen

# 1: the scalar path; 4095 / 4096: either side of widening first; 40,000: more than one chunk.
SHAPES = [(), (1,), (7,), (4095,), (4096,), (100, 100), (40_000,)]


def plain_weighted_sum(updates: list[Update], weighted: bool) -> dict[str, np.ndarray]:
    """sum(w * x) as the fold was first written: the product in float64, then added, per update."""
    sums: dict[str, np.ndarray] = {}
    for u in updates:
        w = float(u.num_examples) if weighted else 1.0
        for name, x in u.params.items():
            acc = sums.setdefault(name, np.zeros(x.shape, np.float64))
            acc += np.multiply(x, w, dtype=np.float64)
    return sums


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("weighted", [True, False])
def test_the_fold_gives_the_bits_of_the_plain_float64_sum(dtype: type, weighted: bool) -> None:
    rng = np.random.default_rng(7)
    template = Params({f"t{i}": np.zeros(shape, dtype) for i, shape in enumerate(SHAPES)})
    updates = []
    for k, examples in enumerate([3, 10**9, 17, 1, 123_457]):
        scale = 1e4 if dtype is not np.float16 else 1.0  # values that round differently in float32 products
        params = {n: (rng.standard_normal(a.shape) * scale).astype(dtype) for n, a in template.items()}
        updates.append(Update(f"c{k}", Params(params), examples, {"loss": float(k)}))
    agg = WeightedMeanAggregator(template, weighted=weighted)
    for u in updates:
        agg.add(u)
    got = agg.partial().weighted_sum
    for name, want in plain_weighted_sum(updates, weighted).items():
        assert got[name].shape == want.shape
        assert got[name].tobytes() == want.tobytes(), name


def test_a_merged_partial_and_the_result_still_see_the_folded_sums() -> None:
    """The fold writes through flat views of the sums: merging and dividing read the same arrays."""
    template = Params({"w": np.zeros((3, 4), np.float32), "b": np.zeros(1, np.float32)})
    one = Update("a", Params({"w": np.full((3, 4), 2, np.float32), "b": np.ones(1, np.float32)}), 1)
    agg, other = WeightedMeanAggregator(template), WeightedMeanAggregator(template)
    agg.add(one)
    other.add(Update("b", Params({"w": np.full((3, 4), 5, np.float32), "b": np.full(1, 4, np.float32)}), 2))
    agg.merge(other.partial())
    agg.add(one)
    result = agg.result().params
    np.testing.assert_array_equal(result["w"], np.full((3, 4), 3.5, np.float32))  # (2 + 10 + 2) / 4
    np.testing.assert_array_equal(result["b"], np.full(1, 2.5, np.float32))  # (1 + 8 + 1) / 4


CASES = {
    "small": np.full(12, 0.25, np.float32),
    "huge but finite": np.full(12, np.inf, np.float32),  # replaced by the dtype's largest value (below)
    "NaN": np.array([0.0] * 11 + [np.nan], np.float32),
    "Inf": np.array([0.0] * 11 + [-np.inf], np.float32),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bounds", [{}, {"max_model_jump": 1000.0}, {"max_update_norm": 1.0}])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_refused_says_what_refusal_says(case: str, bounds: dict[str, float], dtype: type) -> None:
    base = Params({"w": np.zeros(12, dtype), "steps": np.zeros(1, np.int64)})
    values = CASES[case].astype(dtype)
    if case == "huge but finite":  # float32: its float32 sum of squares overflows
        values = np.full(12, np.finfo(dtype).max, dtype)
    params = Params({"w": values, "steps": np.ones(1, np.int64)})
    screen = UpdateScreen(base, **bounds)
    assert screen.refused(params) == screen.refusal(params)[1]
    if not bounds:  # only finiteness decides
        assert (screen.refused(params) is None) == (case in ("small", "huge but finite"))


def test_spec_checks_name_every_problem_after_the_cached_plan_passed_once() -> None:
    good = Params({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    spec = good.spec
    check_against_spec(good, spec)  # the spec's plan is now cached
    check_against_spec(dict(good.items()), spec)  # any mapping
    bad = {
        "tensor names differ: missing ['b'], unexpected ['c']": {"w": good["w"], "c": good["b"]},
        "tensor names differ: missing ['b'], unexpected []": {"w": good["w"]},
        "tensor 'w' has shape (3, 2), expected (2, 3)": {"w": np.zeros((3, 2), np.float32), "b": good["b"]},
        "tensor 'b' has dtype float64, expected float32": {"w": good["w"], "b": np.zeros(3)},
    }
    for message, params in bad.items():
        with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            check_against_spec(params, spec, what="update")
    nan = Params({"w": np.full((2, 3), np.nan, np.float32), "b": good["b"]})
    with pytest.raises(NonFiniteError, match="tensor 'w' holds NaN"):
        check_against_spec(nan, spec)
    check_against_spec(nan, spec, finite=False)  # the structure alone


def test_a_plain_dict_of_weights_is_taken_without_a_copy_and_converted_as_before() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    params = as_params({"w": w}, where="app train")
    assert type(params) is Params and params["w"] is w  # nothing copied
    scalar = as_params({"s": np.array(2.0, np.float32)}, where="app train")
    assert scalar["s"].shape == (1,)  # a 0-d array becomes 1-d, as it always did
    strided = as_params({"w": w.T}, where="app train")
    assert strided["w"].flags.c_contiguous and np.array_equal(strided["w"], w.T)
    with pytest.raises(AppError, match=r"weights\['w'\] is a list"):
        as_params({"w": [1.0, 2.0]}, where="app train")
    with pytest.raises(AppError, match="weight names must be strings"):
        as_params({1: w}, where="app train")
