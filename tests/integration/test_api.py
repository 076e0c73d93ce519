"""HTTP API validation: 4xx with the field named, never a traceback."""

from __future__ import annotations

import aiohttp
import pytest

from .conftest import bearer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "", "zones": ["hall"]}, "text"),
        ({"text": "   ", "zones": ["hall"]}, "text"),
        ({"zones": ["hall"]}, "text"),
        ({"text": "hi"}, "zones"),
        ({"text": "hi", "zones": []}, "zones"),
        ({"text": "hi", "zones": ["moon"]}, "zones"),
        ({"text": "hi", "zones": ["hall"], "speed": 9}, "speed"),
        ({"text": "hi", "zones": ["hall"], "speed": 0.1}, "speed"),
        ({"text": "hi", "zones": ["hall"], "voice": "bob"}, "voice"),
        ({"text": "hi", "zones": ["hall"], "language": "Klingon"}, "language"),
        ({"text": "hi", "zones": ["hall"], "priority": 300}, "priority"),
        ({"text": "hi", "zones": ["hall"], "colour": "red"}, "colour"),
        ({"text": "x" * 20001, "zones": ["hall"]}, "text"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(harness, body, field):
    status, resp = await harness.post(body)
    assert status == 422
    assert resp["error"] == "validation_failed"
    assert field in [f["field"] for f in resp["fields"]], resp


async def test_invalid_json_is_400(harness):
    async with (
        aiohttp.ClientSession(headers=bearer()) as http,
        http.post(
            f"{harness.api}/v1/announcements",
            data=b"{nope",
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_json"


async def test_unknown_announcement_and_route_are_json_404(harness):
    status, body = await harness.get("/v1/announcements/does-not-exist")
    assert status == 404 and body["error"] == "not_found"
    status, body = await harness.get("/v1/nothing-here")
    assert status == 404 and body["error"]


async def test_status_listing_and_defaults(harness):
    await harness.endpoint("ep-d", ["gate"], ["pcm_s16le/8000"])
    status, created = await harness.post({"text": "Gate closing.", "zones": ["gate"]})
    assert status == 202
    assert (
        created["voice"] == "ryan" and created["language"] == "English" and created["speed"] == 1.0
    )
    final = await harness.wait_final(created["id"])
    assert final["state"] == "finished" and final["engine"] == "espeak-ng"
    assert final["first_audio_ms"] is not None and final["duration_ms"] > 0
    status, listing = await harness.get("/v1/announcements")
    assert created["id"] in [a["id"] for a in listing["announcements"]]
    status, zones = await harness.get("/v1/zones")
    assert {
        "id": "gate",
        "name": None,
        "endpoints": ["ep-d"],
        "playing": None,
        "gain_db": 0.0,
        "gain_db_config": 0.0,
        "gain_source": "config",
    } in zones["zones"]
    status, health = await harness.get("/healthz")
    assert health["status"] == "ok" and health["endpoints_connected"] == 1
