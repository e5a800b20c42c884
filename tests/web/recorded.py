"""Sessions recorded into a platform's database without the platform running them, for the
dashboard's tests: a hierarchical session (two combiners, their clients) run in this process by
the real hierarchical coordinator with the platform's ``SessionRecorder`` attached, so its rows are
exactly what the events leave; and a session whose clients' losses are tiny (the box-plot axis
the issue showed as "0.01 / 0.00 / 0.00")."""

from __future__ import annotations

from typing import Any

from fedhive.runtime.hierarchy_simulation import run_hierarchy
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import plan_simulation
from fedhive.service.persistence import SessionRecorder
from fedhive.storage import sessions_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.models import ResultStatus, SessionStatus
from fedhive.strategies.registry import parse_strategy
from linear_app import app, loaded

HIERARCHY_ROUNDS = 3


async def record_hierarchy(
    db: Database, artifacts: ArtifactStore, owner_id: int, *, session_id: str, clients: int = 4, combiners: int = 2
) -> None:
    """A hierarchical session of ``clients`` behind ``combiners``, run to its end and recorded."""
    config = make_config(rounds=HIERARCHY_ROUNDS, min_clients=clients, lr=0.2, epochs=2, seed=3, session_id=session_id)
    plan = plan_simulation(config, loaded(app), clients, evaluate="clients")
    with db.session() as s:
        sessions_repo.create_session(
            s,
            config=plan.config.model_dump(mode="json"),
            rounds_total=HIERARCHY_ROUNDS,
            owner_id=owner_id,
            session_id=session_id,
            name="two combiners",
        )
    strategy = parse_strategy(plan.config.strategy)
    recorder = SessionRecorder(
        db,
        artifacts,
        session_id,
        strategy,
        owner_id=owner_id,
        model_name=f"session-{session_id}",
        model_spec="app:linear",
    )
    await run_hierarchy(
        plan.config,
        plan.trainers,
        [10] * clients,
        plan.initial_params,
        combiners=combiners,
        strategy=strategy,
        observers=[recorder.attach],
        heartbeat_s=0.5,
    )


def record_tiny_losses(db: Database, owner_id: int, *, session_id: str, rounds: int = 4) -> dict[int, list[float]]:
    """A finished session whose three clients report losses between 0.001 and 0.013."""
    losses = {rnd: [0.0123 / rnd, 0.0051 / rnd + 0.001, 0.0012 + 0.0002 * rnd] for rnd in range(1, rounds + 1)}
    config: dict[str, Any] = make_config(rounds=rounds, session_id=session_id).model_dump(mode="json")
    with db.session() as s:
        sessions_repo.create_session(
            s, config=config, rounds_total=rounds, owner_id=owner_id, session_id=session_id, name="tiny losses"
        )
        sessions_repo.set_session_status(s, session_id, SessionStatus.RUNNING)
        for rnd, values in losses.items():
            for i, loss in enumerate(values):
                sessions_repo.record_client_result(
                    s,
                    session_id,
                    rnd,
                    f"site-{i}",
                    status=ResultStatus.ACCEPTED,
                    num_examples=50,
                    metrics={"loss": loss},
                )
            mean = sum(values) / len(values)
            sessions_repo.record_round(
                s, session_id, rnd, metrics={"loss": mean, "bytes_received": 3 * 1200}, num_updates=3, duration_s=0.5
            )
        sessions_repo.set_session_status(
            s, session_id, SessionStatus.COMPLETED, reason=f"completed all {rounds} rounds"
        )
    return losses
