"""Schedules, triggers and templates through the real service, store and endpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.speech.espeak import EspeakEngine

from .conftest import TOKENS, Harness, api_tokens_config, bearer

pytestmark = pytest.mark.integration


def config(store):
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": str(store)},
            "streaming": {"playout_delay_ms": 200},
            "announcements": {"wait_for_endpoints_s": 0.3},
            "scheduling": {"prerender_s": 60},
            "api_tokens": api_tokens_config(),
            "zones": [{"id": "hall"}, {"id": "gate"}],
            "endpoints": [
                {"id": "ep-a", "token_hash": hash_token(TOKENS["ep-a"]), "zones": ["hall", "gate"]}
            ],
            "templates": [
                {
                    "name": "delay",
                    "text": "The {{ time }} to {{ destination }} is delayed by {{ minutes }} minutes.",
                    "zones": ["hall"],
                    "speed": 2.0,
                    "variables": {
                        "time": "time",
                        "destination": {"type": "str", "default": "Greenhaven"},
                        "minutes": "int",
                    },
                }
            ],
        },
        "scheduling-test",
    )


async def request(http, method, url, body=None):
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json()


def iso(dt):
    return dt.astimezone(UTC).isoformat()


async def test_trigger_renders_the_template_and_validates_variables(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
        try:
            async with aiohttp.ClientSession(headers=bearer()) as http:
                url = f"{h.api}/v1/triggers/delay"
                status, body = await request(
                    http, "POST", url, {"variables": {"time": "12:40", "minutes": 18}}
                )
                assert status == 202, body
                # Shown as written, spoken in words.
                assert body["text"] == "The 12:40 to Greenhaven is delayed by 18 minutes."
                assert body["spoken"] == [
                    {
                        "language": "English",
                        "text": "The twelve forty to Greenhaven is delayed by eighteen minutes.",
                    }
                ]
                assert body["template"] == "delay" and body["zones"] == ["hall"]
                for variables, field in [
                    ({"time": "12:40", "minutes": "soon"}, "variables.minutes"),
                    ({"time": "12:40"}, "variables.minutes"),
                    ({"time": "25:99", "minutes": 3}, "variables.time"),
                    ({"time": "12:40", "minutes": 3, "colour": "red"}, "variables.colour"),
                ]:
                    status, err = await request(http, "POST", url, {"variables": variables})
                    assert status == 422, (variables, err)
                    assert err["fields"][0]["field"] == field, err
                    assert "delay" in err["fields"][0]["message"]  # the template is named
                status, _ = await request(http, "POST", f"{h.api}/v1/triggers/nope", {})
                assert status == 404
            final = await h.wait_final(body["id"])
            assert final["state"] == "finished"
            await h.wait_receipts(body["id"], ["ep-a"])
            assert ep.announcements[body["id"]].status == "complete"
        finally:
            await h.close()


async def test_scheduled_one_shot_fires_on_time_and_the_endpoint_hears_it(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        ep = await h.endpoint("ep-a", ["hall"], ["opus/48000"])
        try:
            due = datetime.now(UTC) + timedelta(seconds=2)
            async with aiohttp.ClientSession(headers=bearer()) as http:
                status, created = await request(
                    http,
                    "POST",
                    f"{h.api}/v1/schedules",
                    {
                        "id": "soon",
                        "template": "delay",
                        "at": iso(due),
                        "variables": {"time": "08:05", "minutes": 5},
                    },
                )
                assert status == 201, created
                assert created["next_firings"] == [iso(due)]
                # the announcement exists at once (pre-render window), due at the firing
                for _ in range(100):
                    status, hist = await request(http, "GET", f"{h.api}/v1/announcements?limit=5")
                    if hist["announcements"]:
                        break
                    await asyncio.sleep(0.02)
                [ann] = hist["announcements"]
                assert ann["schedule_id"] == "soon" and ann["due_at"] == iso(due)
                assert ann["text"] == "The 08:05 to Greenhaven is delayed by 5 minutes."
                assert ann["spoken"][0]["text"] == (
                    "The eight oh five to Greenhaven is delayed by five minutes."
                )
            final = await h.wait_final(ann["id"], timeout_s=30)
            assert final["state"] == "finished"
            started = datetime.fromisoformat(final["started_at"])
            assert started <= due  # playout began ahead (a playout delay before due)
            await h.wait_receipts(ann["id"], ["ep-a"])
            rec = ep.announcements[ann["id"]]
            assert rec.status == "complete"
            # first chunk plays at the due instant: its play-at (server clock) converted
            # with the endpoint's clock estimate equals due within a few ms
            offset = ep.clock_estimate.offset_us
            local_play_us = rec.play_at_us[0] - offset
            now_local_us = ep.clock.monotonic_us()
            play_wall = datetime.now(UTC) + timedelta(microseconds=local_play_us - now_local_us)
            assert abs((play_wall - due).total_seconds()) < 0.05
        finally:
            await h.close()


async def test_schedule_api_lists_pauses_resumes_and_deletes(tmp_path):
    async with Service(config(tmp_path / "s.db"), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            async with aiohttp.ClientSession(headers=bearer()) as http:
                base = f"{h.api}/v1/schedules"
                body = {
                    "id": "nightly",
                    "template": "delay",
                    "cron": "30 2 * * *",
                    "timezone": "Europe/London",
                    "variables": {"time": "02:30", "minutes": 9},
                }
                status, created = await request(http, "POST", base, body)
                assert status == 201 and len(created["next_firings"]) == 3
                status, _ = await request(http, "POST", base, body)
                assert status == 409
                status, err = await request(
                    http, "POST", base, {**body, "id": "bad", "cron": "61 * * * *"}
                )
                assert status == 422 and "cron" in err["fields"][0]["message"]
                status, err = await request(
                    http, "POST", base, {**body, "id": "bad2", "variables": {"time": "02:30"}}
                )
                assert status == 422 and err["fields"][0]["field"] == "variables"
                status, paused = await request(http, "POST", f"{base}/nightly/pause")
                assert paused["paused"] and paused["next_firings"] == []
                status, resumed = await request(http, "POST", f"{base}/nightly/resume")
                assert not resumed["paused"] and resumed["next_firings"]
                status, listing = await request(http, "GET", base)
                assert [s["id"] for s in listing["schedules"]] == ["nightly"]
                status, _ = await request(http, "DELETE", f"{base}/nightly")
                assert status == 200
                status, _ = await request(http, "GET", f"{base}/nightly")
                assert status == 404
        finally:
            await h.close()


async def test_after_downtime_stale_firings_are_recorded_missed_not_played(tmp_path):
    store = tmp_path / "s.db"
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            start = datetime.now(UTC) - timedelta(seconds=595)  # every minute since ~10 min ago
            async with aiohttp.ClientSession(headers=bearer()) as http:
                status, _ = await request(
                    http,
                    "POST",
                    f"{h.api}/v1/schedules",
                    {
                        "id": "often",
                        "template": "delay",
                        "every_s": 60,
                        "start": iso(start),
                        "misfire_grace_s": 5,
                        "paused": True,  # nothing fires while this first server is up
                        "variables": {"time": "09:00", "minutes": 1},
                    },
                )
                assert status == 201
            # pretend the server has been down since the first firing, 10 minutes ago
            await svc.store.set_next_fire_at("often", start, datetime.now(UTC))
            await svc.store.set_schedule_paused("often", False, datetime.now(UTC))
        finally:
            await h.close()
    async with Service(config(store), engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
        try:
            async with aiohttp.ClientSession(headers=bearer()) as http:
                for _ in range(100):
                    _, hist = await request(http, "GET", f"{h.api}/v1/announcements?state=missed")
                    if hist["announcements"]:
                        break
                    await asyncio.sleep(0.02)
            [missed] = hist["announcements"]
            assert missed["schedule_id"] == "often" and missed["state"] == "missed"
            assert "10 firings coalesced" in missed["reason"] and "grace 5 s" in missed["reason"]
            await asyncio.sleep(0.5)
            assert ep.announcements == {}  # nothing stale was played
        finally:
            await h.close()
