"""The shared browser fixture drives Debian's chromium headless and saves screenshots."""

from __future__ import annotations

from typing import Any

from tests.support.browser import save_screenshot


def test_chromium_page_runs_scripts_and_saves_a_screenshot(chromium_page: Any) -> None:
    chromium_page.set_content(
        "<p id='out'></p><script>document.getElementById('out').textContent = 6 * 7</script>"
    )
    assert chromium_page.text_content("#out") == "42"
    assert chromium_page.errors == []
    path = save_screenshot(chromium_page, "browser-support-smoke")
    assert path.read_bytes().startswith(b"\x89PNG")
