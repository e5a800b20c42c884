"""MLflow runs of the nodes that are not a session's coordinator: combiners and peers.

``MlflowTracker`` tracks a session from its coordinator (a parent run, a child run per client).
The other kinds of node track themselves, each in a run of its own, tagged with its role
(``fedhive.role``) so that the coordinator's run stays the one a session's id finds:

- a combiner (``fedhive combiner --mlflow``): one run per session it serves, nested under nothing,
  tagged with the session id (known from the coordinator's ENABLE) and its combiner id; one step per
  round: how many of its clients were selected, sent an accepted update or were refused, their
  examples, and their metrics averaged by examples (what its partial carried upstream);
- a peer (``fedhive peer --mlflow``): one run per peer, one step per round (the round's metrics as
  this peer computed them, the number of peers whose updates it merged), the final model's digest
  as a tag at the end; and, as the event-driven system fedhive grew from did it, one run per
  trainer per round, nested under the peer's run, holding that round's figures and digest.

As for ``MlflowTracker``: every MLflow call is blocking and runs in a worker thread, in event
order; the first failure turns tracking off for the node (one warning line) and never stops it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from fedhive.core.envelope import Kind
from fedhive.core.params import Params
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.downstream import COORDINATOR_ID
from fedhive.runtime.peer import PeerRoundCompleted
from fedhive.tracking.mlflow_model import import_mlflow
from fedhive.tracking.mlflow_store import PARAM_KEYS, ROLE_TAG, SESSION_TAG, experiment_named, now_ms, param_list
from fedhive.tracking.run_models import log_model, register_model

log = logging.getLogger("fedhive.mlflow")
COMBINER_TAG = "fedhive.combiner_id"
PEER_TAG = "fedhive.peer_id"
DIGEST_TAG = "fedhive.digest"


class _NodeRun:
    """One node's run: created on demand, metrics by step, ended once."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self._client: Any = import_mlflow().MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self.failure: str | None = None

    async def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self.failure is not None:
            return
        try:
            await asyncio.to_thread(fn, *args)
        except Exception as exc:  # any MLflow failure ends tracking, never the node
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failure = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning("MLflow tracking is off for the rest of this node's run: %s", self.failure)

    def _experiment_id(self) -> str:
        return experiment_named(self._client, self.experiment, self.tracking_uri)

    def _create(self, name: str, tags: Mapping[str, str], params: Mapping[str, object] | None = None) -> str:
        run = self._client.create_run(self._experiment_id(), run_name=name, tags=dict(tags))
        if params:
            self._client.log_batch(run.info.run_id, params=param_list(dict(params)))
        return str(run.info.run_id)

    def _log(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        if batch:
            self._client.log_batch(run_id, metrics=batch)

    def end(self, failed: str | None = None) -> None:
        """Blocking; after the node stopped. FINISHED, or FAILED with the reason tagged."""
        if self.run_id is None or self.failure is not None:
            return
        try:
            if failed:
                self._client.set_tag(self.run_id, "fedhive.failure", failed[:5000])
            self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        except Exception as exc:
            self._failed(exc)


class CombinerRun(_NodeRun):
    def __init__(self, tracking_uri: str, combiner_id: str, *, experiment: str = "fedhive") -> None:
        super().__init__(tracking_uri, experiment)
        self.combiner_id = combiner_id
        self.session_id: str | None = None
        self._round: tuple[int, int] | None = None  # (round, attempt) being counted
        self._selected = 0
        self._accepted: list[tuple[int, Mapping[str, float]]] = []  # examples, metrics
        self._refused = 0
        self.rounds_logged: list[int] = []

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.MessageIn, self._on_message)
        bus.on(ev.RoundStarted, self._on_round_started)
        bus.on(ev.UpdateAccepted, self._on_accepted)
        bus.on(ev.UpdateRejected, self._on_refused)

    async def _on_message(self, e: ev.MessageIn) -> None:
        msg = e.message
        if msg.sender == COORDINATOR_ID and msg.kind is Kind.ENABLE and self.session_id is None:
            self.session_id = msg.envelope.session_id
            await self._guarded(self._start, self.session_id)

    def _start(self, session_id: str) -> None:
        tags = {SESSION_TAG: session_id, COMBINER_TAG: self.combiner_id, ROLE_TAG: "combiner"}
        self.run_id = self._create(f"combiner-{self.combiner_id}-{session_id}", tags)

    async def _on_round_started(self, e: ev.RoundStarted) -> None:
        await self.flush()
        self._round, self._selected = (e.round, e.attempt), len(e.selected)

    async def _on_accepted(self, e: ev.UpdateAccepted) -> None:
        if self._round is not None and e.round == self._round[0]:
            self._accepted.append((e.num_examples, e.metrics))
            await self._flush_if_answered()

    async def _on_refused(self, e: ev.UpdateRejected) -> None:
        if self._round is not None and e.round == self._round[0]:  # not a late one of a closed round
            self._refused += 1
            await self._flush_if_answered()

    async def _flush_if_answered(self) -> None:
        if self._round is not None and len(self._accepted) + self._refused >= self._selected:
            await self.flush()

    async def flush(self) -> None:
        """Log the round being counted (its clients all answered, or the next round began)."""
        counted = self._take()
        if counted is not None and self.run_id is not None:
            await self._guarded(self._log, self.run_id, *counted)
            self.rounds_logged.append(counted[0])

    def _take(self) -> tuple[int, dict[str, float]] | None:
        if self._round is None:
            return None
        rnd, accepted, refused, selected = self._round[0], self._accepted, self._refused, self._selected
        self._round, self._accepted, self._refused = None, [], 0
        figures = _weighted(accepted)
        figures |= {
            "clients_selected": float(selected),
            "clients_accepted": float(len(accepted)),
            "clients_refused": float(refused),
            "examples": float(sum(n for n, _ in accepted)),
        }
        return rnd, figures

    def end(self, failed: str | None = None) -> None:
        """Blocking; after the combiner stopped: a round still being counted, then the run's end."""
        counted = self._take()
        if counted is not None and self.run_id is not None and self.failure is None:
            try:
                self._log(self.run_id, *counted)
                self.rounds_logged.append(counted[0])
            except Exception as exc:
                self._failed(exc)
        super().end(failed)


class PeerRun(_NodeRun):
    def __init__(
        self,
        tracking_uri: str,
        name: str,
        config: Mapping[str, Any],
        *,
        experiment: str = "fedhive",
        register_as: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(tracking_uri, experiment)
        self.name = name
        self._config = config
        self._register_as = register_as
        self._tags = dict(tags or {})
        self.round_runs: dict[int, str] = {}
        self.digest: str | None = None
        self.model_version: str | None = None

    def attach(self, bus: EventBus) -> None:
        bus.on(PeerRoundCompleted, self._on_round)

    async def _on_round(self, e: PeerRoundCompleted) -> None:
        self.digest = e.digest
        await self._guarded(self._round, e)

    def _round(self, e: PeerRoundCompleted) -> None:
        if self.run_id is None:
            tags = {**self._tags, ROLE_TAG: "peer", PEER_TAG: e.peer_id, "fedhive.peer_name": self.name}
            params = {k: self._config[k] for k in PARAM_KEYS if self._config.get(k) is not None}
            self.run_id = self._create(self.name, tags, params)
        figures = {**e.metrics, "members": float(len(e.members))}
        self._log(self.run_id, e.round, figures)
        # The trainer's run of this round, as the event-driven seed system kept them.
        tags = {
            **self._tags, "mlflow.parentRunId": self.run_id, ROLE_TAG: "peer-round", PEER_TAG: e.peer_id,
            "fedhive.round": str(e.round), DIGEST_TAG: e.digest,
        }  # fmt: skip
        run_id = self._create(f"{self.name}-round-{e.round}", tags)
        self._log(run_id, e.round, figures)
        self._client.set_terminated(run_id, "FINISHED")
        self.round_runs[e.round] = run_id

    def finish(self, params: Params | None, failed: str | None = None) -> None:
        """Blocking; after the last round: the digest tagged, the model logged (and registered)."""
        if self.run_id is not None and self.failure is None and failed is None:
            try:
                if self.digest is not None:
                    self._client.set_tag(self.run_id, DIGEST_TAG, self.digest)
                if params is not None:
                    self._log_model(self.run_id, params)
            except Exception as exc:
                self._failed(exc)
        self.end(failed)

    def _log_model(self, run_id: str, params: Params) -> None:
        log_model(
            self._client,
            run_id,
            params,
            str(self._config.get("model")),
            {"digest": self.digest or "", "peer": self.name},
        )
        if self._register_as:
            tags = {**self._tags, DIGEST_TAG: self.digest or ""}
            self.model_version = register_model(self._client, self._register_as, run_id, tags)


def _weighted(accepted: list[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric averaged over the updates that report it, weighted by their examples."""
    sums: dict[str, list[float]] = {}
    for n, metrics in accepted:
        for key, value in metrics.items():
            if math.isfinite(value):
                total = sums.setdefault(key, [0.0, 0.0])
                total[0] += value * max(n, 1)
                total[1] += max(n, 1)
    return {k: s / w for k, (s, w) in sums.items() if w > 0}
