"""A real headless browser for tests: Debian's chromium driven by the PyPI `playwright` package.

Playwright's own browser downloads are never used (`playwright install` is not run): the browser is
/usr/bin/chromium, which `make test` installs with apt-get when it is missing and it can (root with
apt-get). Without it every test using `chromium_page` skips with that reason.

    def test_page(chromium_page, tmp_path):
        chromium_page.goto(url)
        save_screenshot(chromium_page, "preview-healthy")
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots land here (kept after the run, unlike tmp_path): look at them after `make test`.
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "var" / "test-screenshots"


def chromium_missing_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (make test installs Debian chromium with apt-get when run as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make install)"
    return None


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    """One headless chromium per test module (starting it takes about a second).

    Not per session: while playwright's sync API is open it leaves an event loop marked as running in
    the main thread, so every later test in the same process that calls `asyncio.run` fails.
    """
    reason = chromium_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chromium_page(chromium_browser: Browser) -> Iterator[Page]:
    """A fresh page in its own browser context (no cookies or storage shared between tests).

    Console errors and uncaught page errors are collected on `page.errors` (a list of strings), so a
    test can assert that the page ran cleanly.
    """
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()


def save_screenshot(page: Page, name: str, **options: Any) -> Path:
    """Save a full-page PNG as var/test-screenshots/<name>.png and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True, **options)
    return path
