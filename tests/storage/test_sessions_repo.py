"""Sessions on SQLite and PostgreSQL: ownership, status rules, rounds, results, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.errors import StorageError
from fedhive.storage import sessions_repo as repo
from fedhive.storage.database import Database, NotFound
from fedhive.storage.models import ResultStatus, SessionStatus
from fedhive.storage.models_repo import add_model_version, get_model_version
from fedhive.storage.secret_box import SecretBox, new_key_text
from fedhive.storage.users_repo import create_client, create_user, get_client

PARAMS = "sha256:" + "a" * 64
STATE = "sha256:" + "b" * 64


def two_users(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return create_user(s, "ann@example.org", "h").id, create_user(s, "bob@example.org", "h").id


def test_users_see_only_their_own_sessions(db: Database) -> None:
    ann, bob = two_users(db)
    with db.session() as s:
        mine = repo.create_session(s, owner_id=ann, config={"rounds": 3, "lr": 0.05}, rounds_total=3).id
        repo.create_session(s, owner_id=bob, config={}, rounds_total=1)
        repo.create_session(s, config={}, rounds_total=1, session_id="cli-run")  # no account
    with db.session(read_only=True) as s:
        row = repo.get_session(s, mine, owner_id=ann)
        assert row is not None and row.config == {"rounds": 3, "lr": 0.05} and row.status is SessionStatus.PENDING
        assert repo.get_session(s, mine, owner_id=bob) is None
        assert repo.session_by_id(s, mine) is not None  # the coordinator is not a user
        assert [r.id for r in repo.list_sessions(s, ann)] == [mine]
        assert len(repo.list_sessions(s, None)) == 3
        assert repo.list_sessions(s, ann, status=SessionStatus.RUNNING) == []


def test_status_moves_forward_and_an_ended_session_stays_ended(db: Database) -> None:
    with db.session() as s:
        sid = repo.create_session(s, config={}, rounds_total=2).id
        assert repo.set_session_status(s, sid, SessionStatus.RUNNING)
        started = repo.session_by_id(s, sid).started_at  # type: ignore[union-attr]
        assert repo.set_session_status(s, sid, SessionStatus.RUNNING)  # resumed: started_at is kept
        assert [r.id for r in repo.running_sessions(s)] == [sid]
    with db.session() as s:
        assert repo.set_session_status(s, sid, SessionStatus.CANCELLED, reason="cancelled by ann")
        # The coordinator finishing a moment later must not overwrite the user's cancellation.
        assert not repo.set_session_status(s, sid, SessionStatus.COMPLETED)
    with db.session(read_only=True) as s:
        row = repo.session_by_id(s, sid)
        assert row is not None and row.status is SessionStatus.CANCELLED and row.reason == "cancelled by ann"
        assert row.started_at == started and row.finished_at is not None and row.finished_at >= started
        assert repo.running_sessions(s) == []
    with pytest.raises(NotFound), db.session() as s:
        repo.set_session_status(s, "nope", SessionStatus.RUNNING)


def test_rounds_are_recorded_once_each_even_when_a_resumed_session_repeats_one(db: Database) -> None:
    with db.session() as s:
        sid = repo.create_session(s, config={}, rounds_total=3).id
        repo.record_round(s, sid, 1, metrics={"accuracy": 0.5}, num_updates=3, duration_s=1.5)
        repo.record_round(s, sid, 2, metrics={"accuracy": 0.6}, num_updates=3, duration_s=1.4)
    with db.session() as s:  # crashed before the round-2 checkpoint; round 2 runs again
        repo.record_round(s, sid, 2, metrics={"accuracy": 0.65}, num_updates=2, duration_s=2.0)
    with db.session(read_only=True) as s:
        rounds = repo.list_rounds(s, sid)
        assert [(r.round, r.metrics["accuracy"], r.num_updates) for r in rounds] == [(1, 0.5, 3), (2, 0.65, 2)]
        assert repo.session_by_id(s, sid).rounds_done == 2  # type: ignore[union-attr]


def test_client_results_per_round(db: Database) -> None:
    with db.session() as s:
        sid = repo.create_session(s, config={}, rounds_total=1).id
        repo.record_client_result(s, sid, 1, "c1", status=ResultStatus.ACCEPTED, num_examples=50, metrics={"loss": 1})
        repo.record_client_result(s, sid, 1, "c2", status=ResultStatus.LATE, reason="arrived 3 s after the deadline")
        repo.record_client_result(s, sid, 2, "c1", status=ResultStatus.FAILED, reason="went OFFLINE")
        repo.record_client_result(s, sid, 2, "c1", status=ResultStatus.ACCEPTED, num_examples=50)  # resumed
    with db.session(read_only=True) as s:
        assert [(r.round, r.client_id, r.status) for r in repo.client_results(s, sid)] == [
            (1, "c1", ResultStatus.ACCEPTED),
            (1, "c2", ResultStatus.LATE),
            (2, "c1", ResultStatus.ACCEPTED),
        ]
        late = repo.client_results(s, sid, rnd=1)[1]
        assert late.reason == "arrived 3 s after the deadline" and late.metrics == {}


def test_latest_checkpoint_is_where_a_restarted_coordinator_resumes(db: Database) -> None:
    with db.session() as s:
        sid = repo.create_session(s, config={}, rounds_total=5).id
        assert repo.latest_checkpoint(s, sid) is None
        for rnd in (1, 2, 3):
            repo.save_checkpoint(s, sid, rnd, PARAMS, STATE if rnd != 2 else None)
        repo.save_checkpoint(s, sid, 3, STATE, PARAMS)  # the same round saved again replaces it
        repo.set_session_status(s, sid, SessionStatus.RUNNING)
    with db.session(read_only=True) as s:
        (running,) = repo.running_sessions(s)
        ckpt = repo.latest_checkpoint(s, running.id)
        assert ckpt is not None and (ckpt.round, ckpt.params_ref, ckpt.state_ref) == (3, STATE, PARAMS)


def test_a_failed_write_inside_a_unit_leaves_nothing_and_the_unit_goes_on(db: Database) -> None:
    with db.session() as s:
        sid = repo.create_session(s, config={}, rounds_total=3).id
        repo.record_round(s, sid, 1, metrics={}, num_updates=1, duration_s=1.0)
    with db.session() as s:
        repo.set_session_status(s, sid, SessionStatus.RUNNING)
        with pytest.raises(StorageError, match="cannot record round 2 of session 'gone'"):
            repo.record_round(s, "gone", 2, metrics={}, num_updates=1, duration_s=1.0)  # FK fails
    with db.session(read_only=True) as s:
        row = repo.session_by_id(s, sid)
        assert row is not None and row.status is SessionStatus.RUNNING  # the rest of the unit committed
        assert row.rounds_done == 1 and [r.round for r in repo.list_rounds(s, sid)] == [1]
        assert repo.list_rounds(s, "gone") == []


def test_metrics_are_stored_as_json_alike_on_every_backend(db: Database) -> None:
    metrics = {"loss": float("nan"), "accuracy": np.float32(0.75), "n": np.int64(3), "per_class": (1.0, float("inf"))}
    with db.session() as s:
        sid = repo.create_session(s, config={"lr": np.float64(0.1)}, rounds_total=1).id
        repo.record_round(s, sid, 1, metrics=metrics, num_updates=1, duration_s=1.0)
        with pytest.raises(TypeError, match="round metrics: a set cannot be stored"):
            repo.record_round(s, sid, 2, metrics={"ids": {1, 2}}, num_updates=1, duration_s=1.0)
    with db.session(read_only=True) as s:
        (stored,) = repo.list_rounds(s, sid)
        assert stored.metrics == {"loss": None, "accuracy": 0.75, "n": 3, "per_class": [1.0, None]}
        assert repo.session_by_id(s, sid).config == {"lr": 0.1}  # type: ignore[union-attr]


def test_deleting_a_session_removes_its_history_but_keeps_models_and_nodes(db: Database) -> None:
    ann, bob = two_users(db)
    with db.session() as s:
        sid = repo.create_session(s, owner_id=ann, config={}, rounds_total=1).id
        client_id, _ = create_client(s, "edge", box=SecretBox(new_key_text(), origin="test key"))
        get_client(s, client_id).session_id = sid  # type: ignore[union-attr]
        repo.record_round(s, sid, 1, metrics={}, num_updates=1, duration_s=1.0)
        repo.record_client_result(s, sid, 1, client_id, status=ResultStatus.ACCEPTED)
        repo.save_checkpoint(s, sid, 1, PARAMS)
        version = add_model_version(
            s, ann, "iris", artifact_ref=PARAMS, spec={}, model_spec="m", session_id=sid, create=True
        )
        repo.set_final_model(s, sid, version.id)
    with db.session() as s:
        assert not repo.delete_session(s, sid, owner_id=bob)
        assert repo.delete_session(s, sid, owner_id=ann)
    with db.session(read_only=True) as s:
        assert repo.session_by_id(s, sid) is None and repo.list_rounds(s, sid) == []
        assert repo.client_results(s, sid) == [] and repo.latest_checkpoint(s, sid) is None
        kept = get_model_version(s, ann, "iris")
        assert kept is not None and kept.session_id is None
        node = get_client(s, client_id)
        assert node is not None and node.session_id is None
