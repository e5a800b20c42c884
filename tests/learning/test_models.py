"""Model specs parse (without torch) and build the modules they name; the factory picks trainers."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.errors import ConfigError
from fedhive.learning.factory import build_trainer
from fedhive.learning.models import ModelSpec, build_model, parse_model_spec
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("simple-dnn", ModelSpec("simple-dnn", (128, 64))),
        ("simple-dnn:32", ModelSpec("simple-dnn", (32,))),
        (" simple-dnn:256,128,64 ", ModelSpec("simple-dnn", (256, 128, 64))),
        ("logreg", ModelSpec("logreg")),
        ("logreg-np", ModelSpec("logreg-np")),
        ("cnn", ModelSpec("cnn")),
    ],
)
def test_valid_specs(spec: str, expected: ModelSpec) -> None:
    parsed = parse_model_spec(spec)
    assert parsed == expected
    assert parse_model_spec(str(parsed)) == parsed
    assert parsed.uses_torch == (expected.kind != "logreg-np")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet", "unknown model 'resnet'; valid forms: simple-dnn, simple-dnn:H1,H2,..., logreg, logreg-np, cnn"),
        ("simple-dnn:", "hidden sizes must be integers"),
        ("simple-dnn:128,x", "hidden sizes must be integers"),
        ("simple-dnn:128,0", "hidden sizes must be positive"),
        ("simple-dnn:-4", "hidden sizes must be positive"),
        ("logreg:3", "takes no argument"),
        ("", "unknown model ''"),
    ],
)
def test_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_model_spec(spec)


def test_parsing_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from fedhive.learning import factory; factory.build_trainer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def count(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]


def test_built_models_have_the_expected_sizes() -> None:
    assert count(build_model(parse_model_spec("logreg"), 64, 10)) == 64 * 10 + 10
    dnn = build_model(parse_model_spec("simple-dnn:8,4"), 5, 3)
    assert count(dnn) == (5 * 8 + 8) + (8 * 4 + 4) + (4 * 3 + 3)
    assert list(dnn.state_dict()) == [
        "hidden1.weight", "hidden1.bias", "hidden2.weight", "hidden2.bias", "out.weight", "out.bias",
    ]  # fmt: skip
    cnn = build_model(parse_model_spec("cnn"), 784, 10)
    import torch

    assert cnn(torch.zeros(2, 784)).shape == (2, 10)


def test_cnn_needs_784_features() -> None:
    with pytest.raises(ConfigError, match=r"needs 28x28 images \(784 features\), but the data has 64"):
        build_model(parse_model_spec("cnn"), 64, 10)
    with pytest.raises(ConfigError, match="784 features"):
        build_trainer("cnn", np.zeros((4, 64), np.float32), np.array([0, 1, 0, 1]), 2)


def test_logreg_np_has_no_torch_module() -> None:
    with pytest.raises(ConfigError, match="numpy trainer"):
        build_model(parse_model_spec("logreg-np"), 4, 3)


def test_factory_picks_the_trainer() -> None:
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 2, 0])
    assert isinstance(build_trainer("logreg-np", x, y, 3), NumpyLogRegTrainer)
    from fedhive.learning.torch_trainer import TorchTrainer

    torch_trainer = build_trainer("simple-dnn:4", x, y, 3)
    assert isinstance(torch_trainer, TorchTrainer)
    assert list(torch_trainer.initial_params(0)) == ["hidden1.weight", "hidden1.bias", "out.weight", "out.bias"]
    with pytest.raises(ConfigError, match="unknown model"):
        build_trainer("nope", x, y, 3)
