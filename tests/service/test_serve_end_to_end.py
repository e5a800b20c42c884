"""The first figure of the site-agent work, end to end on real services: RabbitMQ, PostgreSQL, S3
(moto) and an MLflow server. Three sites made with ``fedhive admin site create``, a running
``fedhive serve`` (broker, PostgreSQL, the S3 artifact store, MLflow tracking, an app installed)
and three ``fedhive agent`` processes, one per site. One after another, with no agent restarted,
a star session, a hierarchical session over two combiners and a decentralised session, each
started over HTTP: all three COMPLETED; each on the dashboard at 1280 and 390 px wide (its
status, its rounds' charts, the combiners of the hierarchical one, its MLflow link; nothing
wider than a phone; screenshots in test-artifacts/); and each tracked in MLflow, one finished run
per session with a metric per round (the decentralised one's from the peers' reports) and the
session's final model (the decentralised one's handed over by a peer at its end).

Phases are timed; the times are printed (``pytest -s``) for the closing note of the work."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_user_app import NAME, write_app
from serve_process import Server
from site_agents import Rest, SiteAgent, create_sites, need_module, read_sites

from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.storage import sessions_repo
from fedhive.storage.database import Database
from fedhive.transports.amqp import delete_namespace
from service.test_platform_flow import sign_up_and_in, wait_for
from tracking.conftest import MlflowProcess
from web.test_dashboard_browser import CHROMIUM_ARGS, DESKTOP, PHONE, chromium
from web.test_dashboard_pages import Browser, fits, keep_shots

pytestmark = [
    pytest.mark.amqp, pytest.mark.postgres, pytest.mark.s3, pytest.mark.mlflow, pytest.mark.browser,
    pytest.mark.slow, pytest.mark.timeout(400),
]  # fmt: skip

ROUNDS = 3
TOPOLOGIES = ("star", "hierarchical", "decentralised")
SESSION_DEADLINE_S = 120


class Clock:
    """How long each phase took, for the closing note (printed; never asserted: machines differ)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append((phase, now - self.last))
        self.last = now

    def report(self) -> str:
        laps = ", ".join(f"{p} {s:.1f} s" for p, s in self.phases)
        return f"end to end: {time.monotonic() - self.start:.1f} s ({laps})"


async def test_three_agents_run_a_star_a_hierarchical_and_a_decentralised_session_seen_on_the_dashboard_and_in_mlflow(
    rabbitmq_url: str, pg_database: str, s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    executable = chromium()
    async_api = need_module("playwright.async_api", "pip install 'fedhive[dev]'")
    mlflow_api = need_module("mlflow", "pip install 'fedhive[mlflow]'")
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # for serve (a subprocess) and its S3 store
    tag = uuid.uuid4().hex[:8]
    namespace, home, creds = f"test-{tag}", tmp_path / "home", tmp_path / "sites.jsonl"
    site_ids: list[str] = []
    combiners: list[str] = []
    async with contextlib.AsyncExitStack() as stack:

        async def delete_queues() -> None:  # last, once every node is gone
            ids = [COORDINATOR_ID, *site_ids, *combiners]
            await asyncio.wait_for(delete_namespace(rabbitmq_url, namespace, ids), 30)

        stack.push_async_callback(delete_queues)
        tracking = MlflowProcess(tmp_path / "mlflow")  # first: the slowest to start; the rest is made meanwhile
        stack.callback(tracking.stop)
        admin = create_sites(home, pg_database, 3, creds)
        folder = write_app(tmp_path / "apps")
        sites = read_sites(admin, creds)
        site_ids[:] = [s.site_id for s in sites]
        # The agents start before the server, as sites that stay do: they beat until one is there.
        agents, state = [], tmp_path / "state"
        for i, site in enumerate(sites):
            agent = SiteAgent(site, i, 3, broker=rabbitmq_url, namespace=namespace, app=folder, state_dir=state)
            stack.callback(agent.stop)
            agents.append(agent)
        pids = [a.proc.popen.pid for a in agents]
        mlflow_url = await asyncio.to_thread(tracking.ready)
        clock.lap("MLflow server up, sites made, agents started")
        deployment = {
            "broker_url": rabbitmq_url,
            "namespace": namespace,
            "db_url": pg_database,
            "artifacts_url": f"s3://fedhive-{tag}/artifacts?endpoint={s3}",
        }
        extra = ["--app", str(folder), "--mlflow-tracking-uri", mlflow_url]
        server = Server(home, deployment, local_clients=0, extra=extra)
        stack.callback(server.stop)
        clock.lap("serve up")
        try:
            for agent in agents:
                agent.connected()
            sessions: dict[str, dict[str, Any]] = {}

            def explain() -> dict[str, str]:
                return {"server": server.tail(60), **{a.site.site_id: a.proc.tail(10) for a in agents}}

            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                rest = Rest(http, await sign_up_and_in(http))
                for topology in TOPOLOGIES:
                    await rest.wait_online(site_ids)  # free again after the session before
                    if topology == "star":
                        clock.lap("three agents online")
                    sid = await rest.start(topology, rounds=ROUNDS, min_peers=3, app=NAME)
                    session = await rest.ended(sid, SESSION_DEADLINE_S, explain)
                    assert session["status"] == "COMPLETED", (session, explain())
                    assert [r["round"] for r in await rest.rounds(sid)] == list(range(1, ROUNDS + 1))
                    sessions[topology] = session
                    clock.lap(f"{topology} session")
                combiners[:] = [f"combiner-{sessions['hierarchical']['id']}-{i}" for i in (1, 2)]
                # no agent was restarted: the same three processes took part in all three sessions
                assert [a.proc.popen.pid for a in agents] == pids and all(a.proc.popen.poll() is None for a in agents)
                took_part(pg_database, sessions, site_ids, combiners)

                runs = await tracked_runs(mlflow_api.MlflowClient(mlflow_url), sessions)
                clock.lap("MLflow runs")
                shots = tmp_path / "shots"
                shots.mkdir()
                await on_the_dashboard(async_api, executable, rest, shots, sessions, runs, combiners)
                clock.lap("dashboard at 1280 and 390 px")
        finally:
            print(clock.report())


def took_part(db_url: str, sessions: dict[str, dict[str, Any]], site_ids: list[str], combiners: list[str]) -> None:
    """Every site trained in every round of every session; the hierarchical one's sites were
    spread over both combiners; the decentralised one's peers agreed on the model each round, and
    each site's ``ctx.state`` (the app counts its rounds there) holds all nine rounds."""
    db = Database(db_url)
    try:
        with db.session(read_only=True) as s:
            for topology, session in sessions.items():
                rows = sessions_repo.client_results(s, session["id"])
                trained = {(r.round, r.client_id) for r in rows if r.client_id in site_ids}
                assert trained == {(n, c) for n in range(1, ROUNDS + 1) for c in site_ids}, (topology, trained)
                if topology == "hierarchical":
                    assert {r.via for r in rows if r.client_id in site_ids} == set(combiners)
                if topology == "decentralised":
                    rounds = sessions_repo.list_rounds(s, session["id"])
                    assert all(r.metrics["digest_agreement"] == 1.0 and r.metrics["peers"] == 3 for r in rounds)
                    # each agent's ctx.state counted every round it trained, in all three sessions
                    counted = {r.client_id: r.metrics["rounds"] for r in rows if r.round == ROUNDS}
                    assert counted == {c: 3.0 * ROUNDS for c in site_ids}, counted
    finally:
        db.dispose()


async def tracked_runs(client: Any, sessions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each session's run in MLflow (by its session tag), once FINISHED (the tracker ends it after
    the database says COMPLETED), with its round metric at steps 1..ROUNDS; the star and
    hierarchical ones with their final model, the decentralised one with none. Returns run ids."""

    def finished(sid: str) -> Any:
        experiment = client.get_experiment_by_name("fedhive")
        if experiment is None:
            return None
        tagged = client.search_runs([experiment.experiment_id], filter_string=f"tags.`fedhive.session_id` = '{sid}'")
        found = [r for r in tagged if r.data.tags.get("fedhive.role", "coordinator") == "coordinator"]
        assert len(found) <= 1, found
        return found[0] if found and found[0].info.status == "FINISHED" else None

    runs = {}
    for topology, session in sessions.items():

        async def check(sid: str = session["id"]) -> Any:
            return await asyncio.to_thread(finished, sid)

        run = await wait_for(check, deadline_s=60, every=0.5)
        steps = [m.step for m in await asyncio.to_thread(client.get_metric_history, run.info.run_id, "mse")]
        assert sorted(steps) == list(range(1, ROUNDS + 1)), (topology, steps)
        logged = {a.path for a in await asyncio.to_thread(client.list_artifacts, run.info.run_id)}
        assert "model" in logged, (topology, logged)
        runs[topology] = run.info.run_id
    return runs


async def on_the_dashboard(
    async_api: Any,
    executable: str,
    rest: Rest,
    shots: Path,
    sessions: dict[str, dict[str, Any]],
    runs: dict[str, str],
    combiners: list[str],
) -> None:
    """Each session's page at 1280 and at 390 px: COMPLETED, a chart reaching the last round, its
    MLflow run linked, the hierarchical one's combiners with the sites behind them; the sessions
    list names all three; no page scrolls sideways, no script error, no CSP violation."""
    base = str(rest.http.base_url).rstrip("/")
    async with async_api.async_playwright() as pw:
        b = Browser(
            await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS),
            base,
            rest.auth["Authorization"][7:],
            shots,
        )
        try:
            for viewport in (DESKTOP, PHONE):
                width = viewport["width"]
                page = await b.page(viewport)
                await page.goto(f"{base}/ui")
                for session in sessions.values():
                    await page.wait_for_selector(f"#session-{session['id']} .badge.COMPLETED")
                await fits(page, width)
                await b.shot(page, f"e2e-sessions-{width}")
                for topology, session in sessions.items():
                    await page.goto(f"{base}/ui/sessions/{session['id']}")
                    await page.wait_for_selector("#status.COMPLETED")
                    await page.wait_for_selector(f"#charts .chart[data-last-round='{ROUNDS}']")
                    link = page.locator("#mlflow-link")
                    await link.wait_for()
                    href = await link.get_attribute("href")
                    assert href is not None and href.endswith(f"/runs/{runs[topology]}"), (topology, href)
                    if topology == "hierarchical":
                        await page.wait_for_selector("#combiners tbody tr >> nth=1")
                        shown = await page.locator("#combiners tbody tr td:first-child").all_inner_texts()
                        assert sorted(shown) == combiners
                    await fits(page, width)
                    await b.shot(page, f"e2e-{topology}-{width}")
                assert await b.violations(page) == []
            assert b.errors == []
        finally:
            await b.browser.close()
    keep_shots(shots)
