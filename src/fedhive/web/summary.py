"""What a session page draws, computed on the server from the metadata store.

The browser gets numbers ready to plot: global loss/accuracy per round, the five-number summary
(min, quartiles, max) of the clients' train accuracy and loss per round for the box plots, and
each client's latest row for the table. Quartiles are computed here, not in JavaScript, so the
page stays a thin renderer and a session with many clients sends five numbers per round, not one
per client.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel

from fedhive.api.schemas import SessionOut
from fedhive.api.sessions import owned_session, session_view
from fedhive.service.services import Services
from fedhive.storage import sessions_repo


class Box(BaseModel):
    round: int
    n: int
    min: float
    q1: float
    median: float
    q3: float
    max: float


class ClientRow(BaseModel):
    client_id: str
    rounds: int
    last_round: int
    status: str
    num_examples: int
    loss: float | None
    accuracy: float | None


class RoundPoint(BaseModel):
    round: int
    loss: float | None
    accuracy: float | None
    updates: int


class SessionSummary(BaseModel):
    session: SessionOut
    rounds: list[RoundPoint]
    accuracy_boxes: list[Box]
    loss_boxes: list[Box]
    clients: list[ClientRow]


def five_numbers(rnd: int, values: list[float]) -> Box | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    q = np.quantile(np.asarray(finite, dtype=np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
    return Box(round=rnd, n=len(finite), min=q[0], q1=q[1], median=q[2], q3=q[3], max=q[4])


def session_summary(services: Services, session_id: str, owner_id: int) -> SessionSummary:
    """Blocking: one read-only unit of work. 404 (HTTPException) for another user's session."""
    with services.db.session(read_only=True) as s:
        session = session_view(s, owned_session(s, session_id, owner_id))
        rounds = [
            RoundPoint(
                round=r.round,
                loss=_metric(r.metrics, "loss"),
                accuracy=_metric(r.metrics, "accuracy"),
                updates=r.num_updates,
            )
            for r in sessions_repo.list_rounds(s, session_id)
        ]
        results = [
            (
                r.round,
                r.client_id,
                r.status.value,
                r.num_examples,
                _metric(r.metrics, "loss"),
                _metric(r.metrics, "accuracy"),
            )
            for r in sessions_repo.client_results(s, session_id)
        ]
    per_round: dict[int, dict[str, list[float]]] = {}
    clients: dict[str, ClientRow] = {}
    for rnd, client, status, examples, loss, acc in results:  # ordered by round: the last row wins
        metrics = per_round.setdefault(rnd, {"loss": [], "accuracy": []})
        if loss is not None:
            metrics["loss"].append(loss)
        if acc is not None:
            metrics["accuracy"].append(acc)
        seen = clients.get(client)
        clients[client] = ClientRow(
            client_id=client,
            rounds=(seen.rounds if seen else 0) + 1,
            last_round=rnd,
            status=status,
            num_examples=examples,
            loss=loss,
            accuracy=acc,
        )
    acc_boxes = [b for rnd, m in sorted(per_round.items()) if (b := five_numbers(rnd, m["accuracy"]))]
    loss_boxes = [b for rnd, m in sorted(per_round.items()) if (b := five_numbers(rnd, m["loss"]))]
    return SessionSummary(
        session=session,
        rounds=rounds,
        accuracy_boxes=acc_boxes,
        loss_boxes=loss_boxes,
        clients=sorted(clients.values(), key=lambda c: c.client_id),
    )


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
