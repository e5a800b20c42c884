"""Split a data set's rows among clients: IID or with the label skew real federations have.

Specs (strings, as given on the command line):
    iid              a random, even split
    dirichlet:ALPHA  per class, client shares drawn from Dirichlet(ALPHA) (Hsu et al. 2019);
                     small ALPHA (0.1) = strong skew, large ALPHA (100) = nearly IID
    label-shards:K   rows sorted by label, cut into clients*K shards, K shards per client
                     (McMahan et al. 2017: most clients see only K labels)
    label-range      each client gets the rows of a contiguous slice of the sorted labels, as the
                     DML system "sliced" its data; more clients than labels share a label's rows

Every result is disjoint, complete (the union is every row), deterministic for a seed, and leaves
no client empty. Index arrays are int64 and sorted.

A population larger than the data set has rows (``fedhive simulate --clients 15000000``) cannot
give each client rows of its own: the rows are partitioned into as many shards as there are rows
(``ShardIndex``), and client ``i`` holds shard ``i mod shards``. Nothing is kept per client: a
client's shard is computed from its index when it is sampled.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from fedhive.errors import ConfigError, DataError

PARTITION_SPECS = ("iid", "dirichlet:ALPHA", "label-shards:K", "label-range")
_DIRICHLET_REDRAWS = 10  # draws tried before repairing empty clients by hand


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    kind: str  # "iid" | "dirichlet" | "label-shards" | "label-range"
    alpha: float = 0.0  # dirichlet only
    shards_per_client: int = 0  # label-shards only

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "label-shards":
            return f"label-shards:{self.shards_per_client}"
        return self.kind


def parse_partition_spec(spec: str) -> PartitionSpec:
    """Validate a partition spec without data (the CLI calls this before loading anything)."""
    kind, _, arg = spec.strip().partition(":")
    valid = f"valid specs: {', '.join(PARTITION_SPECS)}"
    if kind in ("iid", "label-range"):
        if arg:
            raise ConfigError(f"partition {kind!r} takes no argument, got {spec!r}")
        return PartitionSpec(kind)
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise ConfigError(f"partition {spec!r}: ALPHA must be a number, e.g. dirichlet:0.5") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"partition {spec!r}: ALPHA must be a positive finite number")
        return PartitionSpec(kind, alpha=alpha)
    if kind == "label-shards":
        try:
            shards = int(arg)
        except ValueError:
            raise ConfigError(f"partition {spec!r}: K must be an integer, e.g. label-shards:2") from None
        if shards < 1:
            raise ConfigError(f"partition {spec!r}: K must be at least 1")
        return PartitionSpec(kind, shards_per_client=shards)
    raise ConfigError(f"unknown partition {spec!r}; {valid}")


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """Which partition shard each client of a population holds: client ``i`` holds shard
    ``i mod shards``. With no more clients than shards it is the identity (a shard each)."""

    clients: int
    shards: int

    @classmethod
    def for_rows(cls, clients: int, rows: int) -> ShardIndex:
        """A shard per client while the rows allow one, else a shard per row, shared."""
        if clients <= 0:
            raise ConfigError(f"number of clients must be positive, got {clients}")
        if rows <= 0:
            raise DataError("a data set without rows cannot be partitioned")
        return cls(clients, min(clients, rows))

    @property
    def shared(self) -> bool:
        """Whether clients share shards (more clients than rows)."""
        return self.clients > self.shards

    def shard_of(self, client: int) -> int:
        if not 0 <= client < self.clients:
            raise ConfigError(f"client index {client} is not in a population of {self.clients}")
        return client % self.shards


def partition(y: np.ndarray, num_clients: int, spec: str | PartitionSpec, seed: int) -> list[np.ndarray]:
    """Row indices per client for labels ``y`` (one sorted int64 array per client)."""
    parsed = spec if isinstance(spec, PartitionSpec) else parse_partition_spec(spec)
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {labels.shape}")
    if num_clients <= 0:
        raise ConfigError(f"number of clients must be positive, got {num_clients}")
    if num_clients > len(labels):
        raise DataError(f"{num_clients} clients but only {len(labels)} samples")
    rng = np.random.default_rng(seed)
    if parsed.kind == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_clients)
    elif parsed.kind == "dirichlet":
        parts = _dirichlet(labels, num_clients, parsed.alpha, rng)
    elif parsed.kind == "label-shards":
        parts = _label_shards(labels, num_clients, parsed.shards_per_client, rng)
    else:
        parts = _label_range(labels, num_clients, rng)
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def _dirichlet(y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(y)
    clients = np.arange(num_clients)
    owner = np.empty(len(y), dtype=np.int64)  # owner[row] = client; vectorised, no per-piece lists
    for _ in range(_DIRICHLET_REDRAWS):
        for cls in classes:
            rows = rng.permutation(np.flatnonzero(y == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            # min(): float rounding in cumsum must never cut past the end
            cuts = np.minimum(np.cumsum(shares)[:-1] * len(rows), len(rows)).astype(np.int64)
            owner[rows] = np.repeat(clients, np.diff(cuts, prepend=0, append=len(rows)))
        sizes = np.bincount(owner, minlength=num_clients)
        parts = np.split(np.argsort(owner, kind="stable"), np.cumsum(sizes)[:-1])
        if sizes.min() > 0:
            return parts
    return _fill_empty_clients(parts, rng)


def _fill_empty_clients(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    # Small ALPHA with many clients leaves some empty whatever we redraw; giving each one a random
    # row of the currently largest client keeps the skew while honouring "no client is empty".
    for empty in [i for i, p in enumerate(parts) if len(p) == 0]:
        largest = int(np.argmax([len(p) for p in parts]))
        pick = int(rng.integers(len(parts[largest])))
        parts[empty] = parts[largest][pick : pick + 1]
        parts[largest] = np.delete(parts[largest], pick)
    return parts


def _label_shards(y: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Shuffle first so rows of one label are in random order inside the label-sorted sequence.
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    # With fewer rows than clients*K, one-row shards: every client still gets at least one.
    num_shards = min(num_clients * per_client, len(y))
    shards = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards)
    return [np.concatenate([shards[s] for s in order[client::num_clients]]) for client in range(num_clients)]


def _label_range(y: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    classes, counts = np.unique(y, return_counts=True)
    if num_clients <= len(classes):
        return [np.flatnonzero(np.isin(y, labels)) for labels in np.array_split(classes, num_clients)]
    # More clients than labels: a label's rows are split among a contiguous group of clients, the
    # group's size proportional to the label's row count (and never above it, so none is empty).
    group_sizes = _clients_per_label(counts, num_clients)
    parts: list[np.ndarray] = []
    for cls, group in zip(classes, group_sizes, strict=True):
        parts.extend(np.array_split(rng.permutation(np.flatnonzero(y == cls)), group))
    return parts


def _clients_per_label(counts: np.ndarray, num_clients: int) -> list[int]:
    sizes = [1] * len(counts)
    # Max-heap of rows per client; each extra client goes to the label with the most, among those
    # with rows to spare. Ties break on the label's position, so the result is deterministic.
    heap = [(-float(count), label) for label, count in enumerate(counts.tolist()) if count > 1]
    heapq.heapify(heap)
    for _ in range(num_clients - len(counts)):
        _, label = heapq.heappop(heap)  # never empty: num_clients <= number of rows
        sizes[label] += 1
        if sizes[label] < counts[label]:
            heapq.heappush(heap, (-counts[label] / sizes[label], label))
    return sizes
