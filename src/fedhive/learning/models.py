"""The model zoo: model spec strings, parsed without torch, and the torch modules they build.

Specs (as given on the command line):
    simple-dnn            two hidden ReLU layers of 128 and 64 units (the P2P platform's SimpleDNN)
    simple-dnn:256,128,64 hidden layer widths of your choice
    logreg                a single linear layer (softmax regression) in torch
    logreg-np             softmax regression in plain numpy (fast; simulations and benchmarks)
    cnn                   a small CNN for 28x28 single-channel images (784 features, e.g. mnist5k)

Parsing never imports torch (a second and more at start-up), so the CLI can validate a spec at
once and numpy-only runs never pay for it. Layers are named, so parameter names on the wire read
``hidden1.weight`` rather than ``0.weight``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedhive.errors import ConfigError

if TYPE_CHECKING:
    import torch

MODEL_SPECS = ("simple-dnn", "simple-dnn:H1,H2,...", "logreg", "logreg-np", "cnn")
DEFAULT_HIDDEN = (128, 64)
CNN_SIDE = 28  # the cnn reads square single-channel images of this side


@dataclass(frozen=True, slots=True)
class ModelSpec:
    kind: str  # "simple-dnn" | "logreg" | "logreg-np" | "cnn"
    hidden: tuple[int, ...] = ()  # simple-dnn only: hidden layer widths

    @property
    def uses_torch(self) -> bool:
        return self.kind != "logreg-np"

    def __str__(self) -> str:
        if self.kind == "simple-dnn":
            return f"simple-dnn:{','.join(str(h) for h in self.hidden)}"
        return self.kind

    def check_fits(self, num_features: int) -> None:
        """Raise ``ConfigError`` if the model cannot read rows of ``num_features`` features."""
        if self.kind == "cnn" and num_features != CNN_SIDE * CNN_SIDE:
            raise ConfigError(
                f"model 'cnn' needs {CNN_SIDE}x{CNN_SIDE} images ({CNN_SIDE * CNN_SIDE} features), "
                f"but the data has {num_features} features; use simple-dnn or logreg"
            )


def parse_model_spec(spec: str) -> ModelSpec:
    kind, sep, arg = spec.strip().partition(":")
    if kind == "simple-dnn":
        if not sep:
            return ModelSpec(kind, DEFAULT_HIDDEN)
        try:
            hidden = tuple(int(part) for part in arg.split(","))
        except ValueError:
            raise ConfigError(f"model {spec!r}: hidden sizes must be integers, e.g. simple-dnn:128,64") from None
        if any(h < 1 for h in hidden):
            raise ConfigError(f"model {spec!r}: hidden sizes must be positive")
        return ModelSpec(kind, hidden)
    if kind in ("logreg", "logreg-np", "cnn"):
        if sep:
            raise ConfigError(f"model {kind!r} takes no argument, got {spec!r}")
        return ModelSpec(kind)
    raise ConfigError(f"unknown model {spec!r}; valid forms: {', '.join(MODEL_SPECS)}")


def build_model(spec: ModelSpec, num_features: int, num_classes: int) -> torch.nn.Module:
    """A freshly initialised torch module (seed torch's RNG first for reproducible weights)."""
    from torch import nn

    if num_features < 1 or num_classes < 2:
        raise ConfigError(f"a model needs features and 2+ classes, got {num_features} and {num_classes}")
    spec.check_fits(num_features)
    if spec.kind == "logreg":
        return nn.Sequential(OrderedDict(linear=nn.Linear(num_features, num_classes)))
    if spec.kind == "simple-dnn":
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = num_features
        for i, hidden in enumerate(spec.hidden, start=1):
            layers[f"hidden{i}"] = nn.Linear(width, hidden)
            layers[f"relu{i}"] = nn.ReLU()
            width = hidden
        layers["out"] = nn.Linear(width, num_classes)
        return nn.Sequential(layers)
    if spec.kind == "cnn":
        # 28x28 -> conv 16 -> pool 14x14 -> conv 32 -> pool 7x7 -> 64 -> classes (~110k params).
        return nn.Sequential(
            OrderedDict(
                image=nn.Unflatten(1, (1, CNN_SIDE, CNN_SIDE)),  # rows stay flat [n, 784] everywhere else
                conv1=nn.Conv2d(1, 16, kernel_size=3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(16, 32, kernel_size=3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                hidden=nn.Linear(32 * (CNN_SIDE // 4) ** 2, 64),
                relu3=nn.ReLU(),
                out=nn.Linear(64, num_classes),
            )
        )
    raise ConfigError(f"model {str(spec)!r} is the numpy trainer and has no torch module")
