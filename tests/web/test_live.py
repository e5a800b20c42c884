"""The live feed and its SSE endpoint without a browser: fan-out, per-session filtering, bounded
queues that drop the oldest events, and the token check of /ui/events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.web.live import LiveFeed
from service.test_platform_flow import platform, sign_up_and_in


async def test_session_events_reach_only_their_subscribers() -> None:
    feed = LiveFeed()
    bus = EventBus()
    feed.attach_session("s1", bus)
    mine, other, everything = feed.subscribe("s1"), feed.subscribe("s2"), feed.subscribe(None)
    await bus.dispatch(ev.UpdateAccepted(1, "c1", 10, {"loss": 0.5, "accuracy": float("nan")}, 100))
    got = await mine.next(1.0)
    assert got is not None and got["type"] == "update" and got["session_id"] == "s1"
    assert got["metrics"] == {"loss": 0.5, "accuracy": None}  # NaN is not JSON
    assert (await everything.next(1.0)) == got
    assert await other.next(0.05) is None
    for sub in (mine, other, everything):
        sub.close()
    assert feed.subscribers == 0


async def test_slow_subscriber_loses_oldest_events() -> None:
    feed = LiveFeed(queue_size=3)
    sub = feed.subscribe()
    for i in range(5):
        feed.publish({"type": "peer_status", "client_id": f"c{i}", "status": "ONLINE"})
    got = [await sub.next(0.1) for _ in range(3)]
    assert [g["client_id"] for g in got if g] == ["c2", "c3", "c4"]
    assert sub.dropped == 2


async def test_hub_heartbeats_are_published() -> None:
    feed = LiveFeed()
    bus = EventBus()
    feed.attach_hub(bus)
    sub = feed.subscribe("any-session")  # peer events carry no session: everyone sees them
    await bus.dispatch(ev.HeartbeatReceived("p1", "TRAINING", 2, 1, 3, 0.4, 0.9))
    got = await sub.next(1.0)
    assert got == {
        "type": "heartbeat",
        "client_id": "p1",
        "status": "TRAINING",
        "epoch": 1,
        "epochs": 3,
        "loss": 0.4,
        "accuracy": 0.9,
    }


@pytest.mark.slow
async def test_event_stream_checks_the_token(tmp_path: Path) -> None:
    async with platform(tmp_path, local_clients=1) as http:
        assert (await http.get("/ui/events", params={"token": "forged"})).status_code == 401
        auth = await sign_up_and_in(http)
        token = auth["Authorization"].removeprefix("Bearer ")
        r = await http.get("/ui/events", params={"token": token, "session": "nosuchsession"})
        assert r.status_code == 404
        async with http.stream("GET", "/ui/events", params={"token": token}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(20):  # the local peer's heartbeat arrives as an event
                async for line in stream.aiter_lines():
                    if line == "event: heartbeat":
                        break
        page = await http.get("/ui/signin")
        assert page.status_code == 200 and "Sign in" in page.text
        assert (await http.get("/static/vendor/uPlot.iife.min.js")).status_code == 200
