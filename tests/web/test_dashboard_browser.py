"""The dashboard in a real browser: Playwright drives Debian's headless chromium against the
platform in this process (API + hub + three local peers), as a user would: sign in, start a
session from the new-session form with a CSV upload, and watch the accuracy chart reach the last
round through server-sent events. The page is saved as a test artifact in test-artifacts/ (not
tracked); with FEDHIVE_UPDATE_DOCS=1 it also replaces docs/dashboard.png, the README's picture, so
that a test run does not rewrite a tracked file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.platform_user_app import NAME, write_app
from service.test_platform_flow import csv_bytes, platform, sign_up_and_in, wait_for
from web import regression_app

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

ROUNDS = 4
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# tests/conftest.py has the same switch; importing it by name is ambiguous next to tests/api/conftest.py
REQUIRE_SERVICES = os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1"
REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "dashboard.png"
ARTIFACTS = REPO / "test-artifacts"
ARTIFACT_SCREENSHOT = ARTIFACTS / "dashboard.png"
DESKTOP = {"width": 1280, "height": 1000}
PHONE = {"width": 390, "height": 844}


def chart(metric: str) -> str:
    """The selector of the session page's line chart of ``metric``."""
    return f"#charts > [data-metric='{metric}'] .chart"


def boxes(metric: str) -> str:
    """The selector of the session page's client box plot of ``metric``."""
    return f"#boxes > [data-metric='{metric}'] svg"


async def three_online(http: httpx.AsyncClient, auth: dict[str, str]) -> None:
    async def online() -> bool:
        peers = (await http.get("/peers", headers=auth)).json()
        return sum(p["status"] == "ONLINE" for p in peers) >= 3

    await wait_for(online)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        msg = "chromium is not installed (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{msg} and FEDHIVE_REQUIRE_SERVICES=1: browser tests are required here")
        pytest.skip(msg)
    return path


async def test_sign_in_start_session_and_watch_it_train(tmp_path: Path) -> None:
    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    data = tmp_path / "upload.csv"
    data.write_bytes(csv_bytes(rows=300))
    installed = [str(write_app(tmp_path / "apps"))]  # fedhive serve --app FOLDER
    async with platform(tmp_path / "home", apps=installed) as http, async_api.async_playwright() as pw:
        auth = await sign_up_and_in(http, "grace@example.org")

        await three_online(http, auth)
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            base = str(http.base_url).rstrip("/")

            await page.goto(f"{base}/ui")  # no token yet: the page sends us to sign in
            await page.wait_for_url("**/ui/signin")
            await page.fill("input[name=email]", "grace@example.org")
            await page.fill("input[name=password]", "correct horse")
            await page.click("#signin")
            await page.wait_for_url(f"{base}/ui")

            await page.click("text=New session")
            # The form lists the installed apps, builtin first; another app hides the data and
            # model fields (it reads its own data at each site) and shows its run config instead.
            await page.wait_for_selector(f"#app option[value='{NAME}']", state="attached")
            assert await page.locator("#app option").all_inner_texts() == ["builtin", NAME]
            assert await page.is_hidden("#run-config-field")
            await page.select_option("#app", NAME)
            assert await page.is_hidden("#data-fields") and await page.is_hidden("input[name=model]")
            assert await page.is_visible("#run-config") and await page.is_disabled("input[name=dataset]")
            assert "marker" in (await page.get_attribute("#run-config", "placeholder") or "")
            await page.set_viewport_size(PHONE)  # a phone: the form still fits
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            box = await page.locator("#run-config").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
            await page.set_viewport_size(DESKTOP)
            await page.select_option("#app", "builtin")
            assert await page.is_visible("#data-fields") and await page.is_hidden("#run-config-field")
            await page.set_input_files("input[name=dataset]", str(data))
            await page.fill("input[name=label]", "kind")
            await page.fill("input[name=rounds]", str(ROUNDS))
            await page.fill("input[name=epochs]", "2")
            await page.fill("input[name=batch_size]", "16")
            await page.fill("input[name=min_peers]", "3")
            # combiners belong to a hierarchical session only: shown (and sent) for it alone
            assert await page.is_hidden("#combiners-field")
            await page.select_option("#topology", "hierarchical")
            assert await page.is_visible("#combiners-field") and await page.is_enabled("#combiners")
            await page.select_option("#topology", "star")
            assert await page.is_hidden("#combiners-field") and await page.is_disabled("#combiners")
            await page.click("#start")
            await page.wait_for_url("**/ui/sessions/*")

            # The chart is redrawn on each RoundCompleted event; its data-last-round says how far.
            await page.wait_for_selector(f"{chart('accuracy')}[data-last-round='{ROUNDS}']", timeout=120_000)
            await page.wait_for_selector("#status.COMPLETED", timeout=30_000)
            assert await page.inner_text("#app") == "builtin"
            assert await page.locator("#clients tbody tr").count() == 3
            # the builtin app also reports its local steps: a metric like any other
            assert await page.locator("#charts h2").all_inner_texts() == ["accuracy", "loss", "steps"]
            assert await page.locator(f"{boxes('accuracy')} g").count() == ROUNDS
            await page.wait_for_timeout(300)  # let uPlot finish its paint before the picture
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)

            await page.click("nav >> text=Sites")
            await page.wait_for_selector("#sites tbody tr >> nth=2")
            await page.click("nav >> text=Models")
            await page.wait_for_selector("#models button.download")
            assert errors == []
        finally:
            await browser.close()
    ARTIFACT_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT_SCREENSHOT)
    if os.environ.get("FEDHIVE_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)


async def test_an_apps_own_metrics_get_their_charts_live_at_both_widths(tmp_path: Path) -> None:
    """A regression app's ``mse`` and ``r2`` (which first appears in round 2) on the session page:
    the page is open before ``r2`` exists and its chart arrives through the live feed."""
    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    gate = tmp_path / "go-on"  # round 2 waits for this file: the test looks at round 1 first
    installed = [str(regression_app.write_app(tmp_path / "apps"))]
    async with platform(tmp_path / "home", apps=installed) as http, async_api.async_playwright() as pw:
        auth = await sign_up_and_in(http, "emmy@example.org")
        await three_online(http, auth)
        form = {
            "app": regression_app.NAME,
            "run_config": json.dumps({"gate": str(gate)}),
            "rounds": str(ROUNDS),
            "epochs": "2",
            "min_peers": "3",
        }
        r = await http.post("/sessions/start", headers=auth, data=form)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            base = str(http.base_url).rstrip("/")
            await page.goto(f"{base}/ui/signin")  # the page a token is kept for, then the session
            await page.evaluate("t => sessionStorage.setItem('fedhive.token', t)", auth["Authorization"][7:])
            await page.goto(f"{base}/ui/sessions/{sid}")

            await page.wait_for_selector(f"{chart('mse')}[data-last-round='1']", timeout=120_000)
            assert await page.locator("#charts h2").all_inner_texts() == ["mse"]  # no r2 yet
            await page.evaluate("window.neverReloaded = true")
            gate.touch()
            await page.wait_for_selector(f"{chart('r2')}[data-last-round='{ROUNDS}']", timeout=120_000)
            await page.wait_for_selector("#status.COMPLETED", timeout=60_000)
            assert await page.evaluate("window.neverReloaded === true")  # the chart came live

            for viewport in (DESKTOP, PHONE):
                await page.set_viewport_size(viewport)
                await check_metric_charts(page, viewport["width"])
                await page.screenshot(path=str(tmp_path / f"metrics-{viewport['width']}.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    for viewport in (DESKTOP, PHONE):
        name = f"metrics-{viewport['width']}.png"
        shutil.copyfile(tmp_path / name, ARTIFACTS / f"dashboard-{name}")


async def check_metric_charts(page: Any, width: int) -> None:
    # every line chart drawn at its card's width (redrawn on resize), each box plot at 1:1 scale
    # so its labels keep their size: nothing wider than the page. Both are redrawn by a
    # ResizeObserver after the viewport changes: wait for the box plots too, not only the lines.
    await page.wait_for_function(
        """() => [...document.querySelectorAll('#charts .chart')].every((el) => {
             const u = el.querySelector('.uplot');
             return u && Math.abs(u.getBoundingClientRect().width - el.clientWidth) <= 1;
           }) && [...document.querySelectorAll('#boxes svg')].every((s) =>
             Math.abs(s.viewBox.baseVal.width - s.clientWidth) <= 1 || s.clientWidth < 240)""",
        timeout=10_000,
    )
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    for svg in await page.locator("#boxes svg").all():
        drawn = await svg.evaluate("s => [s.viewBox.baseVal.width, s.clientWidth]")
        assert abs(drawn[0] - drawn[1]) <= 1 or drawn[1] < 240, drawn
    for card in await page.locator("#charts > section, #boxes > section").all():
        box = await card.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
    assert await page.locator("#charts h2").all_inner_texts() == ["mse", "r2"]
    r2 = page.locator(chart("r2"))
    assert await r2.get_attribute("data-points") == str(ROUNDS - 1)  # r2 from round 2 on
    assert await page.locator(chart("mse")).get_attribute("data-points") == str(ROUNDS)
    legend = await page.locator(f"{chart('r2')} .u-legend .u-series .u-label").all_inner_texts()
    assert {"r2", "train_r2"} <= {label.strip() for label in legend}, legend
    assert await page.locator("#boxes h2").all_inner_texts() == ["mse", "r2"]
    assert await page.locator(f"{boxes('r2')} g").count() == ROUNDS - 1
    assert await page.locator(f"{boxes('mse')} g").count() == ROUNDS
    assert await page.locator("#clients thead th").all_inner_texts() == [
        "Client",
        "Rounds",
        "Last round",
        "Status",
        "Examples",
        "mse",
        "r2",
    ]
