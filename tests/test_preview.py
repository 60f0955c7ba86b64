"""The card preview page and /docs in headless Chromium: every fixture's cards drawn as the API answers them,
every asset from the service itself (anything else is blocked and counted), a screenshot per fixture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.evaluation import Evaluator
from cds.rulepack import RulePack
from tests.conftest import FIXTURES
from tests.support.api import NOW, Api, Issuer, dev_settings, running, secure_settings
from tests.support.browser import save_screenshot

MANIFEST: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pack: RulePack) -> Iterator[Api]:
    with running(dev_settings(tmp_path_factory.mktemp("preview")), evaluator=Evaluator(pack)) as api:
        yield api


def local_only(page: Any, base: str) -> list[str]:
    """Abort every request that leaves the service (as offline); return the list of those attempted."""
    outside: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(base + "/"):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    page.route("**/*", route)
    return outside


def show(page: Any, api: Api, document: str, *, now: str | None = None, token: str | None = None) -> None:
    page.goto(api.url("/preview"))
    page.fill("#document", document)
    if now is not None:
        page.fill("#now", now)
    if token is not None:
        page.fill("#token", token)
    page.click("#show")
    page.wait_for_selector("#status[data-done]")


@pytest.mark.parametrize("item", MANIFEST, ids=[i["file"].removesuffix(".json") for i in MANIFEST])
def test_preview_draws_each_fixtures_cards_as_the_api_answers(
    chromium_page: Any, api: Api, item: dict[str, Any]
) -> None:
    document = (FIXTURES / item["file"]).read_text(encoding="utf-8")
    expected = api.client.post("/evaluate", params={"now": item["now"]}, content=document).json()["cards"]
    outside = local_only(chromium_page, api.base)

    show(chromium_page, api, document, now=item["now"])

    cards = chromium_page.locator("#cards article.card")
    assert cards.count() == len(expected)
    assert chromium_page.locator("#status").get_attribute("data-count") == str(len(expected))
    summaries = chromium_page.locator("#cards .card-summary").all_text_contents()
    assert summaries == [card["summary"] for card in expected]
    indicators = [cards.nth(i).get_attribute("data-indicator") for i in range(cards.count())]
    assert indicators == [card["indicator"] for card in expected]
    for index, card in enumerate(expected):
        drawn = cards.nth(index)
        # Markdown rendered, not shown raw: "**Why this card**" becomes bold text.
        assert drawn.locator(".card-detail strong", has_text="Why this card").count() == 1
        assert "**" not in drawn.locator(".card-detail").inner_text()
        assert drawn.locator(".suggestion").all_text_contents() == [
            s["label"] for s in card.get("suggestions", [])
        ]
        why = drawn.locator("details.why")
        why.locator("summary").click()
        for rule in card["extension"]["cramp-cds-explanation"]["rules"]:
            assert why.locator("code", has_text=rule["rule"]).count() >= 1
    save_screenshot(chromium_page, f"preview-{item['file'].removesuffix('.json')}")
    assert outside == []
    assert chromium_page.errors == []


def test_preview_shows_the_questionnaire_notice_with_its_link(chromium_page: Any, api: Api) -> None:
    request = json.loads((FIXTURES / "hook-request.json").read_text(encoding="utf-8"))
    request["prefetch"]["questionnaireResponses"] = None
    show(chromium_page, api, json.dumps(request))
    link = chromium_page.locator("#cards .links a")
    assert link.inner_text() == "The cramp questionnaire (FHIR Questionnaire)"
    assert link.get_attribute("href") == api.url("/questionnaire")
    save_screenshot(chromium_page, "preview-questionnaire-notice")


def test_preview_explains_a_412(chromium_page: Any, api: Api) -> None:
    request = json.loads((FIXTURES / "hook-request.json").read_text(encoding="utf-8"))
    del request["prefetch"]["observations"]
    chromium_page.goto(api.url("/preview"))
    chromium_page.select_option("#service", "cramp-assessment")
    chromium_page.fill("#document", json.dumps(request))
    chromium_page.click("#show")
    chromium_page.wait_for_selector("#status[data-done]")
    assert chromium_page.locator("#status").inner_text().startswith("HTTP 412")
    text = chromium_page.locator(".outcome").inner_text()
    assert "prefetch.observations was not sent" in text
    assert "not a healthy patient" in text


def test_docs_render_offline(chromium_page: Any, api: Api) -> None:
    outside = local_only(chromium_page, api.base)
    chromium_page.goto(api.url("/docs"))
    chromium_page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert chromium_page.locator(".swagger-ui .title").first.inner_text().startswith("cramp-cds")
    assert chromium_page.locator(".opblock-summary-path", has_text="/cds-services/{service_id}").count() >= 1
    save_screenshot(chromium_page, "docs-offline")
    assert outside == []
    assert chromium_page.errors == []


def test_preview_outside_dev_takes_a_pasted_token(chromium_page: Any, tmp_path: Path, pack: RulePack) -> None:
    issuer = Issuer()
    settings = secure_settings(tmp_path, issuer)
    with running(settings, evaluator=Evaluator(pack)) as api:
        document = (FIXTURES / "workup.json").read_text(encoding="utf-8")
        show(chromium_page, api, document, now="2026-06-01")
        assert chromium_page.locator("#status").inner_text() == "HTTP 401"
        assert "paste a JWT" in chromium_page.locator(".outcome").inner_text()

        token = issuer.token(aud=api.url("/evaluate"), now=NOW)
        show(chromium_page, api, document, now="2026-06-01", token=token)
        assert chromium_page.locator("#status").inner_text() == "2 cards"
