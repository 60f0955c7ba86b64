"""The rule book (`cds rules book`): one static page with every rule, threshold, hazard and case."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cds.book import render_book
from cds.hazards import load_hazards
from cds.rulepack import RulePack
from tests.support.cli import cds


class _Assets(HTMLParser):
    """Every URL the page would load or link to outside itself."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in {"src", "href"} and value and not value.startswith("#"):
                self.external.append(value)


def book(pack: RulePack) -> str:
    return render_book(pack, load_hazards(pack))


def test_every_rule_hazard_and_case_is_on_the_page(pack: RulePack) -> None:
    page = book(pack)
    for rule in pack.rules_by_id.values():
        assert f'id="rule-{rule.id}"' in page, rule.id
        for case in rule.cases:
            assert f"<code>{case.id}</code>" in page, f"{rule.id}::{case.id}"
    for hazard in load_hazards(pack).hazards:
        assert f'id="{hazard.id}"' in page


def test_the_page_is_self_contained(pack: RulePack) -> None:
    parser = _Assets()
    parser.feed(book(pack))
    assert parser.external == []
    assert not {"script", "link", "img", "iframe"} & parser.tags


def test_every_internal_link_has_a_target(pack: RulePack) -> None:
    page = book(pack)
    targets = set(re.findall(r'id="([^"]+)"', page))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert links - targets == set()


def test_thresholds_sources_and_withheld_advice_are_shown(pack: RulePack) -> None:
    page = book(pack)
    assert "Withheld when" in page
    assert "FDA Drug Safety Communication 2011-03-02" in page
    assert "Kost, JAMA 1990" in page
    assert "low ≤ 7.0 <span class='muted'>Nursing &lt;7.0 mg/dL" in page  # calcium critical limit and source
    assert "Magnesium</a> is low and is critical (flagged LL/HH" in page  # urgent.magnesium-critical-low
    assert "25-OH vitamin D</a> &gt; 100 ng/mL" in page  # finding.vitamin-d-high


def test_cds_rules_book_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "book" / "rule-book.html"
    done = cds("rules", "book", "-o", out)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "rule book written to" in done.stderr


def test_the_book_renders_in_chromium_with_every_rule(
    chromium_page: Any, pack: RulePack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Headless Debian chromium opens the page written by `cds rules book`; every rule id is visible text."""
    out = tmp_path / "rule-book.html"
    done = cds("rules", "book", "-o", out)
    assert done.returncode == 0, done.stderr
    requests: list[str] = []
    chromium_page.on("request", lambda request: requests.append(request.url))
    chromium_page.goto(out.as_uri())
    assert chromium_page.title().startswith("Rule book: ")
    text = chromium_page.inner_text("body")
    missing = [rule_id for rule_id in pack.rules_by_id if rule_id not in text]
    assert missing == []
    assert chromium_page.locator("div.rule").count() >= len(pack.rules_by_id)
    assert chromium_page.errors == []
    assert requests == [out.as_uri()]  # nothing fetched beyond the page itself
    # The hazard log is reachable from a rule through its in-page link.
    chromium_page.click("#rule-urgent\\.possible-dvt a[href='#HAZ-003']")
    assert chromium_page.evaluate("location.hash") == "#HAZ-003"
    shot = tmp_path / "rule-book.png"
    chromium_page.screenshot(path=str(shot), full_page=False)
    assert shot.read_bytes().startswith(b"\x89PNG")
    with capsys.disabled():
        print(f"\nrule book screenshot: {shot}")
