"""The operator console in real Chromium against the real service."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import API_TOKENS

pytestmark = pytest.mark.browser

LONG_TEXT = (
    "Attention please. The service to the airport is delayed by about twenty minutes. "
    "We apologise for the inconvenience. Please listen for further announcements."
)


async def _signed_in(launch: Any, web: Any, who: str) -> tuple[Any, list[str]]:
    browser = await launch()
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    problems: list[str] = []

    def on_console(message: Any) -> None:
        # Live paging's module is optional (another part of the page): a 404 for it is fine.
        if message.type == "error" and not message.location.get("url", "").endswith(
            "/static/paging.js"
        ):
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(f"{web.api}/console")
    await page.fill("#token", API_TOKENS[who])
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_selector("#who-id", state="visible")
    assert await page.text_content("#who-id") == who
    await page.wait_for_selector("#status.up")
    return page, problems


async def test_console_signs_in_shows_a_new_endpoint_sends_and_cancels(web, launch, tmp_path):
    page, problems = await _signed_in(launch, web, "operator")
    # The token is in this tab's session storage, never in the URL.
    assert API_TOKENS["operator"] not in page.url
    stored = await page.evaluate("Object.values(sessionStorage)")
    assert stored == [API_TOKENS["operator"]]
    assert await page.is_hidden("#emergency")  # an operator is not offered emergencies

    # A reference endpoint connecting shows up without a reload.
    assert await page.locator("tr[data-endpoint=ep-b].online").count() == 0
    await web.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])
    await page.wait_for_selector("[data-zone=hall] tr[data-endpoint=ep-b].online", timeout=5000)

    # Send a text to the hall, see it play, cancel it.
    await page.fill("#text", LONG_TEXT)
    await page.check("#zone-choices input[value=hall]")
    await page.click("#send-button")
    await page.wait_for_selector("#send-result.ok", timeout=5000)
    row = page.locator("#announcement-rows tr[data-announcement]").first
    await row.locator(".badge.playing").wait_for(timeout=10000)
    await page.wait_for_selector("[data-zone=hall].busy")
    await row.locator("button[data-cancel]").click()
    await row.locator(".badge.cancelled").wait_for(timeout=5000)
    ann_id = await row.get_attribute("data-announcement")
    _, record = await web.get(f"/v1/announcements/{ann_id}")
    assert record["state"] == "cancelled" and record["created_by"] == "operator"
    assert record["text"] == LONG_TEXT and record["zones"] == ["hall"]
    await page.wait_for_selector("[data-zone=hall]:not(.busy)")
    # Its receipt from the endpoint shows on the row.
    await row.locator("[data-receipt=ep-b].warn").wait_for(timeout=5000)

    assert problems == []
    # The server refuses an emergency from this token even when the page is bypassed.
    status = await page.evaluate(
        """async (token) => (await fetch('/v1/announcements', {method: 'POST',
            headers: {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
            body: JSON.stringify({text: 'Evacuate', zones: ['hall'], priority: 230})})).status""",
        API_TOKENS["operator"],
    )
    assert status == 403


async def test_dispatcher_gets_an_emergency_button_that_asks_for_confirmation(web, launch):
    page, problems = await _signed_in(launch, web, "dispatcher")
    await web.endpoint("ep-d", ["gate"], ["pcm_s16le/8000"])
    await page.wait_for_selector("tr[data-endpoint=ep-d].online", timeout=5000)
    await page.fill("#text", "Please leave the building by the nearest exit.")
    await page.check("#zone-choices input[value=gate]")
    assert await page.is_visible("#emergency")
    await page.click("#emergency")
    assert await page.is_visible("#confirm-emergency")
    assert "gate" in (await page.text_content("#confirm-text") or "")
    await page.click("#confirm-no")  # backing out sends nothing
    assert await page.is_hidden("#confirm-emergency")
    _, listed = await web.get("/v1/announcements")
    assert listed["announcements"] == []
    await page.click("#emergency")
    async with page.expect_request("**/v1/announcements") as posted:
        await page.click("#confirm-yes")
    # Each send carries its own Idempotency-Key (a retry of it never doubles it).
    key = (await posted.value).headers.get("idempotency-key", "")
    assert len(key) == 32 and int(key, 16) >= 0
    await page.wait_for_selector("#send-result.ok", timeout=5000)
    _, listed = await web.get("/v1/announcements")
    [sent] = listed["announcements"]
    assert sent["priority"] == 224 and sent["zones"] == ["gate"]
    assert sent["created_by"] == "dispatcher"
    await page.wait_for_selector(f"tr[data-announcement='{sent['id']}'] td.warn")
    assert problems == []


async def test_a_viewer_watches_is_offered_nothing_to_send_and_reconnects(web, launch):
    from broadcaster.api.console import FEED

    page, problems = await _signed_in(launch, web, "viewer")
    assert await page.is_hidden("#send-form") and await page.is_visible("#viewer-note")
    # A stream that ends (here: the server ends it) is read again from a new snapshot.
    web.service._runner.app[FEED].close()
    await page.wait_for_selector("#status.down")
    await page.wait_for_selector("#status.up", timeout=5000)
    await page.click("#sign-out")
    assert await page.is_visible("#sign-in")
    assert await page.evaluate("sessionStorage.length") == 0
    # Signing in again (twice, another token) gives a working form: one click, one
    # announcement.
    for _ in range(2):
        await page.fill("#token", API_TOKENS["operator"])
        await page.click("#sign-in-form button[type=submit]")
        await page.wait_for_selector("#status.up")
        await page.click("#sign-out")
    await page.fill("#token", API_TOKENS["operator"])
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_selector("#status.up")
    assert await page.text_content("#who-id") == "operator"
    await page.fill("#text", "Just once.")
    await page.check("#zone-choices input[value=empty]")
    await page.click("#send-button")
    await page.wait_for_selector("#send-result.ok")
    await asyncio.sleep(0.3)
    _, listed = await web.get("/v1/announcements")
    assert [a["text"] for a in listed["announcements"]] == ["Just once."]
    assert problems == []


async def test_screenshot_of_a_busy_console(web, launch, tmp_path):
    """docs/console.png: set BROADCASTER_SCREENSHOT_DIR=docs to refresh it."""
    await web.endpoint("ep-b", ["hall"], ["pcm_s16le/8000"])
    await web.endpoint("ep-d", ["gate"], ["opus/48000"])
    await web.post({"text": "The 17.30 to Leeds departs from platform 4.", "zones": ["gate"]})
    page, problems = await _signed_in(launch, web, "dispatcher")
    await web.post({"text": LONG_TEXT, "zones": ["hall"], "priority": 128})
    await web.post({"text": "Mind the gap.", "zones": ["hall"], "priority": 100})
    await page.wait_for_selector("[data-zone=hall].busy", timeout=10000)
    await page.wait_for_selector("[data-zone=hall] .waiting li", timeout=5000)
    await page.fill("#text", "Would the owner of a blue suitcase please come to the ticket office.")
    await page.check("#zone-choices input[value=hall]")
    target = tmp_path / "console.png"
    await page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    out = os.environ.get("BROADCASTER_SCREENSHOT_DIR")
    if out:
        shutil.copy(target, Path(out) / "console.png")
    assert problems == []


TEMPLATES = {
    "templates": [
        {
            "name": "delay",
            "text": "The {{ time }} to {{ destination }} is delayed by {{ minutes }} minutes.",
            "variables": {
                "time": {"type": "time", "default": None, "choices": None, "max_length": None},
                "destination": {
                    "type": "str",
                    "default": "Leeds",
                    "choices": ["Leeds", "York"],
                    "max_length": None,
                },
                "minutes": {"type": "int", "default": 5, "choices": None, "max_length": None},
                "cancelled": {"type": "bool", "default": False, "choices": None},
            },
            "priority": None,
            "zones": ["hall"],
            "source": "config",
        },
        {"name": "evacuate", "text": "Leave now.", "variables": {}, "emergency": True},
    ]
}


async def test_template_form_is_built_from_variable_types_and_preview_shows_spoken_text(
    web, launch
):
    """GET /v1/templates and POST /v1/preview as their owners specify them (stubbed here
    by the browser, so the page is tested on its own): the form, the body, the preview."""
    import json

    browser = await launch()
    page = await browser.new_page()
    sent: list[Any] = []

    async def openapi(route: Any) -> None:
        response = await route.fetch()
        doc = await response.json()
        doc["paths"]["/v1/templates"] = {"get": {}}
        doc["paths"]["/v1/preview"] = {"post": {}}
        await route.fulfill(response=response, json=doc)

    async def preview(route: Any) -> None:
        sent.append(json.loads(route.request.post_data or "null"))
        await route.fulfill(
            json={
                "text": "The 17:30 to York is delayed by 7 minutes.",
                "language": "English",
                "also": [],
                "spoken": [
                    {"language": "English", "text": "The seventeen thirty to York is delayed…"}
                ],
            }
        )

    await page.route("**/v1/openapi.json", openapi)
    await page.route("**/v1/templates", lambda r: r.fulfill(json=TEMPLATES))
    await page.route("**/v1/preview", preview)
    await page.goto(f"{web.api}/console")
    await page.fill("#token", API_TOKENS["operator"])
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_selector("#status.up")
    await page.check("input[name=mode][value=template]")
    assert await page.is_visible("#template-part") and await page.is_hidden("#text-part")
    # An operator is not offered the emergency template.
    assert await page.eval_on_selector_all("#template option", "os => os.map(o => o.value)") == [
        "delay"
    ]
    assert await page.get_attribute("#var-time", "type") == "time"
    assert await page.get_attribute("#var-minutes", "type") == "number"
    assert await page.get_attribute("#var-cancelled", "type") == "checkbox"
    assert await page.eval_on_selector(
        "#var-destination", "s => [s.tagName, [...s.options].map(o => o.value)]"
    ) == ["SELECT", ["Leeds", "York"]]
    await page.fill("#var-time", "17:30")
    await page.select_option("#var-destination", "York")
    await page.fill("#var-minutes", "7")
    await page.check("#zone-choices input[value=hall]")
    await page.click("#preview")
    await page.wait_for_selector("#preview-out .spoken")
    assert sent == [
        {
            "zones": ["hall"],
            "template": "delay",
            "variables": {"time": "17:30", "destination": "York", "minutes": 7, "cancelled": False},
        }
    ]
    assert "seventeen thirty" in (await page.text_content("#preview-out") or "")


@pytest.fixture
async def web_with_template(tmp_path: Path) -> Any:
    """The ``web`` service with a template, so schedules can be made."""
    from broadcaster.app import Service
    from broadcaster.speech.espeak import EspeakEngine
    from tests.integration.conftest import Harness, make_config

    tpl = [{"name": "tidy", "text": "Please keep your belongings with you.", "zones": ["gate"]}]
    async with Service(
        make_config(templates=tpl), engine=EspeakEngine(max_text_chars=200)
    ) as service:
        h = Harness(service, tmp_path)
        try:
            yield h
        finally:
            await h.close()


PAGING_STUB = """
export function mountPaging(section, options) {
  window.pagingMounted = {token: options.token, zones: options.zones, maxPriority: options.maxPriority};
  section.textContent = "paging mounted";
}
"""


async def test_schedules_pause_and_resume_a_zone_limited_token_and_paging_is_mounted(
    web_with_template, launch
):
    web = web_with_template
    status, made = await web.post(
        {"id": "tidy-hourly", "template": "tidy", "cron": "0 * * * *"}, path="/v1/schedules"
    )
    assert status == 201, made
    status, made = await web.post(
        {"id": "tidy-hall", "template": "tidy", "zones": ["hall"], "cron": "30 * * * *"},
        path="/v1/schedules",
    )
    assert status == 201, made
    browser = await launch()
    page = await browser.new_page()
    await page.route(
        "**/static/paging.js",
        lambda r: r.fulfill(body=PAGING_STUB, content_type="text/javascript"),
    )
    await page.goto(f"{web.api}/console")
    await page.fill("#token", API_TOKENS["gate-operator"])
    await page.click("#sign-in-form button[type=submit]")
    await page.wait_for_selector("#status.up")
    # Only the token's zone is shown and offered.
    assert await page.eval_on_selector_all("[data-zone]", "zs => zs.map(z => z.dataset.zone)") == [
        "gate"
    ]
    assert await page.eval_on_selector_all("#zone-choices input", "is => is.map(i => i.value)") == [
        "gate"
    ]
    # Live paging's module is handed the token, the zones and the priority ceiling.
    await page.wait_for_function("window.pagingMounted !== undefined")
    mounted = await page.evaluate("window.pagingMounted")
    assert mounted == {
        "token": API_TOKENS["gate-operator"],
        "zones": [{"id": "gate", "name": None}],
        "maxPriority": 223,
    }
    assert await page.text_content("#paging") == "paging mounted"
    # The schedule with its next firings; pause, resume. One outside the token's zones
    # is listed but not offered.
    button = page.locator("button[data-schedule=tidy-hourly]")
    await button.wait_for()
    assert "tidy-hall" in (await page.text_content("#schedule-rows") or "")
    assert await page.locator("button[data-schedule=tidy-hall]").count() == 0
    row = page.locator("#schedule-rows tr", has=button)
    assert await row.locator("td:nth-child(3) div").count() >= 1
    await button.click()
    await page.wait_for_selector("button[data-schedule=tidy-hourly][data-action=resume]")
    _, record = await web.get("/v1/schedules/tidy-hourly")
    assert record["paused"] is True
    await page.click("button[data-schedule=tidy-hourly]")
    await page.wait_for_selector("button[data-schedule=tidy-hourly][data-action=pause]")
    _, record = await web.get("/v1/schedules/tidy-hourly")
    assert record["paused"] is False
