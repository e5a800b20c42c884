"""What a session page draws, read from the metadata store and shaped by ``web.charts``.

The browser gets numbers ready to plot: a chart per metric over the rounds (the app's own metrics
too: ``mse``, ``r2``, ...; and a DP session's privacy spent), a box plot per client metric per
round, and each client's latest row for the table.
"""

from __future__ import annotations

from pydantic import BaseModel

from fedhive.api.schemas import SessionOut
from fedhive.api.sessions import owned_session, session_view
from fedhive.service.services import Services
from fedhive.storage import sessions_repo
from fedhive.web.charts import BoxChart, Chart, client_boxes, metric_order, number, round_charts


class ClientRow(BaseModel):
    client_id: str
    rounds: int
    last_round: int
    status: str
    num_examples: int
    metrics: dict[str, float | None]  # its latest result's, by name (SessionSummary.client_metrics)


class SessionSummary(BaseModel):
    session: SessionOut
    rounds: list[int]  # the x axis of every chart
    updates: list[int]  # accepted updates per round
    charts: list[Chart]
    boxes: list[BoxChart]
    client_metrics: list[str]  # the client table's metric columns, in chart order
    clients: list[ClientRow]


def session_summary(services: Services, session_id: str, owner_id: int) -> SessionSummary:
    """Blocking: one read-only unit of work. 404 (HTTPException) for another user's session."""
    with services.db.session(read_only=True) as s:
        session = session_view(s, owned_session(s, session_id, owner_id))
        rounds = [(r.round, r.num_updates, r.metrics) for r in sessions_repo.list_rounds(s, session_id)]
        results = [
            (r.round, r.client_id, r.status.value, r.num_examples, r.metrics)
            for r in sessions_repo.client_results(s, session_id)
        ]
    clients: dict[str, ClientRow] = {}
    for rnd, client, status, examples, metrics in results:  # ordered by round: the last row wins
        seen = clients.get(client)
        clients[client] = ClientRow(
            client_id=client,
            rounds=(seen.rounds if seen else 0) + 1,
            last_round=rnd,
            status=status,
            num_examples=examples,
            metrics={name: number(value) for name, value in metrics.items()},
        )
    boxes = client_boxes((rnd, metrics) for rnd, _, _, _, metrics in results)
    return SessionSummary(
        session=session,
        rounds=[rnd for rnd, _, _ in rounds],
        updates=[n for _, n, _ in rounds],
        charts=round_charts([metrics for _, _, metrics in rounds]),
        boxes=boxes,
        client_metrics=metric_order({name for c in clients.values() for name in c.metrics}),
        clients=sorted(clients.values(), key=lambda c: c.client_id),
    )
