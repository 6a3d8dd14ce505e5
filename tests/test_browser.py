"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), against a real
``hookd serve`` with its delivery worker and a real receiver on 127.0.0.1 (SPEC §9): signing
in by keyboard, a form error shown beside its field and fixed, a delivery appearing without a
reload, retry, pause and reactivate, a read-only portal link without a single changing
control that works once, and the pages at 360 px wide. One browser for all of them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserType, Page, Playwright, expect, sync_playwright

from tests.conftest import ENGINES, admin_sql, dsn_for, unavailable
from tests.processes import HookdProcess, HookdProcesses, run_hookd

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright for this module only (pytest-playwright keeps it for the session): its
    event loop runs in the main thread while it lives, and the asyncio tests of the other
    modules need that thread's loop free."""
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright) -> BrowserType:
    return playwright.chromium


@pytest.fixture(scope="module")
def browser(
    browser_type: BrowserType, browser_type_launch_args: dict[str, Any]
) -> Iterator[Browser]:
    """The one browser of every test here."""
    launched = browser_type.launch(**browser_type_launch_args)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="session")
def base_url() -> None:
    """No base URL (pages are opened by absolute URL); replaces pytest-playwright's own
    fixture, which pytest 9 warns about."""
    return None


class _Answer204(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer204)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def _admin_sql(sql: str) -> None:
    # In a thread of its own: Playwright's event loop may be running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, admin_sql(sql)).result()


@pytest.fixture(scope="module", params=ENGINES)
def hookd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[HookdProcess, str]]:
    """``hookd serve`` (API and delivery worker) on a fresh database of each engine, and the
    key it printed."""
    directory: Path = tmp_path_factory.mktemp("browser")
    env = {
        "HOOKD_ALLOW_HTTP": "true",
        "HOOKD_ALLOWED_NETWORKS": "127.0.0.0/8",
        "HOOKD_RATE_LIMIT": "0",
        "HOOKD_POLL_INTERVAL": "0.2",
        "HOOKD_LOG_LEVEL": "warning",
    }
    database = None
    if request.param == "postgres":
        try:
            _admin_sql("SELECT 1")
        except Exception as exc:
            unavailable(f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}")
        database = f"hookd_browser_{uuid.uuid4().hex[:12]}"
        _admin_sql(f'CREATE DATABASE "{database}"')
        url = dsn_for(database)
        migrated = run_hookd("migrate", database_url=url)
        assert migrated.returncode == 0, migrated.stderr
    else:
        url = f"sqlite:///{directory / 'hookd.db'}"
    try:
        with HookdProcesses(directory, env=env) as procs:
            server = procs.start("serve", database_url=url)
            yield server, server.api_key()
    finally:
        if database is not None:
            _admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


_AXE = Path(__file__).with_name("vendor") / "axe-core" / "axe.min.js"


def accessibility_problems(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page (WCAG 2 A and AA rules).
    Evaluated through the DevTools protocol, which the page's CSP does not govern."""
    page.evaluate(_AXE.read_text())
    found = page.evaluate(
        """async () => (await axe.run(document, {runOnly: ["wcag2a", "wcag2aa"]})).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(" ")).slice(0, 3)})`)"""
    )
    return list(found)


def screenshot(page: Page, name: str) -> None:
    """With HOOKD_SCREENSHOTS=<dir>, save the page there (the README's images come from
    ``HOOKD_SCREENSHOTS=docs .venv/bin/python -m pytest tests/test_browser.py``)."""
    directory = os.environ.get("HOOKD_SCREENSHOTS")
    if directory:
        page.screenshot(path=str(Path(directory) / f"dashboard-{name}.png"), full_page=True)


def api(hookd: tuple[HookdProcess, str], method: str, path: str, **kw: Any) -> Any:
    server, key = hookd
    response = httpx.request(
        method, server.url(path), headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw
    )
    assert response.is_success, response.text
    return response.json()


def sign_in(page: Page, hookd: tuple[HookdProcess, str]) -> None:
    server, key = hookd
    page.goto(server.url("/dashboard"))
    expect(page).to_have_url(server.url("/dashboard/sign-in"))
    page.get_by_label("API key").fill(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()


def test_create_a_webhook_and_watch_its_delivery_arrive(
    hookd: tuple[HookdProcess, str], receiver_url: str, page: Page
) -> None:
    page.set_default_timeout(10_000)
    sign_in(page, hookd)
    page.get_by_role("link", name="New webhook").click()
    page.get_by_label("Name", exact=True).fill("Browser hook")
    page.get_by_label("URL", exact=True).fill("not a url")
    page.get_by_label("post.created", exact=True).check()
    page.get_by_role("button", name="Create webhook").click()
    error = page.locator("#url-error")
    expect(error).to_be_visible()
    assert accessibility_problems(page) == [], "the form with an error"
    expect(page.get_by_label("URL", exact=True)).to_have_attribute("aria-invalid", "true")

    page.get_by_label("URL", exact=True).fill(receiver_url)
    page.get_by_role("button", name="Create webhook").click()
    expect(page.get_by_role("heading", name="Browser hook")).to_be_visible()
    expect(page.locator("code.secret")).to_contain_text("whsec_")

    page.evaluate("window.stillHere = true")
    api(hookd, "POST", "/v2/events", json={"topic": "post.created", "data": {"item": {"id": "p1"}}})
    deliveries = page.locator("#deliveries")
    expect(deliveries.locator(".status-succeeded")).to_have_count(1, timeout=15_000)
    assert page.evaluate("window.stillHere") is True, "the delivery appeared without a reload"
    if os.environ.get("HOOKD_SCREENSHOTS"):
        page.reload()  # the charts are drawn when the page is
        screenshot(page, "webhook")

    deliveries.locator("a").first.click()
    expect(page.locator("pre.payload")).to_contain_text('"topic": "post.created"')
    assert accessibility_problems(page) == [], "the delivery page"
    screenshot(page, "delivery")
    page.get_by_role("button", name="Retry now").click()
    expect(page.get_by_role("status")).to_contain_text("queued")

    page.get_by_role("link", name="Browser hook").click()
    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".heading .status")).to_have_text("paused")
    page.get_by_role("button", name="Reactivate").click()
    expect(page.locator(".heading .status")).to_have_text("active")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    screenshot(page, "webhooks")


def test_a_read_only_portal_link_shows_no_controls_and_works_once(
    hookd: tuple[HookdProcess, str], page: Page
) -> None:
    page.set_default_timeout(10_000)
    hook = api(
        hookd,
        "POST",
        "/v2/webhooks",
        json={"name": "Portal hook", "url": "https://example.com/h", "topics": ["post.created"]},
    )
    link = api(
        hookd, "POST", "/v2/portal/sessions", json={"webhookIds": [hook["id"]], "readOnly": True}
    )
    page.goto(link["url"])
    expect(page.get_by_role("heading", name="Portal hook")).to_be_visible()
    expect(page.get_by_text("read-only")).to_be_visible()
    buttons = page.get_by_role("button").all_inner_texts()
    assert buttons == ["Sign out"], f"a read-only session shows no changing control: {buttons}"
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("link", name="Portal hook")).to_be_visible()
    expect(page.get_by_role("link", name="New webhook")).to_have_count(0)

    again = page.context.browser.new_page()  # type: ignore[union-attr]
    try:
        response = again.goto(link["url"])
        assert response is not None and response.status == 404
        expect(again.get_by_text("portal_link_invalid")).to_be_visible()
    finally:
        again.close()


def test_the_pages_fit_360_px(hookd: tuple[HookdProcess, str], page: Page) -> None:
    page.set_default_timeout(10_000)
    page.set_viewport_size({"width": 360, "height": 740})
    hook = api(
        hookd,
        "POST",
        "/v2/webhooks",
        json={
            "name": "A webhook with a rather long name to wrap",
            "url": "https://example.com/a/very/long/path/that/must/wrap/somewhere/on/a/phone",
            "topics": ["post.created", "comment.created", "changelog.published"],
        },
    )
    sign_in(page, hookd)
    server, _key = hookd
    pages = [
        "/dashboard",
        f"/dashboard/webhooks/{hook['id']}",
        f"/dashboard/webhooks/{hook['id']}/edit",
        "/dashboard/webhooks/new",
        "/dashboard/events",
    ]
    for path in pages:
        page.goto(server.url(path))
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{path} scrolls sideways at 360 px: {width} px wide"
        assert accessibility_problems(page) == [], path
