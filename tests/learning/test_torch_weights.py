"""fedhive.torch: a module's weights out and back in, checked first, never aliased; device choice."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fedhive.core.params import Params
from fedhive.errors import AppError, ConfigError
from fedhive.torch import get_weights, pick_device, set_weights


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _net(seed: int) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net()
        net(torch.randn(16, 4))  # a training-mode pass moves BatchNorm's buffers off their defaults
    return net


def _snapshot(module: nn.Module) -> dict[str, bytes]:
    return {name: t.numpy().tobytes() for name, t in module.state_dict().items()}


def test_get_weights_is_the_state_dict_in_order_with_buffers_and_dtypes() -> None:
    net = _net(0)
    weights = get_weights(net)
    assert isinstance(weights, Params)
    assert list(weights) == list(net.state_dict())
    assert "bn.running_mean" in weights and weights["bn.num_batches_tracked"].dtype == np.int64
    assert weights["fc1.weight"].dtype == np.float32 and weights["fc1.weight"].shape == (8, 4)
    assert int(weights["bn.num_batches_tracked"]) == 1


def test_round_trip_is_bitwise_and_loads_in_place() -> None:
    source, target = _net(0), _net(1)
    weight = target.fc1.weight
    set_weights(target, get_weights(source))
    assert _snapshot(target) == _snapshot(source)
    assert {n: a.tobytes() for n, a in get_weights(target).items()} == _snapshot(source)
    # The module's own tensors were written: an optimizer holding them sees the new values.
    assert target.fc1.weight is weight and weight.requires_grad
    x = torch.randn(5, 4)
    assert torch.equal(source.eval()(x), target.eval()(x))


def test_neither_direction_aliases_the_module() -> None:
    net = _net(0)
    weights = get_weights(net)
    before = {n: a.copy() for n, a in weights.items()}
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.add_(1)
    assert all(np.array_equal(weights[n], before[n]) for n in before)

    set_weights(net, weights)
    weights["fc1.weight"][:] = 42.0
    assert not torch.any(net.fc1.weight == 42.0)


def test_read_only_and_strided_arrays_load_without_a_warning() -> None:
    source, target = _net(0), _net(1)
    arrays = {n: a.copy() for n, a in get_weights(source).items()}
    # A reversed view of reversed data: negative strides, which torch.from_numpy refuses.
    arrays["fc1.weight"] = arrays["fc1.weight"][::-1].copy()[::-1]
    for arr in arrays.values():
        arr.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_weights(target, Params(arrays))
    assert _snapshot(target) == _snapshot(source)


def _replace(weights: Params, name: str, arr: np.ndarray) -> Params:
    return Params({n: arr if n == name else a for n, a in weights.items()})


def _without(weights: Params, name: str) -> Params:
    return Params({n: a for n, a in weights.items() if n != name})


MISMATCHES = {
    "shape": (
        lambda w: _replace(w, "fc2.weight", np.zeros((3, 9), np.float32)),
        "set_weights: tensor 'fc2.weight' has shape (3, 9), the module's is (3, 8)",
    ),
    "missing": (lambda w: _without(w, "fc2.bias"), "set_weights: missing tensor 'fc2.bias'"),
    "unexpected": (lambda w: Params({**w, "extra": np.zeros(1, np.float32)}), "set_weights: unexpected tensor 'extra'"),
    "float dtype": (
        lambda w: _replace(w, "fc2.bias", w["fc2.bias"].astype(np.float64)),
        "set_weights: tensor 'fc2.bias' has dtype float64, the module's is float32",
    ),
    "buffer dtype": (
        lambda w: _replace(w, "bn.num_batches_tracked", np.zeros((), np.float32)),
        "set_weights: tensor 'bn.num_batches_tracked' has dtype float32, the module's is int64",
    ),
    "byte order": (
        lambda w: _replace(w, "fc2.bias", w["fc2.bias"].astype(">f4")),
        "set_weights: tensor 'fc2.bias' has dtype float32 (>f4, non-native byte order), the module's is float32",
    ),
    "not an array": (lambda w: _replace(w, "fc2.bias", [0.0, 0.0, 0.0]), "is a list, not a numpy array"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_mismatch_names_the_tensor_and_changes_nothing(case: str) -> None:
    make, message = MISMATCHES[case]
    target = _net(1)
    before = _snapshot(target)
    # Every earlier tensor is fine and would load: the check must come before any copy.
    with pytest.raises(AppError, match=re.escape(message)):
        set_weights(target, make(get_weights(_net(0))))
    assert _snapshot(target) == before


def test_the_first_mismatch_in_module_order_is_named() -> None:
    weights = get_weights(_net(0))
    bad = _replace(_replace(weights, "fc2.weight", np.zeros((1,), np.float32)), "fc1.bias", np.zeros(2, np.float32))
    with pytest.raises(AppError, match=re.escape("'fc1.bias'")):
        set_weights(_net(1), bad)


def test_tensors_numpy_cannot_hold_are_refused_by_name() -> None:
    net = nn.Linear(2, 2).to(torch.bfloat16)
    with pytest.raises(AppError, match=r"get_weights: tensor 'weight' has dtype torch\.bfloat16"):
        get_weights(net)
    weights = {"weight": np.zeros((2, 2), np.float32), "bias": np.zeros(2, np.float32)}
    with pytest.raises(AppError, match=r"set_weights: the module's tensor 'weight' has dtype torch\.bfloat16"):
        set_weights(net, weights)


def _no_accelerator(monkeypatch: pytest.MonkeyPatch, cuda: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_pick_device_auto_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerator(monkeypatch)
    assert pick_device() == torch.device("cpu") and pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerator(monkeypatch, cuda=2)
    assert pick_device() == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=re.escape("device 'cuda:2' is not available on this machine")):
        pick_device("cuda:2")


@pytest.mark.parametrize("forced", ["cuda", "cuda:0", "mps"])
def test_pick_device_refuses_a_device_this_machine_lacks(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    _no_accelerator(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        pick_device(forced)
    assert str(caught.value) == f"device '{forced}' is not available on this machine"


def test_the_real_machine_without_gpu() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device 'cuda' is not available on this machine$"):
        pick_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:x", ""])
def test_pick_device_unknown_string_lists_the_accepted_values(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        pick_device(bad)
    message = str(caught.value)
    assert "\n" not in message and repr(bad) in message
    assert all(v in message for v in ("'auto'", "'cpu'", "'cuda'", "'cuda:N'", "'mps'"))
