"""A hierarchical session as the platform records it and the session page shows it: the real
hierarchical coordinator (two combiners, four clients) runs with the ``SessionRecorder`` attached;
each combiner's merged partial and each client behind it get rows of their own, the client's
naming its combiner, and the page's data tells them apart (a combiners table, box plots per
combiner, clients only in the clients' table and box plots), with each round's bytes."""

from __future__ import annotations

from pathlib import Path

from fedhive.service.launcher import SessionRequest
from fedhive.service.services import Services
from fedhive.service.settings import Settings
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.artifacts import artifact_store_from_url
from fedhive.storage.database import Database
from fedhive.web.summary import session_summary, sessions_overview
from web.recorded import HIERARCHY_ROUNDS, record_hierarchy, record_tiny_losses


class NoLauncher:
    """The page's data reads the database only: nothing is started or cancelled here."""

    async def start(self, request: SessionRequest) -> str:
        raise AssertionError("not started in this test")

    async def cancel(self, session_id: str) -> bool:
        raise AssertionError("not cancelled in this test")


async def test_a_hierarchical_sessions_combiners_and_their_clients_are_recorded_and_shown(tmp_path: Path) -> None:
    db = Database(tmp_path / "fedhive.db")
    db.upgrade()
    artifacts = artifact_store_from_url(str(tmp_path / "artifacts"))
    with db.session() as s:
        owner = users_repo.create_user(s, "ada@example.org", "not-a-real-hash").id
    await record_hierarchy(db, artifacts, owner, session_id="hier-1")

    with db.session(read_only=True) as s:
        rows = sessions_repo.client_results(s, "hier-1")
        row = sessions_repo.session_by_id(s, "hier-1")
        assert row is not None and row.status.value == "COMPLETED"
        assert row.reason == f"completed all {HIERARCHY_ROUNDS} rounds"
    behind = {(r.round, r.client_id, r.via) for r in rows if r.via}
    combiners = {r.via for r in rows if r.via}
    assert combiners == {"combiner-0", "combiner-1"}
    assert {(rnd, c) for rnd, c, _ in behind} == {(rnd, f"client-{i}") for rnd in (1, 2, 3) for i in range(4)}

    services = Services(Settings(home=tmp_path), db, artifacts, NoLauncher())
    page = session_summary(services, "hier-1", owner)
    assert [c.combiner_id for c in page.combiners] == ["combiner-0", "combiner-1"]
    assert sorted(client for c in page.combiners for client in c.clients) == [f"client-{i}" for i in range(4)]
    assert all(len(c.clients) == 2 and c.rounds == HIERARCHY_ROUNDS for c in page.combiners)
    # the clients' table and box plots hold clients, each naming its combiner
    assert [c.client_id for c in page.clients] == [f"client-{i}" for i in range(4)]
    assert {c.via for c in page.clients} == {"combiner-0", "combiner-1"}
    assert all(b.n == 4 for chart in page.boxes for b in chart.boxes)
    # box plots per combiner: two clients each, every round
    assert [c.combiner for c in page.combiner_boxes] == ["combiner-0", "combiner-1"]
    for per in page.combiner_boxes:
        assert per.clients == 2 and per.charts
        assert all([b.n for b in chart.boxes] == [2] * HIERARCHY_ROUNDS for chart in per.charts)
    # each client's curve, and the bytes each round cost (the combiners' partials)
    assert page.curves.total == 4 and {s.label for c in page.curves.charts for s in c.series} == {
        f"client-{i}" for i in range(4)
    }
    assert len(page.bytes) == HIERARCHY_ROUNDS and all(b is not None and b > 0 for b in page.bytes)
    assert page.info.bytes_per_round == sum(b for b in page.bytes if b is not None) / HIERARCHY_ROUNDS
    assert page.info.ended == f"completed all {HIERARCHY_ROUNDS} rounds"
    assert page.info.duration_s is not None and page.info.duration_s >= 0
    assert page.info.hyperparameters["rounds"] == HIERARCHY_ROUNDS and page.info.hyperparameters["lr"] == 0.2

    # the sessions list: its name, and its key metric's last value
    losses = record_tiny_losses(db, owner, session_id="tiny")
    listed = {r.session.id: r for r in sessions_overview(services, owner)}
    assert listed["hier-1"].session.name == "two combiners"
    key = listed["tiny"].key_metric
    assert key is not None and (key.name, key.round) == ("loss", 4)
    assert key.value == sum(losses[4]) / 3
    db.dispose()
