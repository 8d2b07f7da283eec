"""The browser for the web page's tests: Debian's Chromium driven by Playwright.

Each test gets a fresh browser context (no cookies) in which every request that does
not go to this host is aborted and recorded: a page must work with nothing but dcmdb.
Screenshots go to test-artifacts/screenshots/ (not in git), to be looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")  # Playwright cannot download its own browser here
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
# Playwright's 5 s are short for a page that renders previews while the suite runs in
# four workers on two cores.
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: scripts/prepare --test installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page of a fresh browser context, and the requests it tried to send elsewhere."""

    page: Page
    offsite: list[str] = field(default_factory=list)

    def sign_in(self, base: str, key: str) -> None:
        self.page.goto(f"{base}/signin")
        self.page.fill("#key", key)
        self.page.click("form[action='/signin'] button[type=submit]")
        self.page.wait_for_url(f"{base}/")

    def shoot(self, name: str, *, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    opened = Tab(page)

    def local_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            opened.offsite.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    yield opened
    context.close()
    assert opened.offsite == [], f"requests left the host: {opened.offsite}"
