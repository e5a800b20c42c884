"""Keeps the metadata store in step with a running session: an observer on its coordinator's bus.

After every round the global parameters and the strategy state go to the artifact store
(content-addressed safetensors) and the checkpoint row, the round row and the per-client results
are written; a restarted coordinator resumes from the last checkpoint. Database and artifact I/O
are blocking, so each write runs in a worker thread; the coordinator's bus waits for it, so the
next round never starts before the previous one is durable.

A round row also holds what the round cost on the wire (``bytes_received``: the accepted updates'
payload bytes); a client behind a combiner gets a result row of its own naming the combiner
(``via``), beside the combiner's row for its merged partial.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from fedhive.core import codec
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.resume import Checkpoint, decode_state, encode_state
from fedhive.storage import models_repo, sessions_repo, users_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.models import ResultStatus, SessionStatus
from fedhive.strategies.base import Strategy

log = logging.getLogger("fedhive.persistence")
T = TypeVar("T")


class SessionRecorder:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        session_id: str,
        strategy: Strategy,
        *,
        owner_id: int | None,
        model_name: str,
        model_spec: str,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.session_id = session_id
        self.strategy = strategy
        self.owner_id = owner_id
        self.model_name = model_name
        self.model_spec = model_spec
        self._best: ev.BestModel | None = None  # the best round's model so far (the event's own arrays)
        self._round_bytes: dict[int, int] = {}  # round -> payload bytes of its accepted updates so far

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.SessionStarted, self._on_started)
        bus.on(ev.UpdateAccepted, self._on_accepted)
        bus.on(ev.UpdateAcceptedVia, self._on_accepted_via)
        bus.on(ev.UpdateRejected, self._on_rejected)
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.SessionCompleted, self._on_completed)
        bus.on(ev.BestModel, self._on_best)
        bus.on(ev.SessionFailedEvent, self._on_failed)

    async def _write(self, what: Callable[[], T]) -> T:
        return await asyncio.to_thread(what)

    async def _on_started(self, _: ev.SessionStarted) -> None:
        def write() -> None:
            with self.db.session() as s:
                sessions_repo.set_session_status(s, self.session_id, SessionStatus.RUNNING)

        await self._write(write)

    async def _on_accepted(self, e: ev.UpdateAccepted) -> None:
        self._round_bytes[e.round] = self._round_bytes.get(e.round, 0) + e.nbytes

        def write() -> None:
            with self.db.session() as s:
                sessions_repo.record_client_result(
                    s,
                    self.session_id,
                    e.round,
                    e.client_id,
                    status=ResultStatus.ACCEPTED,
                    num_examples=e.num_examples,
                    metrics=e.metrics,
                )

        await self._write(write)

    async def _on_accepted_via(self, e: ev.UpdateAcceptedVia) -> None:
        def write() -> None:
            with self.db.session() as s:
                sessions_repo.record_client_result(
                    s,
                    self.session_id,
                    e.round,
                    e.client_id,
                    status=ResultStatus.ACCEPTED,
                    num_examples=e.num_examples,
                    metrics=e.metrics,
                    via=e.via,
                )

        await self._write(write)

    async def _on_rejected(self, e: ev.UpdateRejected) -> None:
        status = ResultStatus.LATE if e.reason == "late" else ResultStatus.REJECTED

        def write() -> None:
            with self.db.session() as s:
                sessions_repo.record_client_result(
                    s, self.session_id, e.round, e.client_id, status=status, reason=e.reason[:500]
                )

        await self._write(write)

    async def _on_round(self, e: ev.RoundCompleted) -> None:
        state = self.strategy.state()
        nbytes = self._round_bytes.pop(e.round, 0)

        def write() -> None:
            params_ref = self.artifacts.put(codec.encode(e.params))
            state_bytes = encode_state(state)
            state_ref = self.artifacts.put(state_bytes) if state_bytes is not None else None
            metrics = {
                **e.metrics,
                "train": e.train_metrics,
                "selected": e.num_selected,
                "missing": e.late_or_missing,
                "bytes_received": nbytes,
                **self.strategy.round_metrics(),
            }
            with self.db.session() as s:
                # One unit: a round is recorded if and only if its checkpoint is.
                sessions_repo.save_checkpoint(s, self.session_id, e.round, params_ref, state_ref)
                sessions_repo.record_round(
                    s, self.session_id, e.round, metrics=metrics, num_updates=e.num_updates, duration_s=e.duration_s
                )

        await self._write(write)

    async def _on_best(self, e: ev.BestModel) -> None:
        self._best = e

    async def _on_completed(self, e: ev.SessionCompleted) -> None:
        best = self._best
        ended = (
            f"stopped early after round {e.rounds}: no new best within the session's patience"
            if e.stopped_early
            else f"completed all {e.rounds} rounds"
        )

        def write() -> None:
            ref = self.artifacts.put(codec.encode(e.params))
            with self.db.session() as s:
                if self.owner_id is not None:
                    if best is not None and best.params is not e.params:
                        # The best round's model beside the final one: its own version, marked by
                        # ``best_round`` (and the figure that made it the best) in its metrics.
                        models_repo.add_model_version(
                            s,
                            self.owner_id,
                            self.model_name,
                            artifact_ref=self.artifacts.put(codec.encode(best.params)),
                            spec={"tensors": best.params.spec.to_json()},
                            model_spec=self.model_spec,
                            session_id=self.session_id,
                            metrics={best.metric: best.value, "best_round": float(best.round)},
                            create=True,
                        )
                    version = models_repo.add_model_version(
                        s,
                        self.owner_id,
                        self.model_name,
                        artifact_ref=ref,
                        spec={"tensors": e.params.spec.to_json()},
                        model_spec=self.model_spec,
                        session_id=self.session_id,
                        metrics=e.metrics
                        | ({"best_round": float(best.round)} if best is not None and best.params is e.params else {}),
                        create=True,
                    )
                    sessions_repo.set_final_model(s, self.session_id, version.id)
                sessions_repo.set_session_status(s, self.session_id, SessionStatus.COMPLETED, reason=ended)
                users_repo.release_clients(s, self.session_id)

        await self._write(write)
        log.info("session %s completed after %d rounds", self.session_id, e.rounds)

    async def _on_failed(self, e: ev.SessionFailedEvent) -> None:
        def write() -> None:
            with self.db.session() as s:
                sessions_repo.set_session_status(s, self.session_id, SessionStatus.FAILED, reason=e.reason[:2000])
                users_repo.release_clients(s, self.session_id)

        await self._write(write)


def load_checkpoint(db: Database, artifacts: ArtifactStore, session_id: str) -> Checkpoint | None:
    """The last completed round of a session (global params, strategy state), or None before round 1."""
    with db.session(read_only=True) as s:
        row = sessions_repo.latest_checkpoint(s, session_id)
        if row is None:
            return None
        rnd, params_ref, state_ref = row.round, row.params_ref, row.state_ref
    params = codec.decode(artifacts.get(params_ref), max_bytes=1 << 34, what="checkpoint")
    return Checkpoint(rnd, params, decode_state(artifacts.get(state_ref)) if state_ref else {})
