"""The dashboard in a real browser: Playwright drives Debian's headless chromium against the
platform in this process (API + hub + three local peers), as a user would: sign in, start a
session from the new-session form with a CSV upload, and watch the accuracy chart reach the last
round through server-sent events. The page is saved as a test artifact in test-artifacts/ (not
tracked); with FEDHIVE_UPDATE_DOCS=1 it also replaces docs/dashboard.png, the README's picture, so
that a test run does not rewrite a tracked file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.platform_user_app import NAME, write_app
from service.test_platform_flow import csv_bytes, platform, sign_up_and_in, wait_for

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
ARTIFACT_SCREENSHOT = REPO / "test-artifacts" / "dashboard.png"


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

        async def three_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 3

        await wait_for(three_online)
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
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
            await page.set_viewport_size({"width": 390, "height": 844})  # a phone: the form still fits
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            box = await page.locator("#run-config").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
            await page.set_viewport_size({"width": 1280, "height": 1000})
            await page.select_option("#app", "builtin")
            assert await page.is_visible("#data-fields") and await page.is_hidden("#run-config-field")
            await page.set_input_files("input[name=dataset]", str(data))
            await page.fill("input[name=label]", "kind")
            await page.fill("input[name=rounds]", str(ROUNDS))
            await page.fill("input[name=epochs]", "2")
            await page.fill("input[name=batch_size]", "16")
            await page.fill("input[name=min_peers]", "3")
            await page.click("#start")
            await page.wait_for_url("**/ui/sessions/*")

            # The chart is redrawn on each RoundCompleted event; its data-last-round says how far.
            await page.wait_for_selector(f"#accuracy-chart[data-last-round='{ROUNDS}']", timeout=120_000)
            await page.wait_for_selector("#status.COMPLETED", timeout=30_000)
            assert await page.inner_text("#app") == "builtin"
            assert await page.locator("#clients tbody tr").count() == 3
            assert await page.locator("#accuracy-boxes g").count() == ROUNDS
            await page.wait_for_timeout(300)  # let uPlot finish its paint before the picture
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)

            await page.click("nav >> text=Peers")
            await page.wait_for_selector("#peers tbody tr >> nth=2")
            await page.click("nav >> text=Models")
            await page.wait_for_selector("#models button.download")
            assert errors == []
        finally:
            await browser.close()
    ARTIFACT_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT_SCREENSHOT)
    if os.environ.get("FEDHIVE_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
