"""Moving a torch module's weights in and out of fedhive's ``Params``; picking a device.

Weights are the module's ``state_dict`` entries in order, buffers included (BatchNorm's running
statistics and its int64 ``num_batches_tracked``), each in its own dtype. ``get_weights`` copies
every tensor once, so the result never aliases the live module; ``set_weights`` checks everything
first and only then copies into the module's own tensors, so a failed call changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedhive.core.params import Params
from fedhive.errors import AppError, ConfigError

_CUDA_INDEX = re.compile(r"cuda:(\d+)")
_ACCEPTED = "'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
_NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {}  # filled on first use of each dtype


def get_weights(module: torch.nn.Module) -> Params:
    """The module's ``state_dict`` as numpy arrays on the CPU, in order, copied once."""
    out: dict[str, np.ndarray] = {}
    for name, value in _state(module, "get_weights").items():
        _numpy_dtype(value.dtype, f"get_weights: tensor {name!r}")
        tensor = value.detach()
        if tensor.device.type == "cpu":
            # .numpy() shares the module's memory: this is the one copy.
            out[name] = np.array(tensor.numpy(), order="C", copy=True)
        else:
            # .cpu() already made a fresh host tensor; copy again only to make it C-contiguous.
            out[name] = np.ascontiguousarray(tensor.cpu().numpy())
    return Params(out)


def set_weights(module: torch.nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy ``weights`` into the module's tensors in place, after checking names, shapes and
    dtypes against its ``state_dict``; raise ``AppError`` naming the first mismatch."""
    state = _state(module, "set_weights")
    for name, tensor in state.items():
        _check_one(name, tensor, weights)
    for name in weights:
        if name not in state:
            raise AppError(f"set_weights: unexpected tensor {name!r} (the module has no such entry)")
    with torch.no_grad():
        for name, tensor in state.items():
            _copy_into(tensor, weights[name])


def pick_device(preference: str = "auto") -> torch.device:
    """``"auto"``: cuda if available, else mps if available, else cpu. ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` and ``"mps"`` force that device; ``ConfigError`` if it is not available here."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' is not available on this machine")
        return torch.device("mps")
    index = _CUDA_INDEX.fullmatch(preference) if isinstance(preference, str) else None
    if preference == "cuda" or index:
        if not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} is not available on this machine")
        count = torch.cuda.device_count()
        if index and int(index.group(1)) >= count:
            raise ConfigError(f"device {preference!r} is not available on this machine (it has {count} CUDA devices)")
        return torch.device(preference)
    raise ConfigError(f"unknown device {preference!r}; accepted values: {_ACCEPTED}")


def _state(module: torch.nn.Module, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(module, torch.nn.Module):
        raise AppError(f"{what}: expected a torch.nn.Module, got {type(module).__name__}")
    state: dict[str, Any] = dict(module.state_dict())
    for name, value in state.items():
        # A module's get_extra_state() may put any object here; it is not a weight we can ship.
        if not isinstance(value, torch.Tensor):
            raise AppError(f"{what}: state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
    return state


def _check_one(name: str, tensor: torch.Tensor, weights: Mapping[str, np.ndarray]) -> None:
    if name not in weights:
        raise AppError(f"set_weights: missing tensor {name!r}")
    arr = weights[name]
    if not isinstance(arr, np.ndarray):
        raise AppError(f"set_weights: tensor {name!r} is a {type(arr).__name__}, not a numpy array")
    shape = tuple(tensor.shape)
    if arr.shape != shape:
        raise AppError(f"set_weights: tensor {name!r} has shape {arr.shape}, the module's is {shape}")
    expected = _numpy_dtype(tensor.dtype, f"set_weights: the module's tensor {name!r}")
    if arr.dtype != expected:
        raise AppError(
            f"set_weights: tensor {name!r} has dtype {_describe(arr.dtype)}, the module's is {_describe(expected)}"
        )


def _copy_into(tensor: torch.Tensor, arr: np.ndarray) -> None:
    # torch.from_numpy warns on a read-only array (fedhive hands apps read-only views) and rejects
    # negative strides: give it a private contiguous copy then, one tensor at a time. copy_ rather
    # than writing through numpy, as load_state_dict does: it works on any device and bumps the
    # tensor's version counter, so autograd still notices a graph that saw the old values.
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.array(arr, order="C", copy=True)
    tensor.copy_(torch.from_numpy(arr))


def _numpy_dtype(dtype: torch.dtype, what: str) -> np.dtype[Any]:
    found = _NUMPY_DTYPES.get(dtype)
    if found is None:
        try:
            found = _NUMPY_DTYPES[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
        except TypeError:  # bfloat16, float8, quantized...: numpy has no such dtype
            raise AppError(f"{what} has dtype {dtype}, which numpy cannot hold; convert the module first") from None
    return found


def _describe(dtype: np.dtype[Any]) -> str:
    # A big-endian float32 is named "float32" too: say so, or the message would read "a is not a".
    return dtype.name if dtype.isnative else f"{dtype.name} ({dtype.str}, non-native byte order)"
