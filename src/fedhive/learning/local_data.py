"""What a networked client trains on: its own CSV file, or for demos one part of a built-in set.

A demo client (``--dataset digits --partition dirichlet:0.5 --part 3/10``) computes its shard
from (dataset, partition, number of parts, seed) with ``client_shard``, exactly as the in-process
simulation does, so clients on different machines agree on who holds which rows without ever
exchanging data. The seed is the session's: a client registers with a shard drawn with ``--seed``
(the default 0) and, should the session's seed differ, the built-in app draws its shard again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhive.errors import ConfigError
from fedhive.learning.datasets import DATASET_NAMES, Dataset, load_dataset, standardize
from fedhive.learning.federation_data import DataSpec, client_shard, parse_part
from fedhive.learning.partition import parse_partition_spec


@dataclass
class LocalData:
    csv: Path | None = None
    label: str | None = None
    dataset: str | None = None
    partition: str = "iid"
    part: str | None = None
    test_fraction: float = 0.2
    _shards: dict[int, Dataset] = field(default_factory=dict, repr=False)

    def check(self) -> None:
        """Reject contradictory or incomplete options before anything loads or connects."""
        if self.csv is not None:
            if self.dataset is not None or self.part is not None:
                raise ConfigError("--csv is the client's own data: it does not combine with --dataset or --part")
            if not self.label:
                raise ConfigError("--csv needs --label, the name of the label column")
            if not self.csv.is_file():
                raise ConfigError(f"CSV file {self.csv} does not exist")
            return
        if self.dataset is None:
            raise ConfigError("give the client's data: --csv FILE --label COLUMN, or --dataset NAME --part I/N")
        if self.dataset not in DATASET_NAMES or self.dataset == "csv":
            raise ConfigError(f"unknown data set {self.dataset!r}; demo data sets: {', '.join(DATASET_NAMES[:-1])}")
        if self.part is None:
            raise ConfigError(f"--dataset {self.dataset} needs --part I/N: which of N parts this client holds")
        parse_part(self.part)
        parse_partition_spec(self.partition)

    def describe(self) -> str:
        if self.csv is not None:
            return f"{self.csv.name} (label {self.label})"
        return f"part {self.part} of {self.dataset} ({self.partition})"

    def shard(self, seed: int) -> Dataset:
        """This client's training rows; for a demo part they depend on the session's seed."""
        key = 0 if self.csv is not None else seed  # a CSV is the same whatever the seed
        if key not in self._shards:
            self._shards[key] = self._load(seed)
        return self._shards[key]

    def _load(self, seed: int) -> Dataset:
        if self.csv is not None:
            # The client's own rows, standardised with their own statistics: nothing else is known here.
            ds = load_dataset("csv", csv_path=self.csv, label=self.label)
            return standardize(ds, ds)[0]
        assert self.dataset is not None and self.part is not None
        spec = DataSpec(dataset=self.dataset, partition=self.partition, test_fraction=self.test_fraction)
        return client_shard(spec, self.part, seed)[0]

    def label_counts(self, seed: int) -> dict[str, int]:
        ds = self.shard(seed)
        counts = np.bincount(ds.y, minlength=ds.num_classes)
        return {name: int(n) for name, n in zip(ds.class_names, counts, strict=True)}

    def node_settings(self) -> dict[str, str | float]:
        """The built-in app's ``ctx.node`` for this client (see ``learning.builtin_app``)."""
        if self.csv is not None:
            return {"csv": str(self.csv.resolve()), "label": str(self.label)}
        assert self.dataset is not None and self.part is not None
        return {
            "dataset": self.dataset,
            "partition": self.partition,
            "part": self.part,
            "test_fraction": self.test_fraction,
        }
