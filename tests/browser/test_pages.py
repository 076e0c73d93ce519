"""The pages are served with a strict policy, and only their own origin may use the service."""

from __future__ import annotations

import aiohttp
import pytest
import websockets

from tests.integration.conftest import bearer

pytestmark = pytest.mark.integration


async def test_pages_and_static_files_are_public_with_a_strict_policy(web):
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/kiosk"):
            async with http.get(f"{web.api}{path}") as r:
                assert r.status == 200 and r.content_type == "text/html"
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert f"ws://127.0.0.1:{web.service.ws_port}" in csp
                assert r.headers["X-Frame-Options"] == "DENY"
        async with http.get(f"{web.api}/static/common.css") as r:
            assert r.status == 200 and r.content_type == "text/css"
        for bad in ("/static/..%2Fpages.py", "/static/.hidden", "/static/nope.js"):
            async with http.get(f"{web.api}{bad}") as r:
                assert r.status == 404, bad
        async with http.get(f"{web.api}/web/site.json") as r:
            site = await r.json()
            assert site["endpoint_url"] == web.ws_url and site["tls"] is False


async def test_own_pages_origin_may_call_the_api_and_open_the_websocket(web):
    own = f"http://127.0.0.1:{web.service.http_port}"
    other = "http://127.0.0.1:1"  # another port on the same host is another origin
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web.api}/v1/zones", headers={**bearer(), "Origin": own}) as r:
            assert r.status == 200
        async with http.get(f"{web.api}/v1/zones", headers={**bearer(), "Origin": other}) as r:
            assert r.status == 403
    async with websockets.connect(web.ws_url, origin=websockets.Origin(own)) as ws:
        assert ws.protocol.state.name == "OPEN"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(web.ws_url, origin=websockets.Origin(other)):
            pass


@pytest.mark.browser
async def test_chromium_loads_both_pages_without_policy_violations(web, launch):
    browser = await launch()
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    for path in ("/kiosk", "/console"):
        await page.goto(f"{web.api}{path}")
        assert path.strip("/") in (await page.title())
    assert problems == []


def test_without_chromium_the_browser_tests_fail_saying_so(monkeypatch, tmp_path):
    from tests.browser.conftest import chromium_path

    monkeypatch.delenv("BROADCASTER_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium_path()
    monkeypatch.setenv("BROADCASTER_CHROMIUM", "/opt/other/chromium")
    assert chromium_path() == "/opt/other/chromium"
