"""Issue 9: the API refuses invalid speech values with 422 naming the field, before
anything is accepted or reaches an engine; check-config names a bad Runware URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broadcaster.app import Service
from broadcaster.speech.espeak import EspeakEngine

from .conftest import Harness, make_config
from .test_cli import run

pytestmark = pytest.mark.integration

TEMPLATE = {"name": "notice", "text": "Mind the gap.", "zones": ["hall"], "speed": 0.97}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    config = make_config(templates=[TEMPLATE])
    async with Service(config, engine=EspeakEngine()) as service:
        harness = Harness(service, tmp_path)
        try:
            yield harness
        finally:
            await harness.close()


BAD = [
    ({"speed": 0.975}, "speed", "multiple of 0.01"),
    ({"speed": 1.005}, "speed", "multiple of 0.01"),
    ({"speed": True}, "speed", "valid number"),
    ({"speed": False}, "speed", "valid number"),
    ({"style": ""}, "style", "blank"),
    ({"style": "   "}, "style", "blank"),
    ({"style": "\n\t"}, "style", "blank"),
    ({"priority": True}, "priority", "integer"),
    ({"repeats": True}, "repeats", "integer"),
]


@pytest.mark.parametrize(("extra", "field", "message"), BAD)
async def test_announcement_422_names_the_field_and_accepts_nothing(h, extra, field, message):
    status, body = await h.post({"text": "Mind the gap.", "zones": ["hall"], **extra})
    assert status == 422, body
    assert body["error"] == "validation_failed"
    problems = {f["field"]: f["message"] for f in body["fields"]}
    assert field in problems and message in problems[field], body
    _, listed = await h.get("/v1/announcements")
    assert listed["announcements"] == []


@pytest.mark.parametrize(("extra", "field", "message"), BAD)
async def test_trigger_422_names_the_field(h, extra, field, message):
    status, body = await h.post(extra, path="/v1/triggers/notice")
    assert status == 422, body
    problems = {f["field"]: f["message"] for f in body["fields"]}
    assert field in problems and message in problems[field], body


async def test_a_speed_on_the_grid_is_played_as_given(h):
    status, created = await h.post({"template": "notice", "speed": 1.15})
    assert status == 202, created
    final = await h.wait_final(created["id"])
    assert final["speed"] == 1.15
    status, created = await h.post({"template": "notice"})
    assert status == 202, created
    assert (await h.wait_final(created["id"]))["speed"] == 0.97


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('ws_url = "https://ws-api.runware.ai/v1"', "ws_url", "must start with ws:// or wss://"),
        ('rest_url = "wss://api.runware.ai/v1"', "rest_url", "must start with http://"),
        ('webhook_url = "hooks.example.com"', "webhook_url", "must start with http://"),
        ('upload_endpoint = "https://h:x/"', "upload_endpoint", "not a valid URL"),
    ],
)
async def test_check_config_names_a_bad_runware_url(tmp_path, line, key, problem):
    path = tmp_path / "site.toml"
    path.write_text(f'[speech.runware]\n{line}\n[[zones]]\nid = "hall"\n')
    rc, _, err = await run("check-config", str(path))
    assert rc == 2, err
    assert f"{path}: speech.runware.{key}: {problem}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"every_s": True}, "every_s"), ({"priority": True}, "priority"), ({"paused": 1}, "paused")],
)
async def test_schedule_422_booleans_are_not_numbers(h, extra, field):
    body = {"id": "s1", "template": "notice", "every_s": 3600, **extra}
    status, resp = await h.post(body, path="/v1/schedules")
    assert status == 422, resp
    assert field in [f["field"] for f in resp["fields"]], resp
    _, listed = await h.get("/v1/schedules")
    assert listed["schedules"] == []
