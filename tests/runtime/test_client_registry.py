"""The client registry: statuses through registrations, heartbeats and timeouts, and the count of
clients that are not OFFLINE kept in step with them whatever happens, in any order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedhive.runtime.registry import ClientRegistry, PeerStatus

IDS = ["a", "b", "c", "d"]
op = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(IDS)),
    st.tuples(st.just("seen"), st.sampled_from(IDS)),
    st.tuples(st.just("set"), st.sampled_from(IDS), st.sampled_from(list(PeerStatus))),
    st.tuples(st.just("wait"), st.floats(0, 20)),
    st.tuples(st.just("expire")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_the_online_count_follows_every_change(ops: list[tuple[object, ...]]) -> None:
    now = [0.0]
    registry = ClientRegistry(heartbeat_timeout_s=10.0, clock=lambda: now[0])
    for o in ops:
        if o[0] == "register":
            registry.register(str(o[1]), 5)
        elif o[0] == "seen":
            registry.seen(str(o[1]))
        elif o[0] == "set":
            registry.set_status(str(o[1]), o[2])  # type: ignore[arg-type]
        elif o[0] == "wait":
            now[0] += float(o[1])  # type: ignore[arg-type]
        else:
            registry.expire()
        assert registry.online_count() == len(registry.online())


def test_statuses_through_a_clients_life() -> None:
    now = [0.0]
    registry = ClientRegistry(heartbeat_timeout_s=10.0, clock=lambda: now[0])
    assert registry.register("a", 5) is None and registry.online() == ["a"]
    assert registry.set_status("a", PeerStatus.TRAINING) is PeerStatus.ONLINE
    now[0] = 11.0
    assert registry.expire() == ["a"] and registry.online_count() == 0
    assert registry.seen("a") is PeerStatus.OFFLINE and registry.online_count() == 1
    assert registry.seen("unknown") is None and registry.online_count() == 1
