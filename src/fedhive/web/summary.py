"""What a session page draws, read from the metadata store and shaped by ``web.charts``.

The browser gets numbers ready to plot: a chart per metric over the rounds (the app's own metrics
too: ``mse``, ``r2``, ...; and a DP session's privacy spent), a box plot per client metric per
round, each client's curve across the rounds, each client's latest row for the table, what the
session is (``SessionInfo``: app, hyperparameters, data set, duration, the reason it ended) and
what each round cost on the wire. In a hierarchical session a combiner's row (its merged partial)
is told apart from its clients' rows, which name it (``via``): the combiners get a table and box
plots of their own clients, and the clients' table and box plots hold clients only.

The sessions list gets each session's key metric: the one the session picks its best round by
(``key_metric``), else accuracy, else loss, else the first metric its last round has.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from fedhive.api.schemas import SessionOut
from fedhive.api.sessions import owned_session, session_view
from fedhive.app.loader import BUILTIN
from fedhive.service.services import Services
from fedhive.storage import models_repo, sessions_repo
from fedhive.storage.models import RoundRow, SessionRow
from fedhive.web.charts import (
    BOOKKEEPING,
    BoxChart,
    Chart,
    ClientCurves,
    CombinerBoxes,
    client_boxes,
    client_curves,
    combiner_boxes,
    is_privacy,
    metric_order,
    number,
    round_charts,
)

# The session's settings shown as its hyperparameters, in this order, when set.
HYPERPARAMETERS = (
    "rounds",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "local_steps",
    "proximal_mu",
    "fraction",
    "min_clients",
    "max_clients",
    "seed",
    "compression",
    "key_metric",
    "mode",
    "patience",
)
Scalar = str | int | float | bool


class ClientRow(BaseModel):
    client_id: str
    rounds: int
    last_round: int
    status: str
    num_examples: int
    metrics: dict[str, float | None]  # its latest result's, by name (SessionSummary.client_metrics)
    via: str | None = None  # the combiner its updates came through (hierarchical sessions)


class CombinerRow(BaseModel):
    combiner_id: str
    clients: list[str]  # the clients behind it, in any round
    rounds: int
    last_round: int
    num_examples: int  # its last partial's
    metrics: dict[str, float | None]  # its last partial's merged figures


class SessionInfo(BaseModel):
    name: str | None
    app: str
    app_digest: str  # the first 12 hex digits of its code's sha256
    model: str | None  # the builtin app's model spec; another app brings its own
    strategy: str
    hyperparameters: dict[str, Scalar]
    run_config: dict[str, Scalar]  # the app's own settings
    dataset: str  # what it trains on, in words
    duration_s: float | None  # from its start to its end (or to now, while it runs)
    ended: str | None  # why it ended, once it has
    bytes_per_round: float | None  # mean payload bytes of the accepted updates per round


class SessionSummary(BaseModel):
    session: SessionOut
    info: SessionInfo
    rounds: list[int]  # the x axis of every chart
    updates: list[int]  # accepted updates per round
    bytes: list[int | None]  # payload bytes received per round (None: not recorded)
    charts: list[Chart]
    boxes: list[BoxChart]
    curves: ClientCurves
    client_metrics: list[str]  # the client table's metric columns, in chart order
    clients: list[ClientRow]
    combiners: list[CombinerRow]
    combiner_boxes: list[CombinerBoxes]


class KeyMetric(BaseModel):
    name: str
    value: float | None
    round: int


class SessionListRow(BaseModel):
    session: SessionOut
    key_metric: KeyMetric | None  # None before its first round


def session_summary(services: Services, session_id: str, owner_id: int) -> SessionSummary:
    """Blocking: one read-only unit of work. 404 (HTTPException) for another user's session."""
    with services.db.session(read_only=True) as s:
        row = owned_session(s, session_id, owner_id)
        session = session_view(s, row)
        dataset = _dataset_words(s, row, owner_id)
        rounds = [(r.round, r.num_updates, r.metrics) for r in sessions_repo.list_rounds(s, session_id)]
        results = [
            (r.round, r.client_id, r.status.value, r.num_examples, r.metrics, r.via)
            for r in sessions_repo.client_results(s, session_id)
        ]
    combiner_ids = {via for *_, via in results if via}
    clients: dict[str, ClientRow] = {}
    combiners: dict[str, CombinerRow] = {}
    for rnd, client, status, examples, metrics, via in results:  # ordered by round: the last row wins
        figures = {name: number(value) for name, value in metrics.items()}
        if client in combiner_ids:
            seen_c = combiners.get(client)
            combiners[client] = CombinerRow(
                combiner_id=client,
                clients=[],
                rounds=(seen_c.rounds if seen_c else 0) + 1,
                last_round=rnd,
                num_examples=examples,
                metrics=figures,
            )
            continue
        seen = clients.get(client)
        clients[client] = ClientRow(
            client_id=client,
            rounds=(seen.rounds if seen else 0) + 1,
            last_round=rnd,
            status=status,
            num_examples=examples,
            metrics=figures,
            via=via or (seen.via if seen else None),
        )
    for c in clients.values():
        if c.via in combiners:
            combiners[c.via].clients.append(c.client_id)
    client_rows = [(rnd, client, metrics) for rnd, client, _, _, metrics, _ in results if client not in combiner_ids]
    byte_counts = [_count(m.get("bytes_received")) for _, _, m in rounds]
    known = [b for b in byte_counts if b is not None]
    info = SessionInfo(
        name=session.name,
        app=session.app,
        app_digest=str(session.config.get("app_digest") or "")[:12],
        model=str(session.config.get("model")) if session.app == BUILTIN else None,
        strategy=str(session.config.get("strategy", "")),
        hyperparameters={k: v for k in HYPERPARAMETERS if _scalar(v := session.config.get(k))},
        run_config={k: v for k, v in dict(session.config.get("run_config") or {}).items() if _scalar(v)},
        dataset=dataset,
        duration_s=_duration(session),
        ended=_ended(session),
        bytes_per_round=sum(known) / len(known) if known else None,
    )
    return SessionSummary(
        session=session,
        info=info,
        rounds=[rnd for rnd, _, _ in rounds],
        updates=[n for _, n, _ in rounds],
        bytes=byte_counts,
        charts=round_charts([metrics for _, _, metrics in rounds]),
        boxes=client_boxes((rnd, metrics) for rnd, _, metrics in client_rows),
        curves=client_curves(client_rows),
        client_metrics=metric_order({name for c in clients.values() for name in c.metrics}),
        clients=sorted(clients.values(), key=lambda c: c.client_id),
        combiners=[combiners[k] for k in sorted(combiners)],
        combiner_boxes=combiner_boxes(
            (rnd, client, via, metrics) for rnd, client, _, _, metrics, via in results if via
        ),
    )


def sessions_overview(services: Services, owner_id: int, limit: int = 100) -> list[SessionListRow]:
    """Blocking. The user's sessions, newest first, each with its key metric's latest value."""
    with services.db.session(read_only=True) as s:
        rows = sessions_repo.list_sessions(s, owner_id, limit=limit)
        views = [session_view(s, row) for row in rows]
        last = _last_rounds(s, [row.id for row in rows])
    return [SessionListRow(session=v, key_metric=_key_metric(v, last.get(v.id))) for v in views]


def _last_rounds(s: Any, session_ids: list[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each session's last recorded round (number, metrics), in one query."""
    if not session_ids:
        return {}
    newest = (
        sa.select(RoundRow.session_id, sa.func.max(RoundRow.round).label("last"))
        .where(RoundRow.session_id.in_(session_ids))
        .group_by(RoundRow.session_id)
        .subquery()
    )
    query = sa.select(RoundRow.session_id, RoundRow.round, RoundRow.metrics).join(
        newest, (RoundRow.session_id == newest.c.session_id) & (RoundRow.round == newest.c.last)
    )
    return {sid: (rnd, dict(metrics or {})) for sid, rnd, metrics in s.execute(query)}


def _key_metric(session: SessionOut, last: tuple[int, dict[str, Any]] | None) -> KeyMetric | None:
    if last is None:
        return None
    rnd, metrics = last
    names = [k for k, v in metrics.items() if number(v) is not None and k not in BOOKKEEPING and not is_privacy(k)]
    chosen = session.config.get("key_metric")
    name = chosen if isinstance(chosen, str) and chosen else next(iter(metric_order(names)), None)
    if name is None:
        return None
    return KeyMetric(name=name, value=number(metrics.get(name)), round=rnd)


def _dataset_words(s: Any, row: SessionRow, owner_id: int) -> str:
    config: Mapping[str, Any] = row.config or {}
    data: Mapping[str, Any] = config.get("data") or {}
    if str(config.get("app") or BUILTIN) != BUILTIN:
        return "each site's own data (the app reads it)"
    partition = data.get("partition")
    split = f", {partition} split" if partition else ""
    if row.dataset_id is not None:
        stored = models_repo.get_dataset(s, row.dataset_id, owner_id=owner_id)
        if stored is None:
            return f"an uploaded data set (deleted){split}"
        label = f", label {stored.label_column}" if stored.label_column else ""
        return f"{stored.name} ({stored.rows} rows{label}){split}"
    name = data.get("dataset")
    return f"built-in data set {name}{split}" if name else "none recorded"


def _duration(session: SessionOut) -> float | None:
    if session.started_at is None:
        return None
    end = session.finished_at or datetime.now(UTC)
    return max(0.0, (end - session.started_at).total_seconds())


def _ended(session: SessionOut) -> str | None:
    if session.finished_at is None:
        return None
    return session.reason or session.status.value.lower()


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) and value != ""


def _count(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
