"""A decentralised session started from the platform's session manager is followed by the same
observers as any other session (in one process, on the in-memory network, three site agents):
they get its start, each site's reported figures and each round's, and how it ended, on the
session's own bus. An MLflow tracker (a real local MLflow store) records it as one FINISHED run
with a metric per round and a child run per site, and logs the final model the peers agreed on
(one of them hands it over at the end: ``peer_session_model``); no round's model, which the
server never holds.
The same over RabbitMQ with an MLflow server: ``test_serve_end_to_end``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from site_agents import need_module

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from service.test_platform_flow import wait_for
from service.test_serve_topologies import SITES, federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
FACTS = (ev.SessionStarted, ev.UpdateAccepted, ev.RoundCompleted, ev.SessionCompleted, ev.SessionFailedEvent)


async def test_a_decentralised_sessions_observers_and_its_mlflow_run_follow_it_with_its_final_model(
    tmp_path: Path,
) -> None:
    mlflow = need_module("mlflow", "pip install 'fedhive[mlflow]'")
    from fedhive.tracking.mlflow_tracker import MlflowTracker

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The store's tables first: made in the tracker's thread mid-session, that CPU-heavy work would
    # hold up the watch past the test federation's 2 s heartbeat timeout on a loaded machine.
    # Its artifacts (the final model) in tmp_path too, not in the working directory's ./mlruns.
    mlflow.MlflowClient(tracking_uri=store).create_experiment("fedhive", (tmp_path / "artifacts").as_uri())
    seen: list[object] = []
    trackers: dict[str, MlflowTracker] = {}

    def attach(session_id: str, bus: EventBus, tags: Mapping[str, str]) -> None:
        for fact in FACTS:
            bus.on(fact, seen.append)
        trackers[session_id] = tracker = MlflowTracker(store, tags=dict(tags))
        tracker.attach(bus)

    async with federation(tmp_path, observers=[attach]) as fed:
        sid = await fed.manager.start(fed.request("decentralised"))
        status, reason = await fed.ended(sid)
        assert status == "COMPLETED", reason

        async def told_the_end() -> bool:  # the facts' bus runs on after the database says COMPLETED
            return any(isinstance(e, ev.SessionCompleted) for e in seen) and not fed.manager.running

        await wait_for(told_the_end, deadline_s=60)

    started = [e for e in seen if isinstance(e, ev.SessionStarted)]
    assert [(e.session_id, e.clients, e.start_round) for e in started] == [(sid, SITES, 1)]
    rounds = [e for e in seen if isinstance(e, ev.RoundCompleted)]
    assert [e.round for e in rounds] == [1, 2, 3]
    assert all(e.metrics["digest_agreement"] == 1.0 and e.metrics["peers"] == 3.0 for e in rounds)
    assert rounds[-1].metrics["mse"] < rounds[0].metrics["mse"]
    assert all(len(e.params) == 0 and e.num_selected == 3 and e.late_or_missing == [] for e in rounds)
    updates = [e for e in seen if isinstance(e, ev.UpdateAccepted)]
    assert sorted((e.round, e.client_id) for e in updates) == [(n, s) for n in (1, 2, 3) for s in SITES]
    ended = [e for e in seen if isinstance(e, ev.SessionCompleted | ev.SessionFailedEvent)]
    assert len(ended) == 1 and isinstance(ended[0], ev.SessionCompleted)
    assert list(ended[0].params) == ["w"]  # the agreed model, handed over by a peer

    tracker = trackers[sid]
    assert tracker.failure is None
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(tracker.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fedhive.session_id"] == sid
    history = client.get_metric_history(run.info.run_id, "digest_agreement")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 1.0), (3, 1.0)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mse")] == [1, 2, 3]
    assert client.list_artifacts(run.info.run_id) != []  # the final model, as a star session's
    assert sorted(tracker.child_runs) == SITES
    for run_id in tracker.child_runs.values():
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "mse")] == [1, 2, 3]
        assert "bytes" not in child.data.metrics  # a report carries no update: no bytes to count
