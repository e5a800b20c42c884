"""The dashboard under its Content-Security-Policy, in headless Chromium against the real server:
signing up and in, and every page's script, styles, chart library and API calls work, with not one
policy violation reported by the browser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from service.test_platform_flow import platform

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# The browser reports each blocked script, style or connection as a securitypolicyviolation event.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        msg = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("FEDHIVE_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


async def test_every_dashboard_page_works_with_no_policy_violation(tmp_path: Path) -> None:
    executable = chromium()
    async_api = pytest.importorskip("playwright.async_api")
    async with platform(tmp_path / "home", local_clients=0) as http, async_api.async_playwright() as pw:
        base = str(http.base_url).rstrip("/")
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.add_init_script(RECORD_VIOLATIONS)
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))

            await page.goto(f"{base}/ui/signin")
            await page.fill("input[name=email]", "ada@example.org")
            await page.fill("input[name=password]", "correct horse")
            await page.click("#signup")  # the script signs up, signs in and goes to /ui
            await page.wait_for_url(f"{base}/ui", timeout=30_000)
            violations = await page.evaluate("window.cspViolations")

            checks = {
                "/ui/new": "#app-info:has-text('code')",  # filled from GET /apps
                "/ui/models": "#models p.muted",  # filled from GET /models
                "/ui/sites": "#sites thead th",  # its script lists GET /sites
                "/ui/sessions/none-such": "#error:not([hidden])",  # the script ran and reported the 404
            }
            for path, filled_by_script in checks.items():
                await page.goto(f"{base}{path}")
                await page.wait_for_selector(filled_by_script, timeout=30_000)
                violations += await page.evaluate("window.cspViolations")
            charts = await page.evaluate("typeof uPlot")
        finally:
            await browser.close()
    assert violations == [], violations
    assert not [line for line in console if "Content Security Policy" in line], console
    assert charts == "function"  # the chart library loaded under the policy
