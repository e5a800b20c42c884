"""A session's data plan: which data each peer trains on, and the held-out split for evaluation.

Two sources. A built-in data set (``digits``, ...): every peer computes its own shard from the
data spec, the partition, its part number and the seed, so no data moves at all. An uploaded
CSV: the platform splits it, partitions the training rows per the session's partition spec,
and stores each peer's shard in the artifact store as safetensors (``x``, ``y``); the session
config carries each shard's reference and sha256, and the peer downloads and verifies it.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import DataError
from fedhive.learning.datasets import Dataset, load_dataset, split_train_test
from fedhive.learning.federation_data import DataSpec, client_shard
from fedhive.learning.partition import partition
from fedhive.storage.artifacts import ArtifactStore

MAX_SHARD_BYTES = 1 << 31


@dataclass(frozen=True)
class DataPlan:
    data: dict[str, Any]  # goes into SessionConfig.data: what each peer needs to find its shard
    test: Dataset | None  # the coordinator's held-out split (None: the app evaluates on its own data)


def plan_builtin(spec: DataSpec, peers: list[str], seed: int) -> DataPlan:
    parts = {peer: f"{i + 1}/{len(peers)}" for i, peer in enumerate(sorted(peers))}
    _, test = client_shard(spec, f"1/{len(peers)}", seed)
    return DataPlan({**spec.model_dump(), "parts": parts}, test)


def plan_uploaded_csv(
    artifacts: ArtifactStore, csv_ref: str, label: str, partition_spec: str, peers: list[str], seed: int
) -> DataPlan:
    """Split and partition an uploaded CSV; store one shard per peer. Blocking: call in a thread."""
    with tempfile.TemporaryDirectory(prefix="fedhive-csv-") as tmp:
        path = Path(tmp) / "upload.csv"
        path.write_bytes(artifacts.get(csv_ref))
        ds = load_dataset("csv", csv_path=path, label=label)
    train, test = split_train_test(ds, 0.2, seed)
    shards = {}
    for peer, rows in zip(sorted(peers), partition(train.y, len(peers), partition_spec, seed), strict=True):
        blob = codec.encode(Params({"x": train.x[rows], "y": train.y[rows]}))
        ref = artifacts.put(blob)
        shards[peer] = {"ref": ref, "sha256": hashlib.sha256(blob).hexdigest()}
    data = {
        "dataset": "upload",
        "label": label,
        "partition": partition_spec,
        "shards": shards,
        "num_classes": ds.num_classes,
        "num_features": ds.num_features,
    }
    return DataPlan(data, test)


def peer_dataset(data: dict[str, Any], peer: str, seed: int, artifacts: ArtifactStore | None) -> Dataset:
    """The shard a peer trains on in a session, from the session config's ``data``."""
    if "shards" in data:
        entry = data["shards"].get(peer)
        if entry is None:
            raise DataError(f"the session holds no data shard for peer {peer!r}")
        if artifacts is None:
            raise DataError("this peer has no artifact store configured to download its data shard from")
        blob = artifacts.get(str(entry["ref"]))
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise DataError(f"data shard {entry['ref']} does not match its sha256")
        arrays = codec.decode(blob, max_bytes=MAX_SHARD_BYTES, what="data shard")
        x, y = np.array(arrays["x"]), np.array(arrays["y"])
        n_features, n_classes = int(data["num_features"]), int(data["num_classes"])
        names = tuple(f"f{i}" for i in range(n_features))
        return Dataset("upload", x, y, n_classes, names, tuple(str(c) for c in range(n_classes)))
    part = data.get("parts", {}).get(peer)
    if part is None:
        raise DataError(f"the session assigns no data part to peer {peer!r}")
    spec = DataSpec(**{k: v for k, v in data.items() if k in DataSpec.model_fields})
    shard, _ = client_shard(spec, str(part), seed)
    return shard
