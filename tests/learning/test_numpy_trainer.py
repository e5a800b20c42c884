"""The numpy softmax-regression trainer: learns, is exact, deterministic and leaves inputs alone."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.app.learner import EpochProgress, FitConfig
from fedhive.core.params import Params
from fedhive.errors import ConfigError, DataError, PayloadError
from fedhive.learning.datasets import load_dataset, split_train_test
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer


@pytest.fixture(scope="module")
def digits() -> tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]:
    train, test = split_train_test(load_dataset("digits"), seed=0)
    return NumpyLogRegTrainer(train.x, train.y, 10), NumpyLogRegTrainer(test.x, test.y, 10)


def test_learns_digits(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, tester = digits
    start = trainer.initial_params(0)
    before = tester.evaluate(start)
    result = trainer.fit(start, FitConfig(epochs=3, batch_size=32, lr=0.5, seed=1))
    after = tester.evaluate(result.params)
    assert before.metrics["accuracy"] < 0.3
    assert after.metrics["accuracy"] > 0.9
    assert after.metrics["loss"] < before.metrics["loss"]
    assert result.num_examples == 1438 and after.num_examples == 359
    assert result.metrics["steps"] == 3 * 45
    assert 0 < result.metrics["loss"] < before.metrics["loss"] and result.metrics["accuracy"] > 0.9


def test_deterministic_for_a_seed(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, _ = digits
    start = trainer.initial_params(7)
    config = FitConfig(epochs=2, batch_size=16, lr=0.1, seed=3)
    first, second = trainer.fit(start, config), trainer.fit(start, config)
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(first.params[name], second.params[name])
    other = trainer.fit(start, FitConfig(epochs=2, batch_size=16, lr=0.1, seed=4))
    assert not np.array_equal(first.params["weight"], other.params["weight"])


def test_initial_params(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, _ = digits
    a, b, c = trainer.initial_params(1), trainer.initial_params(1), trainer.initial_params(2)
    assert list(a) == ["weight", "bias"]
    assert a["weight"].shape == (64, 10) and a["weight"].dtype == np.float32 and a["bias"].shape == (10,)
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert not np.array_equal(a["weight"], c["weight"])
    assert a.spec == trainer.param_spec


def test_does_not_modify_input_params(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, _ = digits
    start = trainer.initial_params(0)
    for array in start.values():
        array.flags.writeable = False  # an in-place update would raise
    kept = start.copy()
    result = trainer.fit(start, FitConfig(epochs=1, proximal_mu=0.1))
    for name in start:
        np.testing.assert_array_equal(start[name], kept[name])
        assert not np.shares_memory(result.params[name], start[name])


def test_one_step_matches_the_softmax_gradient() -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    trainer = NumpyLogRegTrainer(x, np.array([2]), 3)
    zeros = Params({"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)})
    result = trainer.fit(zeros, FitConfig(epochs=1, batch_size=1, lr=0.5))
    # Uniform softmax 1/3; gradient of the loss w.r.t. logits is p - onehot(2).
    grad_logits = np.array([1 / 3, 1 / 3, -2 / 3], dtype=np.float32)
    np.testing.assert_allclose(result.params["weight"], -0.5 * np.outer(x[0], grad_logits), rtol=1e-6)
    np.testing.assert_allclose(result.params["bias"], -0.5 * grad_logits, rtol=1e-6)
    assert result.metrics["loss"] == pytest.approx(np.log(3), rel=1e-6)


def test_proximal_term_keeps_weights_near_the_global_model(
    digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer],
) -> None:
    trainer, _ = digits
    start = trainer.initial_params(0)

    def drift(mu: float) -> float:
        out = trainer.fit(start, FitConfig(epochs=2, lr=0.2, proximal_mu=mu, seed=0)).params
        return float(np.linalg.norm(out["weight"] - start["weight"]))

    assert drift(5.0) < 0.5 * drift(0.0)


def test_progress_once_per_epoch_and_max_steps(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, _ = digits
    seen: list[EpochProgress] = []
    result = trainer.fit(trainer.initial_params(0), FitConfig(epochs=4, batch_size=100, lr=0.1), seen.append)
    assert [p.epoch for p in seen] == [1, 2, 3, 4] and all(p.epochs == 4 for p in seen)
    assert seen[-1].loss < seen[0].loss and seen[-1].loss == result.metrics["loss"]
    seen.clear()
    # 15 batches per epoch: 20 steps end in the middle of epoch 2.
    result = trainer.fit(trainer.initial_params(0), FitConfig(epochs=4, batch_size=100, max_steps=20), seen.append)
    assert result.metrics["steps"] == 20 and [p.epoch for p in seen] == [1, 2]


def test_zero_steps_returns_the_received_model(digits: tuple[NumpyLogRegTrainer, NumpyLogRegTrainer]) -> None:
    trainer, _ = digits
    start = trainer.initial_params(0)
    result = trainer.fit(start, FitConfig(max_steps=0))
    np.testing.assert_array_equal(result.params["weight"], start["weight"])
    assert result.metrics["loss"] == pytest.approx(trainer.evaluate(start).metrics["loss"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (FitConfig(epochs=0), "epochs"),
        (FitConfig(batch_size=0), "batch size"),
        (FitConfig(lr=-1.0), "learning rate"),
        (FitConfig(lr=float("nan")), "learning rate"),
        (FitConfig(proximal_mu=-0.1), "proximal mu"),
        (FitConfig(max_steps=-1), "max steps"),
    ],
)
def test_bad_config(config: FitConfig, message: str) -> None:
    trainer = NumpyLogRegTrainer(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), 2)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(trainer.initial_params(0), config)


def test_wrong_params_are_refused() -> None:
    trainer = NumpyLogRegTrainer(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), 2)
    wrong = Params({"weight": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)})
    with pytest.raises(PayloadError, match="'weight' has shape"):
        trainer.fit(wrong, FitConfig())
    with pytest.raises(PayloadError, match="names differ"):
        trainer.evaluate(Params({"w": np.zeros(2, np.float32)}))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 2)), np.array([0, 1, 5]), r"labels must lie in 0..2"),
        (np.zeros((3, 2)), np.array([0, 1]), "one label per row"),
        (np.zeros(3), np.array([0, 1, 2]), "2-D"),
        (np.zeros((0, 2)), np.zeros(0, np.int64), "empty"),
        (np.full((2, 2), np.nan), np.array([0, 1]), "NaN"),
    ],
)
def test_bad_data(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        NumpyLogRegTrainer(x, y, 3)
