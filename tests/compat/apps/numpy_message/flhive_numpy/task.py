"""flhive-numpy: data and training of a linear model, in plain NumPy."""

import numpy as np

TRUE_WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0, -1.0], dtype=np.float32)


def load_data(partition_id: int, num_examples: int = 64):
    """The node's own data: drawn from its partition-id, so every node has different data."""
    rng = np.random.default_rng(1000 + partition_id)
    x = rng.normal(size=(num_examples, TRUE_WEIGHTS.size)).astype(np.float32)
    y = x @ TRUE_WEIGHTS + 0.3 + 0.1 * rng.normal(size=num_examples).astype(np.float32)
    return x, y


def train(w, b, x, y, lr: float, epochs: int):
    """Full-batch gradient descent on the mean squared error; the loss before the last step."""
    loss = 0.0
    for _ in range(epochs):
        err = x @ w + b - y
        loss = float(np.mean(err**2))
        w = w - lr * 2 * x.T @ err / len(y)
        b = b - lr * 2 * np.mean(err, keepdims=True)
    return w.astype(np.float32), b.astype(np.float32), loss


def mse(w, b, x, y) -> float:
    return float(np.mean((x @ w + b - y) ** 2))
