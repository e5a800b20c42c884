"""From a data spec to what a federation trains on: one shard per client and a held-out test set.

The same function serves the in-process simulation (all shards) and a demo client process that
takes part ``i`` of ``n`` (``fedhive client --dataset digits --part 3/10``): both compute the same
split and partition from the same seed, so shards agree across processes without any exchange.
A simulated population (``shared=True``) with more clients than training rows shares shards
(``partition.ShardIndex``): ``shard(i)`` is client ``i``'s, and ``shards`` holds one per row, not
one per client. Without ``shared`` more clients than rows is an error, as it always was.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedhive.errors import ConfigError
from fedhive.learning.datasets import Dataset, load_dataset, split_train_test
from fedhive.learning.partition import ShardIndex, parse_partition_spec, partition


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    csv: str | None = None
    label: str | None = None
    partition: str = "iid"
    test_fraction: float = Field(default=0.2, gt=0, lt=1)

    def check(self) -> None:
        """Validate the spec strings without loading data (fail before any work starts)."""
        parse_partition_spec(self.partition)
        if self.dataset == "csv" and self.csv and not Path(self.csv).is_file():
            raise ConfigError(f"CSV file {self.csv} does not exist")


@dataclass(frozen=True)
class FederatedData:
    shards: list[Dataset]
    test: Dataset
    index: ShardIndex | None = None  # None: a shard per client, in client order

    def shard(self, client: int) -> Dataset:
        """Client ``client``'s training rows (0-based)."""
        return self.shards[client if self.index is None else self.index.shard_of(client)]

    @property
    def num_classes(self) -> int:
        return self.test.num_classes

    @property
    def num_features(self) -> int:
        return self.test.num_features


def prepare(spec: DataSpec, num_clients: int, seed: int, *, shared: bool = False) -> FederatedData:
    # Cached per process: N virtual clients in one process all need the same split, and loading
    # and partitioning mnist5k takes tens of milliseconds each time.
    return _prepare_cached(spec.model_dump_json(), num_clients, seed, shared)


@functools.lru_cache(maxsize=8)
def _prepare_cached(spec_json: str, num_clients: int, seed: int, shared: bool = False) -> FederatedData:
    spec = DataSpec.model_validate_json(spec_json)
    ds = load_dataset(spec.dataset, csv_path=spec.csv, label=spec.label)
    train, test = split_train_test(ds, spec.test_fraction, seed)
    index = ShardIndex.for_rows(num_clients, len(train)) if shared else ShardIndex(num_clients, num_clients)
    parts = partition(train.y, index.shards, spec.partition, seed)
    return FederatedData([train.take(idx) for idx in parts], test, index if index.shared else None)


def parse_part(text: str) -> tuple[int, int]:
    """``"3/10"`` -> (3, 10): part 3 (1-based) of 10."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part must look like 3/10 (part 3 of 10), got {text!r}") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--part {text}: the part number must be between 1 and {n}")
    return i, n


def client_shard(spec: DataSpec, part: str, seed: int) -> tuple[Dataset, Dataset]:
    """(this client's training shard, the held-out test split) for part ``i/n``."""
    i, n = parse_part(part)
    data = prepare(spec, n, seed)
    return data.shard(i - 1), data.test
