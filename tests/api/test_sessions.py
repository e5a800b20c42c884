"""Reading, following, cancelling and deleting sessions; nobody reaches another user's session."""

from __future__ import annotations

import pytest
from api_harness import Api, one_line_detail

from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.models import ClientStatus, ResultStatus, SessionStatus


async def started(api: Api, headers: dict[str, str], peers: int = 2, **form: object) -> str:
    api.online_peers(peers)
    data = {"min_peers": str(peers), **{k: str(v) for k, v in form.items()}}
    response = await api.client.post("/sessions/start", data=data, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_users_list_and_read_only_their_own_sessions(api: Api) -> None:
    ann, bob = await api.user("ann@example.org"), await api.user("bob@example.org")
    first = await started(api, ann)
    second = await started(api, ann)
    theirs = await started(api, bob)
    listed = (await api.client.get("/sessions", headers=ann)).json()
    assert {s["id"] for s in listed} == {first, second}
    assert [s["id"] for s in (await api.client.get("/sessions", headers=bob)).json()] == [theirs]
    one = (await api.client.get(f"/sessions/{first}", headers=ann)).json()
    assert one["id"] == first and one["config"]["min_clients"] == 2 and one["final_model"] is None
    pending = await api.client.get("/sessions", params={"status": "PENDING", "limit": 1}, headers=ann)
    assert len(pending.json()) == 1
    assert (await api.client.get("/sessions", params={"status": "RUNNING"}, headers=ann)).json() == []


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("GET", "/training-status"), ("GET", "/rounds"), ("POST", "/cancel"), ("DELETE", "")],
)
async def test_another_users_session_is_404_like_a_missing_one(api: Api, method: str, suffix: str) -> None:
    ann, bob = await api.user("ann@example.org"), await api.user("bob@example.org")
    theirs = await started(api, bob)
    mine = await api.client.request(method, f"/sessions/{theirs}{suffix}", headers=ann)
    missing = await api.client.request(method, f"/sessions/nosuchsession{suffix}", headers=ann)
    assert mine.status_code == missing.status_code == 404
    assert "no session" in one_line_detail(mine.json())
    assert api.launcher.cancelled == []  # nothing reached the launcher
    assert (await api.client.get(f"/sessions/{theirs}", headers=bob)).json()["status"] == "PENDING"


async def test_training_status_shows_rounds_and_each_peers_progress(api: Api) -> None:
    ann = await api.user("ann@example.org")
    session_id = await started(api, ann, rounds=5)
    with api.services.db.session() as s:  # what the coordinator's persistence observer records
        sessions_repo.set_session_status(s, session_id, SessionStatus.RUNNING)
        held = [c.id for c in users_repo.list_clients(s, None) if c.session_id == session_id]
        users_repo.record_heartbeat(s, held[0], epoch=2, epochs=3, metrics={"loss": 0.5, "accuracy": 0.75})
        sessions_repo.record_round(s, session_id, 1, metrics={"accuracy": 0.6}, num_updates=2, duration_s=1.5)
        for client_id in held:
            sessions_repo.record_client_result(
                s, session_id, 1, client_id, status=ResultStatus.ACCEPTED, num_examples=10, metrics={"loss": 0.7}
            )
    status = (await api.client.get(f"/sessions/{session_id}/training-status", headers=ann)).json()
    assert status["status"] == "RUNNING" and (status["round"], status["rounds_total"]) == (1, 5)
    progress = {p["id"]: p for p in status["peers"]}
    assert set(progress) == set(held) and all(p["status"] == "TRAINING" for p in progress.values())
    assert (progress[held[0]]["epoch"], progress[held[0]]["epochs"]) == (2, 3)
    assert (progress[held[0]]["loss"], progress[held[0]]["accuracy"]) == (0.5, 0.75)
    assert status["last_round"]["metrics"] == {"accuracy": 0.6}
    assert [r["client_id"] for r in status["last_results"]] == sorted(held)
    rounds = (await api.client.get(f"/sessions/{session_id}/rounds", headers=ann)).json()
    assert [(r["round"], r["num_updates"]) for r in rounds] == [(1, 2)]


async def test_cancel_ends_the_session_and_releases_its_peers(api: Api) -> None:
    ann = await api.user("ann@example.org")
    session_id = await started(api, ann)
    response = await api.client.post(f"/sessions/{session_id}/cancel", headers=ann)
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED" and response.json()["finished_at"] is not None
    assert api.launcher.cancelled == [session_id]
    peers = (await api.client.get("/peers", params={"status": "ONLINE"}, headers=ann)).json()
    assert len(peers) == 2
    again = await api.client.post(f"/sessions/{session_id}/cancel", headers=ann)
    assert again.status_code == 409 and "already ended (CANCELLED)" in one_line_detail(again.json())
    assert api.launcher.cancelled == [session_id]  # an ended session never reaches the launcher


async def test_a_cancel_that_loses_the_race_with_completion_is_409(api: Api) -> None:
    ann = await api.user("ann@example.org")
    session_id = await started(api, ann)
    real_cancel = api.launcher.cancel

    async def completes_first(sid: str) -> bool:
        with api.services.db.session() as s:  # the coordinator finishes between read and cancel
            sessions_repo.set_session_status(s, sid, SessionStatus.COMPLETED)
        return await real_cancel(sid)

    api.launcher.cancel = completes_first  # type: ignore[method-assign]
    response = await api.client.post(f"/sessions/{session_id}/cancel", headers=ann)
    assert response.status_code == 409 and "already ended (COMPLETED)" in one_line_detail(response.json())


async def test_delete_needs_an_ended_session_and_removes_it(api: Api) -> None:
    ann = await api.user("ann@example.org")
    session_id = await started(api, ann)
    live = await api.client.delete(f"/sessions/{session_id}", headers=ann)
    assert live.status_code == 409 and "cancel it first" in one_line_detail(live.json())
    assert (await api.client.get(f"/sessions/{session_id}", headers=ann)).status_code == 200
    assert (await api.client.post(f"/sessions/{session_id}/cancel", headers=ann)).status_code == 200
    deleted = await api.client.delete(f"/sessions/{session_id}", headers=ann)
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await api.client.get(f"/sessions/{session_id}", headers=ann)).status_code == 404
    assert (await api.client.delete(f"/sessions/{session_id}", headers=ann)).status_code == 404
    with api.services.db.session(read_only=True) as s:  # the peers are free and still registered
        assert [c.status for c in users_repo.list_clients(s, None)] == [ClientStatus.ONLINE] * 2


@pytest.mark.parametrize("bad", ["has space", "a" * 65, "semi;colon"])
async def test_malformed_session_ids_are_422(api: Api, bad: str) -> None:
    ann = await api.user("ann@example.org")
    response = await api.client.get(f"/sessions/{bad}", headers=ann)
    assert response.status_code == 422 and one_line_detail(response.json()).startswith("session_id")
