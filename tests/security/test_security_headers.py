"""Clickjacking, MIME sniffing, referrer leaks and script injection: every response, page or API
answer or error, carries the security headers, and the dashboard's pages hold nothing its
Content-Security-Policy would block (no inline script, style attribute or event handler)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from guarded_app import GuardedFactory

import fedhive.web
from fedhive.api.security_headers import DOCS_POLICY, PAGE_POLICY

UI_PAGES = ["/ui", "/ui/signin", "/ui/new", "/ui/sites", "/ui/models", "/ui/sessions/abc"]
EVERYTHING = [
    ("GET", "/", 307),
    *(("GET", page, 200) for page in UI_PAGES),
    ("GET", "/static/dashboard.js", 200),
    ("GET", "/static/dashboard.css", 200),
    ("GET", "/health", 200),
    ("GET", "/openapi.json", 200),
    ("GET", "/sessions", 401),
    ("GET", "/no/such/route", 404),
    ("POST", "/auth/signin", 422),
]
STATIC = Path(fedhive.web.__file__).parent / "static"


def assert_protected(response: httpx.Response, policy: str = PAGE_POLICY) -> None:
    what = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    assert response.headers.get("content-security-policy") == policy, what
    assert response.headers.get("x-content-type-options") == "nosniff", what
    assert response.headers.get("x-frame-options") == "DENY", what
    assert response.headers.get("referrer-policy") == "no-referrer", what


def test_the_page_policy_allows_nothing_inline_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in PAGE_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in PAGE_POLICY
    assert "frame-ancestors 'none'" in DOCS_POLICY


@pytest.mark.parametrize(("method", "path", "status"), EVERYTHING)
async def test_every_answer_carries_the_headers(guarded: GuardedFactory, method: str, path: str, status: int) -> None:
    async with guarded() as g, g.client() as http:
        response = await http.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == status, response.text
    assert_protected(response)


async def test_errors_raised_before_any_route_carry_them_too(guarded: GuardedFactory) -> None:
    async with guarded() as g, g.client() as http:
        too_big = await http.post("/auth/signup", content=b"x" * (2 * 1024 * 1024), headers={"content-type": "x"})
        for _ in range(10):
            await http.post("/auth/signin", json={"email": "a@example.org", "password": "wrong password"})
        throttled = await http.post("/auth/signin", json={"email": "a@example.org", "password": "wrong password"})
    assert (too_big.status_code, throttled.status_code) == (413, 429)
    assert_protected(too_big)
    assert_protected(throttled)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_openapi_pages_get_their_own_policy(guarded: GuardedFactory, path: str) -> None:
    async with guarded() as g, g.client() as http:
        response = await http.get(path)
    assert response.status_code == 200
    assert_protected(response, DOCS_POLICY)
    for source in re.findall(r'<script src="([^"]+)"', response.text):
        assert source.startswith("https://cdn.jsdelivr.net/"), source  # what DOCS_POLICY allows


class InlineCode(HTMLParser):
    """What a strict policy blocks in a page: inline scripts and styles, handlers, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self._in_inline_script = True
        if tag == "style":
            self.found.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}='javascript:...'>")

    def handle_data(self, data: str) -> None:
        if self._in_inline_script and data.strip():
            self.found.append(f"<script>{data.strip()[:40]}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False


@pytest.mark.parametrize("path", UI_PAGES)
async def test_dashboard_pages_hold_no_inline_code(guarded: GuardedFactory, path: str) -> None:
    async with guarded() as g, g.client() as http:
        page = (await http.get(path)).text
    parser = InlineCode()
    parser.feed(page)
    assert parser.found == [], f"{path}: the page's policy would block {parser.found}"


def test_the_dashboard_script_builds_no_inline_styles_or_handlers() -> None:
    """The markup dashboard.js writes into pages is held to the same policy."""
    script = (STATIC / "dashboard.js").read_text()
    assert not re.search(r"""<[^>]*\s(style|on[a-z]+)\s*=""", script)
    assert "eval(" not in script and "new Function" not in script
