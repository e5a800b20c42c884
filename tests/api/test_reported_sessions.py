"""Sessions run from the command line and reported to the platform: their owner sees them like
any other; nobody else can read them or post to them; bad reports are one-line 422s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from api_harness import Api, one_line_detail

from fedhive.runtime.session_config import SessionConfig
from fedhive.service.session_manager import SessionManager
from fedhive.storage.artifacts import LocalArtifactStore


def config(session_id: str = "cli-session-1", rounds: int = 3) -> dict[str, Any]:
    return SessionConfig(session_id=session_id, rounds=rounds, min_clients=2).model_dump(mode="json")


async def opened(api: Api, headers: dict[str, str], session_id: str = "cli-session-1", rounds: int = 3) -> str:
    body = {"config": config(session_id, rounds), "name": "digits (command line)", "topology": "star"}
    response = await api.client.post("/sessions/reported", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def round_events(rnd: int, accuracy: float) -> list[dict[str, Any]]:
    clients = [
        {"kind": "client", "round": rnd, "client_id": c, "status": "ACCEPTED", "num_examples": 50,
         "metrics": {"loss": 0.5, "accuracy": accuracy - 0.01}}
        for c in ("site-a", "site-b")
    ]  # fmt: skip
    done = {
        "kind": "round", "round": rnd, "metrics": {"accuracy": accuracy, "loss": 0.4}, "train_metrics": {"loss": 0.5},
        "num_updates": 2, "num_selected": 2, "bytes_received": 2048, "duration_s": 1.25,
    }  # fmt: skip
    return [*clients, done]


async def post(api: Api, headers: dict[str, str], session_id: str, events: list[dict[str, Any]]) -> Any:
    # json.dumps, not httpx's json=: a NaN must reach the server as the literal some encoders write.
    body = json.dumps({"events": events})
    headers = {**headers, "Content-Type": "application/json"}
    return await api.client.post(f"/sessions/{session_id}/events", content=body, headers=headers)


async def test_a_reported_session_shows_its_rounds_clients_and_end_like_any_other(api: Api) -> None:
    ann = await api.user("ann@example.org")
    sid = await opened(api, ann)
    assert (await api.client.get(f"/sessions/{sid}", headers=ann)).json()["status"] == "PENDING"
    started = await post(api, ann, sid, [{"kind": "started", "clients": ["site-a", "site-b"]}, *round_events(1, 0.6)])
    assert started.status_code == 200, started.text
    assert started.json() == {"session_id": sid, "status": "RUNNING", "recorded": 4}
    # The same batch again (its answer was lost): the same rows, not twice.
    assert (await post(api, ann, sid, round_events(1, 0.6))).status_code == 200
    ended = [{"kind": "ended", "status": "COMPLETED", "reason": "completed all 2 rounds"}]
    assert (await post(api, ann, sid, [*round_events(2, 0.8), *ended])).json()["status"] == "COMPLETED"

    listed = (await api.client.get("/sessions", headers=ann)).json()
    assert [(s["id"], s["name"]) for s in listed] == [(sid, "digits (command line)")]
    one = (await api.client.get(f"/sessions/{sid}", headers=ann)).json()
    assert (one["status"], one["reason"], one["rounds_done"], one["rounds_total"]) == (
        "COMPLETED", "completed all 2 rounds", 2, 3,
    )  # fmt: skip
    assert one["config"]["reported"] == {"by": "fedhive coordinator", "topology": "star"}
    rounds = (await api.client.get(f"/sessions/{sid}/rounds", headers=ann)).json()
    assert [(r["round"], r["metrics"]["accuracy"], r["num_updates"]) for r in rounds] == [(1, 0.6, 2), (2, 0.8, 2)]
    assert rounds[0]["metrics"]["bytes_received"] == 2048 and rounds[0]["metrics"]["train"] == {"loss": 0.5}
    status = (await api.client.get(f"/sessions/{sid}/training-status", headers=ann)).json()
    assert [(c["client_id"], c["status"], c["num_examples"]) for c in status["last_results"]] == [
        ("site-a", "ACCEPTED", 50), ("site-b", "ACCEPTED", 50),
    ]  # fmt: skip
    late = await post(api, ann, sid, round_events(3, 0.9))
    assert late.status_code == 409 and "already ended (COMPLETED)" in one_line_detail(late.json())
    again = await api.client.post("/sessions/reported", json={"config": config(sid)}, headers=ann)
    assert again.status_code == 409 and "already ended" in one_line_detail(again.json())
    assert (await api.client.delete(f"/sessions/{sid}", headers=ann)).status_code == 204


async def test_a_resumed_coordinator_continues_its_session(api: Api) -> None:
    ann = await api.user("ann@example.org")
    sid = await opened(api, ann)
    await post(api, ann, sid, [{"kind": "started"}, *round_events(1, 0.6)])
    resumed = await api.client.post("/sessions/reported", json={"config": config(sid)}, headers=ann)
    assert resumed.status_code == 200 and resumed.json()["rounds_done"] == 1


async def test_nobody_posts_to_or_takes_over_another_users_session(api: Api) -> None:
    ann, bob = await api.user("ann@example.org"), await api.user("bob@example.org")
    sid = await opened(api, ann)
    theirs = await post(api, bob, sid, [*round_events(1, 0.99), {"kind": "ended", "status": "FAILED"}])
    missing = await post(api, bob, "nosuchsession", round_events(1, 0.99))
    assert theirs.status_code == missing.status_code == 404
    assert one_line_detail(theirs.json()) == f"no session {sid!r}"
    taken = await api.client.post("/sessions/reported", json={"config": config(sid)}, headers=bob)
    assert taken.status_code == 409 and "is taken" in one_line_detail(taken.json())
    assert (await api.client.get(f"/sessions/{sid}", headers=bob)).status_code == 404
    mine = (await api.client.get(f"/sessions/{sid}", headers=ann)).json()
    assert (mine["status"], mine["rounds_done"]) == ("PENDING", 0)
    assert (await api.client.get(f"/sessions/{sid}/rounds", headers=ann)).json() == []
    anonymous = await post(api, {}, sid, round_events(1, 0.5))
    assert anonymous.status_code == 401


async def test_a_platform_session_takes_no_reports(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    started = await api.client.post("/sessions/start", data={"min_peers": "2"}, headers=ann)
    platform = started.json()["id"]
    refused = await post(api, ann, platform, [{"kind": "ended", "status": "COMPLETED"}])
    assert refused.status_code == 409 and "run by the platform" in one_line_detail(refused.json())
    taken = await api.client.post("/sessions/reported", json={"config": config(platform)}, headers=ann)
    assert taken.status_code == 409


async def test_cancelling_on_the_platform_tells_the_reporter_at_its_next_post(api: Api) -> None:
    ann = await api.user("ann@example.org")
    sid = await opened(api, ann)
    await post(api, ann, sid, [{"kind": "started"}])
    assert (await post(api, ann, sid, [])).status_code == 200  # an empty batch: the reporter asking for news
    assert (await api.client.post(f"/sessions/{sid}/cancel", headers=ann)).json()["status"] == "CANCELLED"
    told = await post(api, ann, sid, round_events(1, 0.7))
    # A code the reporter acts on (it stops its session), beside the one-line detail for people.
    assert told.status_code == 409 and told.json()["code"] == "session_cancelled"
    body = told.json()
    assert "cancelled on the server by its owner" in one_line_detail({"detail": body.pop("detail")})
    assert body == {"code": "session_cancelled"}
    other = await post(api, ann, await opened(api, ann, "cli-session-2"), [{"kind": "teleport"}])
    assert "code" not in other.json()  # only a cancellation carries it


BAD_EVENTS: list[tuple[list[dict[str, Any]], str]] = [
    (round_events(4, 0.5), "beyond the session's 3 rounds"),
    (
        [{"kind": "round", "round": 1, "metrics": {"loss": float("nan")}}],
        "events.1.round.metrics.loss: Input should be a finite number",
    ),
    ([{"kind": "client", "round": 1, "client_id": "a/b\n", "status": "ACCEPTED"}], "client_id"),
    ([{"kind": "client", "round": 1, "client_id": "a", "status": "MAYBE"}], "status"),
    ([{"kind": "teleport"}], "events.1"),
    ([{"kind": "round", "round": 0}], "round"),
    ([{"kind": "ended", "status": "RUNNING"}], "status"),
    ([{"kind": "round", "round": 1, "metrics": {f"m{i}": 1.0 for i in range(65)}}], "metrics"),
    ([{"kind": "started"}] * 501, "events"),
]


@pytest.mark.parametrize(("events", "named"), BAD_EVENTS)
async def test_bad_reports_are_one_line_422s_and_change_nothing(
    api: Api, events: list[dict[str, Any]], named: str
) -> None:
    ann = await api.user("ann@example.org")
    sid = await opened(api, ann)
    response = await post(api, ann, sid, [{"kind": "started"}, *events] if events else [])
    assert response.status_code == 422, response.text
    assert named in one_line_detail(response.json())
    one = (await api.client.get(f"/sessions/{sid}", headers=ann)).json()
    assert (one["status"], one["rounds_done"]) == ("PENDING", 0)  # the whole batch or nothing


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"config": {**config(), "session_id": "../x"}}, "session_id"),
        ({"config": {**config(), "rounds": 0}}, "rounds"),
        ({"config": {**config(), "surprise": 1}}, "surprise"),
        ({"config": {**config(), "data": {"blob": "x" * 70_000}}}, "bytes of JSON"),
        ({"config": config(), "topology": "mesh"}, "topology"),
        ({"config": config(), "name": "x" * 101}, "name"),
    ],
)
async def test_a_bad_session_to_report_is_a_one_line_422(api: Api, body: dict[str, Any], named: str) -> None:
    ann = await api.user("ann@example.org")
    response = await api.client.post("/sessions/reported", json=body, headers=ann)
    assert response.status_code == 422, response.text
    assert named in one_line_detail(response.json())
    assert (await api.client.get("/sessions", headers=ann)).json() == []


async def test_the_platform_never_resumes_a_reported_session(api: Api, tmp_path: Path) -> None:
    ann = await api.user("ann@example.org")
    sid = await opened(api, ann)
    await post(api, ann, sid, [{"kind": "started"}, *round_events(1, 0.6)])
    # A restarted server's manager resumes RUNNING sessions: this one runs elsewhere.
    manager = SessionManager(api.services.db, LocalArtifactStore(tmp_path / "artifacts"), None)  # type: ignore[arg-type]
    assert await manager.resume_running() == []
    assert (await api.client.get(f"/sessions/{sid}", headers=ann)).json()["status"] == "RUNNING"
