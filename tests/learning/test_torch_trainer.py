"""The torch trainer: learns, is bitwise reproducible, never aliases or mutates params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhive.app.learner import EpochProgress, FitConfig
from fedhive.core.params import Params
from fedhive.errors import ConfigError, PayloadError
from fedhive.learning.datasets import load_dataset, split_train_test
from fedhive.learning.factory import build_trainer
from fedhive.learning.models import parse_model_spec
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer
from fedhive.learning.torch_trainer import TorchTrainer

DNN = parse_model_spec("simple-dnn")


@pytest.fixture(scope="module")
def digits() -> tuple[TorchTrainer, TorchTrainer]:
    train, test = split_train_test(load_dataset("digits"), seed=0)
    return TorchTrainer(DNN, train.x, train.y, 10), TorchTrainer(DNN, test.x, test.y, 10)


def test_simple_dnn_learns_digits_and_reports_each_epoch(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, tester = digits
    start = trainer.initial_params(0)
    seen: list[EpochProgress] = []
    result = trainer.fit(start, FitConfig(epochs=5, batch_size=32, lr=0.05, seed=1), seen.append)
    assert [p.epoch for p in seen] == [1, 2, 3, 4, 5] and all(p.epochs == 5 for p in seen)
    assert seen[-1].loss < seen[0].loss
    assert tester.evaluate(start).metrics["accuracy"] < 0.3
    after = tester.evaluate(result.params)
    assert after.metrics["accuracy"] > 0.9 and after.num_examples == 359
    assert result.num_examples == 1438 and result.metrics["steps"] == 5 * 45


def test_bitwise_deterministic_for_a_seed(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    config = FitConfig(epochs=2, batch_size=16, lr=0.1, seed=5, proximal_mu=0.01)
    first = trainer.fit(trainer.initial_params(3), config)
    second = trainer.fit(trainer.initial_params(3), config)
    assert list(first.params) == list(second.params)
    for name in first.params:
        assert first.params[name].tobytes() == second.params[name].tobytes()
    other = trainer.fit(trainer.initial_params(3), FitConfig(epochs=2, batch_size=16, lr=0.1, seed=6))
    assert not np.array_equal(first.params["out.weight"], other.params["out.weight"])


def test_params_follow_the_state_dict(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    params = trainer.initial_params(0)
    names = ["hidden1.weight", "hidden1.bias", "hidden2.weight", "hidden2.bias", "out.weight", "out.bias"]
    assert list(params) == names
    assert params["hidden1.weight"].shape == (128, 64) and params["out.bias"].shape == (10,)
    assert all(a.dtype == np.float32 for a in params.values())
    assert params.spec == trainer.param_spec
    np.testing.assert_array_equal(params["hidden1.weight"], trainer.initial_params(0)["hidden1.weight"])
    assert not np.array_equal(params["hidden1.weight"], trainer.initial_params(1)["hidden1.weight"])


def test_initial_params_leave_the_global_rng_alone(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer.initial_params(9)
    assert torch.equal(torch.rand(3), expected)


def test_input_params_are_not_mutated_and_results_do_not_alias(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    start = trainer.initial_params(0)
    for array in start.values():
        array.flags.writeable = False  # as decoded payloads are; loading must still work
    kept = start.copy()
    first = trainer.fit(start, FitConfig(epochs=1, lr=0.1, seed=0))
    first_kept = first.params.copy()
    trainer.fit(first.params, FitConfig(epochs=1, lr=0.1, seed=1))  # the module trains on
    for name in start:
        np.testing.assert_array_equal(start[name], kept[name])
        np.testing.assert_array_equal(first.params[name], first_kept[name])
    assert not np.array_equal(first.params["out.weight"], start["out.weight"])


def test_evaluate_is_stable_and_matches_the_numpy_logreg() -> None:
    train, _ = split_train_test(load_dataset("iris"), seed=0)
    torch_trainer = TorchTrainer(parse_model_spec("logreg"), train.x, train.y, 3)
    numpy_trainer = NumpyLogRegTrainer(train.x, train.y, 3)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    # torch's Linear stores weight as [out, in], the numpy trainer as [in, out].
    as_torch = Params({"linear.weight": np.ascontiguousarray(weight.T), "linear.bias": bias})
    got = torch_trainer.evaluate(as_torch)
    want = numpy_trainer.evaluate(Params({"weight": weight, "bias": bias}))
    assert got.metrics["accuracy"] == want.metrics["accuracy"] and got.metrics["loss"] == pytest.approx(
        want.metrics["loss"], rel=1e-5
    )
    assert torch_trainer.evaluate(as_torch) == got


def test_max_steps_stops_mid_epoch(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    seen: list[EpochProgress] = []
    result = trainer.fit(trainer.initial_params(0), FitConfig(epochs=3, batch_size=100, max_steps=17), seen.append)
    assert result.metrics["steps"] == 17 and [p.epoch for p in seen] == [1, 2]
    start = trainer.initial_params(0)
    idle = trainer.fit(start, FitConfig(max_steps=0))
    np.testing.assert_array_equal(idle.params["out.weight"], start["out.weight"])


def test_proximal_term_limits_drift(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    start = trainer.initial_params(0)

    def drift(mu: float) -> float:
        out = trainer.fit(start, FitConfig(epochs=2, lr=0.2, proximal_mu=mu, seed=0)).params
        return float(np.sqrt(sum(np.sum((out[n] - start[n]) ** 2) for n in start)))

    assert drift(5.0) < 0.5 * drift(0.0)


def test_cnn_trains_on_28x28_images() -> None:
    train, _ = split_train_test(load_dataset("mnist5k"), seed=0)
    part = train.take(np.arange(0, len(train), 10))
    trainer = build_trainer("cnn", part.x, part.y, 10)
    start = trainer.initial_params(0)
    result = trainer.fit(start, FitConfig(epochs=1, batch_size=32, lr=0.05, seed=0, max_steps=3))
    assert result.params["conv1.weight"].shape == (16, 1, 3, 3)
    assert not np.array_equal(result.params["conv1.weight"], start["conv1.weight"])


def test_refuses_wrong_params_and_bad_config(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    trainer, _ = digits
    params = trainer.initial_params(0)
    wrong = Params({**params, "out.bias": np.zeros(9, np.float32)})
    with pytest.raises(PayloadError, match=r"'out\.bias' has shape"):
        trainer.fit(wrong, FitConfig())
    with pytest.raises(PayloadError, match="dtype float64"):
        trainer.evaluate(Params({**params, "out.bias": np.zeros(10)}))
    with pytest.raises(ConfigError, match="batch size"):
        trainer.fit(params, FitConfig(batch_size=0))


def test_uses_one_torch_thread(digits: tuple[TorchTrainer, TorchTrainer]) -> None:
    assert torch.get_num_threads() == 1
