"""Tracks a session in MLflow from bus events: an observer, like ``RunDirectory``.

One parent run per session (params: strategy, hyperparameters, partition, model spec; metrics:
global loss/accuracy per round, step = round) and one child run per client (its train metrics per
round). With ``run_per_round`` each client's round is also a run of its own, nested under the
client's (tags ``fedhive.client_id`` and ``fedhive.round``): one run per trainer per round, as an
event-driven trainer logs it, for those who compare trainings run by run; off by default, since a
session of 1000 clients and 100 rounds makes 100,000 runs. At the end the final model is logged
as an MLflow model (safetensors + ``python_function`` flavour, see ``mlflow_model``) and
registered as a new version of ``register_as``. A
decentralised session watched by ``fedhive serve`` ends with no model (its peers hold it, the
server never does: ``service.peer_session_facts``): its runs get the figures only.

``tracking_uri`` is a local store by default (``sqlite:///<dir>/mlflow.db``: no server to start) or
an MLflow tracking server's URL. Every MLflow call is blocking I/O (HTTP or SQLite), so handlers run
it in a worker thread; the bus awaits each handler, which keeps the calls in event order. The
``MlflowClient`` API with explicit run ids is used rather than ``mlflow.start_run``: the fluent
API keeps its active run in process globals, which two sessions in one platform would share.

Tracking is an observer and must never end a training session: the first MLflow failure (server
gone, disk full) is logged once, kept in ``failure`` and turns the tracker off for the session.

How a session ends is how its runs end: FINISHED, FAILED (the reason tagged ``fedhive.failure``),
or KILLED for a cancelled one (``SessionCancelled``; the reason tagged ``fedhive.cancelled``). A
session deleted from the platform has its runs marked deleted (``session_runs``). A session started
from a registered model carries tags naming it (``mlflow_store.start_tags``: its ``use_case``, the
model version and the run that produced it), on its runs and on the version it registers; a
session resumed after a crash takes them back from its run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.tracking.mlflow_model import import_mlflow
from fedhive.tracking.mlflow_store import (
    DATA_KEYS,
    PARAM_KEYS,
    ROLE_TAG,
    SESSION_TAG,
    START_TAGS,
    experiment_named,
    now_ms,
    param_list,
)
from fedhive.tracking.run_models import log_model, register_model
from fedhive.tracking.session_runs import coordinator_runs

log = logging.getLogger("fedhive.mlflow")


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str = "fedhive",
        register_as: str | None = None,
        tags: dict[str, str] | None = None,
        run_per_round: bool = False,
    ) -> None:
        mlflow = import_mlflow()  # ConfigError naming the extra, before any session starts
        self._run_per_round = run_per_round
        self._client: Any = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self._experiment = experiment
        self._register_as = register_as
        self._tags = dict(tags or {})
        self._model_spec = ""
        self.parent_run_id: str | None = None
        self.child_runs: dict[str, str] = {}  # client id -> run id
        self.model_version: str | None = None
        self.best_version: str | None = None  # the registered version of the best round's model
        self._best: ev.BestModel | None = None
        self.failure: str | None = None
        self._mutex = threading.Lock()
        prefix = "sqlite:///"
        if tracking_uri.startswith(prefix):  # SQLite creates the file, not its directory
            Path(tracking_uri[len(prefix) :]).resolve().parent.mkdir(parents=True, exist_ok=True)

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.SessionStarted, self._on_started)
        bus.on(ev.UpdateAccepted, self._on_update)
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.SessionCompleted, self._on_completed)
        bus.on(ev.SessionFailedEvent, self._on_failed)
        bus.on(ev.SessionCancelled, self._on_cancelled)
        bus.on(ev.BestModel, self._on_best)

    # -- handlers: each hands its blocking part to a thread ------------------------------------
    async def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self.failure is not None:
            return
        try:
            await asyncio.to_thread(self._one_at_a_time, fn, *args)
        except Exception as exc:  # any MLflow failure ends tracking, never training
            self.failure = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            log.warning("MLflow tracking is off for the rest of this session: %s", self.failure)

    def _one_at_a_time(self, fn: Callable[..., None], *args: Any) -> None:
        # The bus keeps calls in order, but a cancelled session's coordinator is stopped while a
        # call may still run in its thread: the cancellation's call waits for it (the run it
        # ends may be the one that call is creating).
        with self._mutex:
            fn(*args)

    async def _on_started(self, e: ev.SessionStarted) -> None:
        await self._guarded(self._start, e.session_id, e.config, e.clients, e.start_round > 1, e.population)

    async def _on_update(self, e: ev.UpdateAccepted) -> None:
        metrics = {**e.metrics, "num_examples": float(e.num_examples), "bytes": float(e.nbytes)}
        if not e.nbytes:  # a decentralised peer's report: its update went to its peers, not to us
            del metrics["bytes"]
        await self._guarded(self._log_client, e.client_id, e.round, metrics)

    async def _on_round(self, e: ev.RoundCompleted) -> None:
        metrics = {
            **e.metrics,
            **{f"train_{k}": v for k, v in e.train_metrics.items()},
            "updates": float(e.num_updates),
            "duration_s": e.duration_s,
        }
        await self._guarded(self._log, self.parent_run_id, e.round, metrics)

    def _on_best(self, e: ev.BestModel) -> None:
        self._best = e  # logged (and registered, tagged best) when the session completes

    async def _on_completed(self, e: ev.SessionCompleted) -> None:
        await self._guarded(self._finish_with_model, e)

    async def _on_failed(self, e: ev.SessionFailedEvent) -> None:
        await self._guarded(self._end_all, "FAILED", e.reason)

    async def _on_cancelled(self, e: ev.SessionCancelled) -> None:
        await self._guarded(self._end_all, "KILLED", e.reason, "fedhive.cancelled")

    # -- blocking work ------------------------------------------------------------------------
    def _start(
        self,
        session_id: str,
        config: dict[str, object],
        clients: list[str],
        resumed: bool,
        population: int | None = None,
    ) -> None:
        """The session's parent run, and a child run per listed client (a population's clients,
        not listed, get theirs on their first update: only those that trained)."""
        experiment_id = self._experiment_id = experiment_named(self._client, self._experiment, self.tracking_uri)
        self._model_spec = str(config.get("model", ""))
        if resumed and self._reopen(session_id):
            return  # the runs of the crashed process go on: one parent run per session, still
        run = self._client.create_run(
            experiment_id,
            run_name=f"session-{session_id}",
            tags={**self._tags, SESSION_TAG: session_id, ROLE_TAG: "coordinator"},
        )
        self.parent_run_id = run.info.run_id
        raw = config.get("data")
        data: dict[str, object] = raw if isinstance(raw, dict) else {}
        params = {k: config[k] for k in PARAM_KEYS if config.get(k) is not None}
        params |= {f"data.{k}": v for k, v in data.items() if k in DATA_KEYS and v is not None}
        params["clients"] = population if population is not None else len(clients)
        self._client.log_batch(self.parent_run_id, params=param_list(params))
        for client in clients:
            self._child(client)

    def _reopen(self, session_id: str) -> bool:
        """Take over the parent and child runs of a session resumed after a crash, if there are
        any: its metrics go on at the next round's step instead of starting a second parent run."""
        found = coordinator_runs(self._client, [self._experiment_id], session_id)
        if not found:
            return False
        self.parent_run_id = found[0].info.run_id
        given = found[0].data.tags
        self._tags.update({k: given[k] for k in START_TAGS if k in given and k not in self._tags})
        children = self._client.search_runs(
            [self._experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'", max_results=10_000
        )
        for run in [found[0], *children]:
            if run.info.status != "RUNNING":  # a crash leaves RUNNING; a FAILED one is going on again
                self._client.update_run(run.info.run_id, status="RUNNING")
        self.child_runs.update(
            {c.data.tags["fedhive.client_id"]: c.info.run_id for c in children if "fedhive.client_id" in c.data.tags}
        )
        log.info("MLflow: session %s resumed in its parent run %s", session_id, self.parent_run_id)
        return True

    def _child(self, client_id: str) -> str:
        run_id = self.child_runs.get(client_id)
        if run_id is None:  # a client that joined after the start gets its run on first update
            tags = {"mlflow.parentRunId": self.parent_run_id or "", "fedhive.client_id": client_id, **self._tags}
            run = self._client.create_run(self._experiment_id, run_name=client_id, tags=tags)
            run_id = self.child_runs[client_id] = run.info.run_id
        return run_id

    def _log_client(self, client_id: str, rnd: int, metrics: dict[str, float]) -> None:
        if self.parent_run_id is None:
            return
        child = self._child(client_id)
        self._log(child, rnd, metrics)
        if self._run_per_round:
            tags = {
                "mlflow.parentRunId": child,
                "fedhive.client_id": client_id,
                "fedhive.round": str(rnd),
                **self._tags,
            }
            run = self._client.create_run(self._experiment_id, run_name=f"{client_id} round {rnd}", tags=tags)
            self._log(run.info.run_id, rnd, metrics)
            self._client.set_terminated(run.info.run_id, "FINISHED")

    def _log(self, run_id: str | None, step: int, metrics: dict[str, float]) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._client.log_batch(run_id, metrics=batch)

    def _finish_with_model(self, e: ev.SessionCompleted) -> None:
        run_id = self.parent_run_id
        if run_id is None:
            return
        if not e.params:  # a decentralised session's model is held by its peers only: none to log
            self._end_all("FINISHED", None)
            return
        meta = {"session_id": e.session_id, "rounds": str(e.rounds)}
        log_model(self._client, run_id, e.params, self._model_spec, meta)
        if self._register_as:
            self.model_version = register_model(self._client, self._register_as, run_id, self._tags)
            log.info("registered MLflow model %s version %s", self._register_as, self.model_version)
        self._log_best(run_id, e)
        self._end_all("FINISHED", None)

    def _log_best(self, run_id: str, e: ev.SessionCompleted) -> None:
        """The best round's model: tags on the run and, when models are registered, a version
        tagged ``fedhive.best`` (the final version itself if the last round was the best)."""
        best = self._best
        if best is None:
            return
        self._client.set_tag(run_id, "fedhive.best_round", str(best.round))
        self._client.set_tag(run_id, f"fedhive.best_{best.metric}", repr(best.value))
        if not self._register_as:
            return
        name, tags = self._register_as, {"fedhive.best": "true", "fedhive.best_round": str(best.round)}
        if best.round == e.rounds and self.model_version is not None:
            for key, value in tags.items():
                self._client.set_model_version_tag(name, self.model_version, key, value)
            self.best_version = self.model_version
            return
        meta = {"session_id": e.session_id, "rounds": str(best.round)}
        log_model(self._client, run_id, best.params, self._model_spec, meta, "best_model")
        self.best_version = register_model(self._client, name, run_id, {**self._tags, **tags}, "best_model")

    def _end_all(self, status: str, reason: str | None, reason_tag: str = "fedhive.failure") -> None:
        for run_id in self.child_runs.values():
            self._client.set_terminated(run_id, status)
        if self.parent_run_id is not None:
            if reason:
                self._client.set_tag(self.parent_run_id, reason_tag, reason[:5000])
            self._client.set_terminated(self.parent_run_id, status)
