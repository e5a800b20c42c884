"""The finished dashboard in headless Chromium, at 1280 and at 390 px wide, under its
Content-Security-Policy (not one violation reported on any page):

- recorded sessions (``web.recorded``): a hierarchical one shows its combiners, the clients behind
  each and box plots per combiner; tiny client losses get box-plot axis labels that can be read;
  hovering a chart shows the round's values;
- every page fits a phone (the document never scrolls sideways, the navigation wraps), the sites
  page shows what each site agent announced, the sessions list names each session with its key
  metric, and a deep link survives signing in, to this dashboard's pages only;
- a live session (with an MLflow server): the page tells its app, hyperparameters, data, duration,
  bytes per round, how it ended and links its MLflow run; cancelling it from one tab shows
  CANCELLED in another without a reload; Cancel and Delete ask first, and Delete is offered only
  once the session has ended.

Screenshots go to test-artifacts/ (not tracked).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fedhive.storage import users_repo
from fedhive.storage.artifacts import artifact_store_from_url
from fedhive.storage.database import Database
from fedhive.storage.models import ClientStatus
from fedhive.storage.secret_box import SecretBox, new_key_text
from service.test_platform_flow import platform, sign_up_and_in, wait_for
from tracking.conftest import mlflow_server  # noqa: F401  (fixture, found by name)
from web import regression_app
from web.recorded import HIERARCHY_ROUNDS, record_hierarchy, record_tiny_losses
from web.test_dashboard_browser import ARTIFACTS, CHROMIUM_ARGS, DESKTOP, PHONE, chromium, three_online

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

EMAIL, PASSWORD = "grace@example.org", "correct horse"
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


class Browser:
    """One Chromium for a test: pages signed in with a token, CSP violations and script errors
    collected from every page, screenshots kept for test-artifacts/."""

    def __init__(self, browser: Any, base: str, token: str, shots: Path) -> None:
        self.browser, self.base, self.token, self.shots = browser, base, token, shots
        self.errors: list[str] = []
        self.pages: list[Any] = []

    async def page(self, viewport: dict[str, int] = DESKTOP, *, signed_in: bool = True) -> Any:
        context = await self.browser.new_context(viewport=viewport)
        page = await context.new_page()
        await page.add_init_script(RECORD_VIOLATIONS)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        if signed_in:
            await page.goto(f"{self.base}/ui/signin")  # the page a token is kept for (sessionStorage)
            await page.evaluate("t => sessionStorage.setItem('fedhive.token', t)", self.token)
        self.pages.append(page)
        return page

    async def violations(self, page: Any) -> list[str]:
        return list(await page.evaluate("window.cspViolations"))

    async def shot(self, page: Any, name: str) -> None:
        await page.wait_for_timeout(250)  # uPlot's paint before the picture
        await page.screenshot(path=str(self.shots / f"dashboard-{name}.png"), full_page=True)


async def fits(page: Any, width: int) -> None:
    """Nothing wider than the page, and every navigation link inside it."""
    assert await page.evaluate("document.documentElement.scrollWidth") <= width, page.url
    for link in await page.locator("header a").all():
        box = await link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (page.url, box)


def keep_shots(shots: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in shots.glob("*.png"):
        shutil.copyfile(shot, ARTIFACTS / shot.name)


async def owner_of(home: Path, email: str) -> int:
    db = Database(home / "fedhive.db")
    try:
        with db.session(read_only=True) as s:
            user = users_repo.get_user_by_email(s, email)
            assert user is not None
            return int(user.id)
    finally:
        db.dispose()


def record_sites(home: Path) -> None:
    """Two agents that announced themselves, a one-session client that did not, a remote combiner."""
    db = Database(home / "fedhive.db")
    box = SecretBox(new_key_text(), origin="test")  # the secrets are never read here
    try:
        with db.session() as s:
            sites = [("hospital-a", "Hospital A"), ("hospital-b", "Hospital B"), ("lab-c", "lab-c")]
            for cid, name, role in [*((c, n, "site") for c, n in sites), ("rack-d", "Rack D", "combiner")]:
                users_repo.create_client(s, name, box=box, client_id=cid, role=role)
                users_repo.record_heartbeat(s, cid, status=ClientStatus.ONLINE, num_examples=120)
            users_repo.record_site(
                s,
                "hospital-a",
                {
                    "agent": "0.1.0",
                    "apps": {"builtin": "0123456789ab", "xray-segmentation-with-a-long-name": "ba9876543210"},
                    "datasets": ["chest-scans-2024-anonymised", "chest-scans-2025-anonymised"],
                },
            )
            users_repo.record_site(
                s, "hospital-b", {"agent": "0.1.0", "apps": {"builtin": "0123456789ab"}, "datasets": []}
            )
            users_repo.update_client_status(s, "hospital-b", ClientStatus.OFFLINE)
    finally:
        db.dispose()


async def test_recorded_sessions_hierarchy_readable_axes_and_hover_values(tmp_path: Path) -> None:
    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    shots = tmp_path / "shots"
    shots.mkdir()
    home = tmp_path / "home"
    async with platform(home, local_clients=0) as http, async_api.async_playwright() as pw:
        auth = await sign_up_and_in(http, EMAIL)
        owner = await owner_of(home, EMAIL)
        db = Database(home / "fedhive.db")
        try:
            await record_hierarchy(db, artifact_store_from_url(str(home / "artifacts")), owner, session_id="hier")
            losses = record_tiny_losses(db, owner, session_id="tiny")
        finally:
            db.dispose()
        tiny = (await http.get("/ui/data/sessions/tiny", headers=auth)).json()
        b = Browser(
            await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS),
            str(http.base_url).rstrip("/"),
            auth["Authorization"][7:],
            shots,
        )
        try:
            for viewport in (DESKTOP, PHONE):
                width = viewport["width"]
                page = await b.page(viewport)
                # the hierarchical session: a combiners table, box plots per combiner, clients naming theirs
                await page.goto(f"{b.base}/ui/sessions/hier")
                await page.wait_for_selector("#combiners tbody tr >> nth=1")
                assert await page.is_visible("#hierarchy")
                rows = [
                    await r.locator("td").all_inner_texts() for r in await page.locator("#combiners tbody tr").all()
                ]
                assert [(r[0], r[1]) for r in rows] == [("combiner-0", "2"), ("combiner-1", "2")]
                behind = sorted(c.strip() for r in rows for c in r[2].split(","))
                assert behind == [f"client-{i}" for i in range(4)]
                titles = await page.locator("#combiner-boxes h2").all_inner_texts()
                assert {t.split(" · ")[0] for t in titles} == {"combiner-0", "combiner-1"}
                assert all(" · 2 clients · " in t for t in titles)
                for svg in await page.locator("#combiner-boxes svg").all():
                    assert await svg.locator("g.round").count() == HIERARCHY_ROUNDS
                header = await page.locator("#clients thead th").all_inner_texts()
                assert header[:2] == ["Client", "Combiner"]
                assert await page.locator("#clients tbody tr").count() == 4  # clients only, not combiners
                assert await page.locator("#curves .chart[data-series='4']").count() >= 1  # a line per client
                assert await page.inner_text("#name") == "two combiners"
                await fits(page, width)
                await b.shot(page, f"hierarchy-{width}")

                # tiny losses: axis labels that differ and read as their values, bottom to top
                await page.goto(f"{b.base}/ui/sessions/tiny")
                svg = page.locator("#boxes > [data-metric='loss'] svg")
                await svg.locator("text.tick >> nth=0").wait_for()
                drawn = await svg.evaluate(
                    """s => [...s.querySelectorAll('text.tick')]
                         .map((t) => [t.textContent, Number(t.getAttribute('y'))])"""
                )
                labels = [label for label, _ in sorted(drawn, key=lambda d: -d[1])]
                assert labels == [t["label"] for t in tiny["boxes"][0]["axis"]["ticks"]]
                assert len(set(labels)) == len(labels) and [float(t) for t in labels] == sorted(
                    float(t) for t in labels
                )
                assert float(labels[0]) <= min(min(v) for v in losses.values())
                assert float(labels[-1]) >= max(max(v) for v in losses.values())
                title = await svg.locator("g.round >> nth=0").locator("title").text_content()
                assert title is not None and "median" in title and "3 clients" in title

                # hover: the legend shows the hovered round's values
                over = page.locator("#charts > [data-metric='loss'] .u-over")
                box = await over.bounding_box()
                assert box is not None
                # idle, the legend shows the last round; hovering the first round shows round 1's
                await over.hover(position={"x": 2, "y": box["height"] / 2})  # scrolled into view first
                values = page.locator("#charts > [data-metric='loss'] .u-legend .u-series .u-value")
                await page.wait_for_function(
                    "el => el.textContent === '1'", arg=await values.nth(0).element_handle(), timeout=5_000
                )
                expected = await page.evaluate(
                    "v => fedhiveCharts.short(v, 4)", tiny["charts"][0]["series"][0]["values"][0]
                )
                assert await values.nth(1).inner_text() == expected
                await fits(page, width)
                await b.shot(page, f"axes-{width}")
                assert await b.violations(page) == []
            assert b.errors == []
        finally:
            await b.browser.close()
    keep_shots(shots)


async def test_every_page_fits_a_phone_sites_and_names_show_and_deep_links_survive_signing_in(
    tmp_path: Path,
) -> None:
    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    shots = tmp_path / "shots"
    shots.mkdir()
    home = tmp_path / "home"
    async with platform(home, local_clients=0) as http, async_api.async_playwright() as pw:
        auth = await sign_up_and_in(http, EMAIL)
        owner = await owner_of(home, EMAIL)
        db = Database(home / "fedhive.db")
        try:
            losses = record_tiny_losses(db, owner, session_id="tiny")
        finally:
            db.dispose()
        record_sites(home)
        b = Browser(
            await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS),
            str(http.base_url).rstrip("/"),
            auth["Authorization"][7:],
            shots,
        )
        try:
            # every page, as a phone and as a desktop: filled by its script, nothing sideways
            filled = {
                "/ui": "#session-tiny",
                "/ui/new": "#app-info:has-text('code')",
                "/ui/sites": "#site-hospital-a",
                "/ui/models": "#models p.muted",
                "/ui/sessions/tiny": "#boxes svg g.round",
            }
            for viewport in (PHONE, DESKTOP):
                width = viewport["width"]
                page = await b.page(viewport)
                for path, selector in filled.items():
                    await page.goto(f"{b.base}{path}")
                    await page.wait_for_selector(selector)
                    await fits(page, width)
                    name = "sessions" if path == "/ui" else path.rsplit("/", 1)[-1]
                    await b.shot(page, f"{name}-{width}")
                assert await b.violations(page) == []
                fresh = await b.page(viewport, signed_in=False)
                await fresh.goto(f"{b.base}/ui/signin")
                await fits(fresh, width)
                await b.shot(fresh, f"signin-{width}")

            # the sites page: what each agent announced; a plain client announced nothing
            page = await b.page(DESKTOP)
            await page.goto(f"{b.base}/ui/sites")
            site = page.locator("#site-hospital-a")
            await site.wait_for()
            assert await site.locator(".agent").inner_text() == "0.1.0"
            assert "xray-segmentation-with-a-long-name" in await site.locator(".apps").inner_text()
            assert "ba9876543210" in await site.locator(".apps").inner_text()
            assert await site.locator(".datasets .tag").all_inner_texts() == [
                "chest-scans-2024-anonymised",
                "chest-scans-2025-anonymised",
            ]
            assert await site.locator(".status").inner_text() == "ONLINE"
            assert await site.locator(".beat").inner_text() != "–"
            assert await page.locator("#site-hospital-b .status").inner_text() == "OFFLINE"
            assert await page.locator("#site-lab-c .agent").inner_text() == "–"
            assert await page.locator("#site-lab-c .datasets").inner_text() == "–"
            # each node's role, at both widths (the phone's table scrolls inside itself)
            for viewport in (DESKTOP, PHONE):
                page = await b.page(viewport)
                await page.goto(f"{b.base}/ui/sites")
                await page.locator("#site-rack-d").wait_for()
                assert await page.locator("#sites th >> nth=1").inner_text() == "Role"
                assert await page.locator("#site-rack-d .role").inner_text() == "combiner"
                assert await page.locator("#site-hospital-a .role").inner_text() == "site"
                await fits(page, viewport["width"])

            # the sessions list: the session's name, its key metric's last value and round
            await page.goto(f"{b.base}/ui")
            row = page.locator("#session-tiny")
            await row.wait_for()
            assert (await row.locator("td >> nth=0").locator("a").inner_text()) == "tiny losses"
            key = await row.locator("td.key").inner_text()
            shown = await page.evaluate("v => fedhiveCharts.short(v, 4)", sum(losses[4]) / 3)
            assert key.split() == ["loss", shown, "r4"]

            # a deep link: sign in, then back to the page asked for
            page = await b.page(DESKTOP, signed_in=False)
            await page.goto(f"{b.base}/ui/sessions/tiny")
            await page.wait_for_url(f"{b.base}/ui/signin?next={quote('/ui/sessions/tiny', safe='')}")
            await sign_in(page)
            await page.wait_for_url(f"{b.base}/ui/sessions/tiny")
            await page.wait_for_selector("#boxes svg g.round")
            # ... to this dashboard's pages only: another site, or a path a browser reads as one, is /ui
            for target in ["https://evil.example/", "//evil.example/ui", "/ui/../../x", "/ui\\evil.example"]:
                page = await b.page(DESKTOP, signed_in=False)
                await page.goto(f"{b.base}/ui/signin?next={quote(target, safe='')}")
                assert await page.get_attribute("body", "data-next") == "/ui"
                await sign_in(page)
                await page.wait_for_url(f"{b.base}/ui")
            assert b.errors == []
        finally:
            await b.browser.close()
    keep_shots(shots)


async def sign_in(page: Any) -> None:
    await page.fill("input[name=email]", EMAIL)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("#signin")


async def test_a_live_sessions_page_tells_everything_cancel_shows_live_and_delete_asks_first(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    import mlflow

    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    shots = tmp_path / "shots"
    shots.mkdir()
    gate = tmp_path / "go-on"  # round 2 waits for it: the session is RUNNING while we look
    installed = [str(regression_app.write_app(tmp_path / "apps"))]
    settings = {"apps": installed, "mlflow_tracking_uri": mlflow_server}
    async with platform(tmp_path / "home", **settings) as http, async_api.async_playwright() as pw:
        try:
            auth = await sign_up_and_in(http, EMAIL)
            await three_online(http, auth)
            form = {
                "app": regression_app.NAME,
                "name": "live demo",
                "run_config": json.dumps({"gate": str(gate), "gate_timeout_s": 60}),
                "rounds": "4",
                "epochs": "3",
                "min_peers": "3",
            }
            r = await http.post("/sessions/start", headers=auth, data=form)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            run_id = await tracked_run(mlflow_server, sid)
            b = Browser(
                await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS),
                str(http.base_url).rstrip("/"),
                auth["Authorization"][7:],
                shots,
            )
            try:
                watcher = await b.page(DESKTOP)  # another tab, never reloaded: it learns of the cancel live
                await watcher.goto(f"{b.base}/ui/sessions/{sid}")
                await watcher.wait_for_selector("#charts > [data-metric='mse'] .chart[data-last-round='1']")
                await watcher.evaluate("window.neverReloaded = true")

                info = await about(watcher)
                assert info["app"].startswith(regression_app.NAME)
                assert all(part in info["hyperparameters"] for part in ("rounds 4", "epochs 3", "min_clients 3"))
                assert "gate_timeout_s 60" in info["run-config"]
                assert info["dataset"] == "each site's own data (the app reads it)"
                assert info["duration"] != "not started" and info["duration"].endswith("s")
                assert info["bytes"].split()[1] in ("B", "KB", "MB")
                assert info["ended"] == "still going"
                link = watcher.locator("#mlflow-link")
                await link.wait_for()
                href = await link.get_attribute("href")
                assert (
                    href is not None
                    and href.startswith(f"{mlflow_server}/#/experiments/")
                    and href.endswith(f"/runs/{run_id}")
                )
                assert await watcher.inner_text("#name") == "live demo"
                assert await watcher.locator("#curves > [data-metric='mse'] .chart").get_attribute("data-series") == "3"
                assert await watcher.is_visible("#cancel") and await watcher.is_hidden("#delete")
                await fits(watcher, DESKTOP["width"])
                await b.shot(watcher, "live-1280")

                actor = await b.page(PHONE)
                await actor.goto(f"{b.base}/ui/sessions/{sid}")
                await actor.wait_for_selector("#cancel:visible")
                actor.once("dialog", lambda d: d.dismiss())  # asked, and the answer was no
                await actor.click("#cancel")
                status = (await http.get(f"/sessions/{sid}", headers=auth)).json()["status"]
                assert status == "RUNNING"
                asked: list[str] = []

                async def yes(dialog: Any) -> None:
                    asked.append(dialog.message)
                    await dialog.accept()

                actor.once("dialog", yes)
                await actor.click("#cancel")
                await watcher.wait_for_selector("#status.CANCELLED", timeout=30_000)
                assert asked and "Cancel this session" in asked[0]
                assert await watcher.evaluate("window.neverReloaded === true")  # it came live
                await watcher.wait_for_selector("#delete:visible")
                assert await watcher.is_hidden("#cancel")
                assert (await about(watcher))["ended"] == "cancelled by its owner"
                await actor.wait_for_selector("#status.CANCELLED")
                await fits(actor, PHONE["width"])
                await b.shot(actor, "cancelled-390")
                await b.shot(watcher, "cancelled-1280")
                client = mlflow.MlflowClient(tracking_uri=mlflow_server)

                async def killed() -> bool:
                    return bool(client.get_run(run_id).info.status == "KILLED")

                await wait_for(killed, deadline_s=60, every=0.5)

                watcher.once("dialog", lambda d: d.accept())
                async with watcher.expect_response(lambda r: r.url.endswith("/ui/data/sessions")) as listed:
                    await watcher.click("#delete")  # then the page goes to the sessions list
                response = await listed.value
                assert watcher.url == f"{b.base}/ui"
                assert response.ok and sid not in [row["session"]["id"] for row in await response.json()]
                assert (await http.get(f"/sessions/{sid}", headers=auth)).status_code == 404
                assert client.get_run(run_id).info.lifecycle_stage == "deleted"
                for page in b.pages:
                    assert await b.violations(page) == []
                assert b.errors == []
            finally:
                await b.browser.close()
        finally:
            gate.touch()  # the local peers' training threads stop waiting
    keep_shots(shots)


async def about(page: Any) -> dict[str, str]:
    """The session page's "About this session" entries, by key."""
    entries = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#info > div')]
             .map((d) => [d.dataset.key, d.querySelector('dd').innerText]))"""
    )
    return {k: " ".join(v.split()) for k, v in entries.items()}


async def tracked_run(tracking_uri: str, sid: str) -> str:
    """The session's parent run id, once the tracker has made it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)

    async def found() -> str | None:
        experiment = await asyncio.to_thread(client.get_experiment_by_name, "fedhive")
        if experiment is None:
            return None
        runs = await asyncio.to_thread(
            client.search_runs, [experiment.experiment_id], f"tags.`fedhive.session_id` = '{sid}'"
        )
        return runs[0].info.run_id if runs else None

    return str(await wait_for(found, deadline_s=60, every=0.5))
