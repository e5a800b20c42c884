"""The second figure of the site-agent work, with real processes over RabbitMQ: three ``fedhive
agent`` processes (one per site) and a running ``fedhive serve``.

- An agent SIGKILLed between two sessions and started again (the same site, the same state folder)
  is selected again in the next session and trains in every round of it, its ``ctx.state`` as its
  last training left it (the app counts its rounds there).
- An agent SIGKILLed while it trains costs the session only that update: the round goes on with the
  others' updates once the coordinator has missed its heartbeats, the rounds after it run without
  the site, and the session COMPLETES with every round.

No wait is a sleep: each ends on a line the agents print (``round N: training``, ``connected``) or a
state the REST API or the database shows, within a deadline."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server
from site_agents import Rest, SiteAgent, create_sites, read_sites

from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.storage import sessions_repo
from fedhive.storage.database import Database
from fedhive.transports.amqp import delete_namespace
from service.test_platform_flow import sign_up_and_in

pytestmark = [pytest.mark.amqp, pytest.mark.slow, pytest.mark.timeout(300)]

FIRST_ROUNDS = 2
ROUNDS = 3
KILLED_IN_ROUND = 2
# The session's default heartbeat timeout (20 s) with its check every 5 s, plus a loaded machine.
SESSION_DEADLINE_S = 120


async def test_an_agent_killed_between_sessions_is_selected_again_and_one_killed_mid_round_costs_only_its_update(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    namespace, home, creds = f"test-{uuid.uuid4().hex[:8]}", tmp_path / "home", tmp_path / "sites.jsonl"
    site_ids: list[str] = []
    async with contextlib.AsyncExitStack() as stack:

        async def delete_queues() -> None:  # last, once every node is gone
            await delete_namespace(rabbitmq_url, namespace, [COORDINATOR_ID, *site_ids])

        stack.push_async_callback(delete_queues)
        admin = create_sites(home, f"sqlite:///{home / 'fedhive.db'}", 3, creds)
        folder = write_app(tmp_path / "apps")
        sites = read_sites(admin, creds)
        site_ids[:] = [s.site_id for s in sites]
        agents = []
        for i, site in enumerate(sites):
            agent = SiteAgent(
                site, i, 3, broker=rabbitmq_url, namespace=namespace, app=folder, state_dir=tmp_path / "state"
            )
            stack.callback(lambda a=agent: a.stop())  # the agent's process of the moment
            agents.append(agent)
        server = Server(home, {"broker_url": rabbitmq_url, "namespace": namespace}, local_clients=0,
                        extra=["--app", str(folder)])  # fmt: skip
        stack.callback(server.stop)
        restarted, killed, other = agents
        for agent in agents:
            agent.connected()

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            rest = Rest(http, await sign_up_and_in(http))

            def explain() -> dict[str, str]:
                return {"server": server.tail(40), **{a.site.site_id: a.proc.tail(15) for a in agents}}

            await rest.wait_online(site_ids)
            first = await rest.start("star", rounds=FIRST_ROUNDS, min_peers=3, app=NAME)
            assert (await rest.ended(first, SESSION_DEADLINE_S, explain))["status"] == "COMPLETED", explain()

            # Between two sessions: SIGKILL, and the same site started again on the same state folder.
            restarted.sigkill()
            restarted.start()
            restarted.connected()
            await rest.wait_online(site_ids)
            printed = len(killed.proc.out)
            config = json.dumps({"sleep_s": 1.0})  # each training long enough to be killed in
            second = await rest.start("star", rounds=ROUNDS, min_peers=2, app=NAME, run_config=config)
            restarted.proc.wait_for("registered with a coordinator", timeout=60)  # the new process was selected
            killed.proc.wait_for(f"round {KILLED_IN_ROUND}: training", timeout=60, after=printed)
            killed_at = time.monotonic()
            killed.sigkill()  # mid-round: its update of this round is never sent
            session = await rest.ended(second, SESSION_DEADLINE_S, explain)
            took_s = time.monotonic() - killed_at
            assert session["status"] == "COMPLETED", (session, explain())
            assert session["reason"] == f"completed all {ROUNDS} rounds"
            rounds = await rest.rounds(second)

    kept = results(home, second)
    back, gone, stayed = (a.site.site_id for a in (restarted, killed, other))
    by_round = {r["round"]: r for r in rounds}
    assert sorted(by_round) == list(range(1, ROUNDS + 1))
    for n, r in by_round.items():  # every update a round counted is on record, and no other
        assert r["num_updates"] == len(kept_ids(kept, n)), (n, r, kept)
    # The restarted agent was selected again: it trained in every round from its first (round 1,
    # or round 2 if it registered after the two that started the session), its ctx.state where
    # its last training before the SIGKILL left it.
    took = sorted(n for (n, c) in kept if c == back)
    assert took and took[0] <= KILLED_IN_ROUND and took == list(range(took[0], ROUNDS + 1)), took
    assert [kept[(n, back)]["rounds"] for n in took] == [float(FIRST_ROUNDS + i) for i in range(1, len(took) + 1)]
    # The agent killed mid-round cost that round its update, and nothing else: the round counted
    # the other two; the next ran without it; the session completed every round.
    assert by_round[KILLED_IN_ROUND]["metrics"]["selected"] == 3
    assert by_round[KILLED_IN_ROUND]["metrics"]["missing"] == [gone]
    assert kept_ids(kept, KILLED_IN_ROUND) == sorted([back, stayed])
    assert by_round[ROUNDS]["metrics"]["selected"] == 2 and kept_ids(kept, ROUNDS) == sorted([back, stayed])
    print(f"mid-round SIGKILL to COMPLETED: {took_s:.1f} s")


def kept_ids(kept: dict[tuple[int, str], dict[str, Any]], rnd: int) -> list[str]:
    return sorted(c for (n, c) in kept if n == rnd)


def results(home: Path, sid: str) -> dict[tuple[int, str], dict[str, Any]]:
    """The session's ACCEPTED updates: (round, site) -> the site's figures."""
    db = Database(home / "fedhive.db")
    try:
        with db.session(read_only=True) as s:
            rows = sessions_repo.client_results(s, sid)
            return {(r.round, r.client_id): dict(r.metrics) for r in rows if r.status.value == "ACCEPTED"}
    finally:
        db.dispose()
