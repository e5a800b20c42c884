"""Writes a run directory from bus events: config.json, rounds.csv, clients.csv, model.safetensors.

An observer: it subscribes to coordinator events and never touches the coordinator. Rows are
appended and flushed per round, so a crashed run keeps everything up to its last round.

Metrics are open (an app reports any names): every metric gets its own column, the global ones
under their names in rounds.csv (``r2``), the client-weighted training ones as ``train_<name>``,
and each client's in clients.csv. A name first seen in a later round adds its column then: the file
is rewritten once with the wider header (earlier rows have the cell empty).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any

from fedhive.core import codec
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus

ROUND_FIELDS = [
    "round",
    "loss",
    "accuracy",
    "train_loss",
    "train_accuracy",
    "updates",
    "selected",
    "examples",
    "duration_s",
    "missing",
    "bytes_received",  # update payload bytes accepted this round, as they arrived (compressed or not)
    "compression_ratio",  # the same updates as dense float32, divided by bytes_received
]
CLIENT_FIELDS = ["round", "client", "num_examples", "loss", "accuracy", "bytes", "status"]


class RunDirectory:
    def __init__(self, root: str | Path, config: dict[str, Any], *, resume_after: int = 0) -> None:
        """``resume_after=N``: a resumed session; rows of rounds 1..N already written are kept."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self._rounds_w = GrowingCsv(self.root / "rounds.csv", ROUND_FIELDS, resume_after)
        self._clients_w = GrowingCsv(self.root / "clients.csv", CLIENT_FIELDS, resume_after)
        self._round_bytes: dict[int, tuple[int, int]] = {}  # round -> (updates accepted, bytes)
        self.bytes_received = 0  # over the whole session
        self.float32_bytes = 0  # what the same updates weigh as dense float32

    @property
    def model_path(self) -> Path:
        return self.root / "model.safetensors"

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, self._on_update)
        bus.on(ev.UpdateRejected, self._on_rejected)
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.SessionCompleted, self._on_completed)
        bus.on(ev.BestModel, self._on_best)
        bus.on(ev.ClientEvaluated, self._on_evaluated)
        bus.on(ev.UpdateAcceptedVia, self._on_update_via)

    def _on_update(self, e: ev.UpdateAccepted) -> None:
        n, b = self._round_bytes.get(e.round, (0, 0))
        self._round_bytes[e.round] = (n + 1, b + e.nbytes)
        self._clients_w.writerow(
            {
                "round": e.round,
                "client": e.client_id,
                "num_examples": e.num_examples,
                **{name: _f(value) for name, value in e.metrics.items()},
                "bytes": e.nbytes,
                "status": "accepted",
            }
        )

    def _on_update_via(self, e: ev.UpdateAcceptedVia) -> None:
        # A client behind a combiner: its update came folded into the combiner's partial (whose own
        # row carries the bytes).
        row = {
            "round": e.round,
            "client": e.client_id,
            "num_examples": e.num_examples,
            "status": f"accepted via {e.via}",
        }
        self._clients_w.writerow({**row, **{name: _f(value) for name, value in e.metrics.items()}})

    def _on_evaluated(self, e: ev.ClientEvaluated) -> None:
        # The client's figures for the round's global model, on its own data: a row of its own.
        row = {"round": e.round, "client": e.client_id, "num_examples": e.num_examples, "status": "evaluated"}
        self._clients_w.writerow({**row, **{name: _f(value) for name, value in e.metrics.items()}})

    def _on_rejected(self, e: ev.UpdateRejected) -> None:
        self._clients_w.writerow({"round": e.round, "client": e.client_id, "status": f"rejected: {e.reason}"})

    def _on_round(self, e: ev.RoundCompleted) -> None:
        n, nbytes = self._round_bytes.pop(e.round, (0, 0))
        dense = n * e.params.size * 4
        self.bytes_received += nbytes
        self.float32_bytes += dense
        self._rounds_w.writerow(
            {
                "round": e.round,
                **{name: _f(value) for name, value in e.metrics.items()},
                **{f"train_{name}": _f(value) for name, value in e.train_metrics.items()},
                "updates": e.num_updates,
                "selected": e.num_selected,
                "examples": e.num_examples,
                "duration_s": f"{e.duration_s:.4f}",
                "missing": " ".join(e.late_or_missing),
                "bytes_received": nbytes,
                "compression_ratio": f"{dense / nbytes:.3f}" if nbytes else "",
            }
        )
        self._rounds_w.flush()
        self._clients_w.flush()

    @property
    def best_path(self) -> Path:
        return self.root / "best.safetensors"

    def _on_best(self, e: ev.BestModel) -> None:
        # Written as it improves: a crashed run keeps its best model so far.
        meta = {"round": str(e.round), "metric": e.metric, "value": repr(e.value)}
        write_model(self.best_path, e.params, meta)

    def _on_completed(self, e: ev.SessionCompleted) -> None:
        write_model(self.model_path, e.params, {"rounds": str(e.rounds)})
        self.close()

    def close(self) -> None:
        self._rounds_w.close()
        self._clients_w.close()


def write_model(path: Path, params: Any, metadata: dict[str, str] | None = None) -> None:
    """Write atomically (temp file + rename): a reader never sees half a model."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(codec.encode(params, metadata))
    os.replace(tmp, path)


class GrowingCsv:
    """A CSV file whose header grows when a row brings a column it has not seen."""

    def __init__(self, path: Path, fields: list[str], keep_through: int = 0) -> None:
        self.path = path
        kept: list[dict[str, str]] = []
        if keep_through > 0 and path.exists():
            # Rows of rounds after the checkpoint are dropped (they run again).
            with path.open(newline="") as old:
                reader = csv.DictReader(old)
                fields = [*fields, *(f for f in reader.fieldnames or [] if f not in fields)]
                kept = [r for r in reader if r.get("round", "").isdigit() and int(r["round"]) <= keep_through]
        self.fields = list(fields)
        self._rewrite(kept)

    def writerow(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.fields]
        if new:
            self._file.close()
            with self.path.open(newline="") as old:
                rows = list(csv.DictReader(old))
            self.fields += new
            self._rewrite(rows)
        self._writer.writerow(row)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        # A temporary file and a rename: a crash right now loses nothing.
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)
        self._file: IO[str] = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"
