"""Hostile request bodies and queries get a 4xx naming the field, never a 500."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from broadcaster.speech.espeak import EspeakEngine

from .conftest import api_tokens_config

pytestmark = pytest.mark.integration

#: Sent with every request; the auth work's middleware needs a token that may do
#: everything (add it to this file's config as an admin token at the merge).
API_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _config(chime_dir: Path | None = None) -> Any:
    audio: dict[str, Any] = {"chime_max_kb": 64, "chime_max_s": 2.0}
    if chime_dir is not None:
        audio["chime_dir"] = str(chime_dir)
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": ":memory:"},
            "announcements": {"wait_for_endpoints_s": 0.1},
            "audio": audio,
            "zones": [{"id": "hall"}],
            "endpoints": [{"id": "ep-a", "token_hash": hash_token("token-a"), "zones": ["hall"]}],
            "api_tokens": api_tokens_config(limited_zone=None),
            "templates": [
                {
                    "name": "departure",
                    "text": "The {{ time }} to {{ place }} leaves from platform {{ n }}.",
                    "zones": ["hall"],
                    "variables": {"time": "time", "place": "str", "n": "int"},
                }
            ],
        },
        "test",
    )


def _wav(path: Path, seconds: float, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x10\x00" * int(seconds * rate))
    return path


@pytest.fixture
async def api(tmp_path: Path):
    chimes = tmp_path / "chimes"
    chimes.mkdir()
    _wav(chimes / "ding.wav", 0.5)
    _wav(chimes / "long.wav", 3.0)  # over chime_max_s (2 s), under chime_max_kb
    _wav(chimes / "big.wav", 1.0, rate=48000)  # 96 KB: over chime_max_kb (64)
    (chimes / "noise.wav").write_bytes(b"RIFF not really a wave file")
    secret = tmp_path / "secret.wav"
    _wav(secret, 0.5)
    (chimes / "escape.wav").symlink_to(secret)
    async with Service(_config(chimes), engine=EspeakEngine(max_text_chars=200)) as service:
        yield f"http://127.0.0.1:{service.http_port}"


async def _send(
    api: str, method: str, path: str, raw: bytes | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, api + path, data=raw, headers=headers, **kw) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def _fields(body: Any) -> dict[str, str]:
    return {f["field"]: f["message"] for f in body.get("fields", [])}


BASE = '{"text": "Mind the gap.", "zones": ["hall"]'

ANNOUNCEMENT_ATTACKS = [
    # (body, field named in the 422)
    ("[" * 100_000 + "]" * 100_000, "(body)"),
    ('{"text": ' + "[" * 40 + "1" + "]" * 40 + ', "zones": ["hall"]}', "text"),
    (BASE + ', "expires_after_s": 1e300}', "expires_after_s"),
    (BASE + ', "expires_after_s": 1e999}', "expires_after_s"),
    (BASE + ', "expires_after_s": Infinity}', "expires_after_s"),
    (BASE + ', "expires_after_s": NaN}', "expires_after_s"),
    (BASE + ', "expires_after_s": 604801}', "expires_after_s"),
    (BASE + ', "due_at": "9999-12-31T23:59:59Z", "expires_after_s": 60}', "due_at"),
    (BASE + ', "due_at": "0001-01-01T00:00:00Z"}', "due_at"),
    (BASE + ', "expires_at": "9999-12-31T23:59:59-12:00"}', "expires_at"),
    (BASE + ', "due_at": "2026-01-01T00:00:00"}', "due_at"),  # no offset
    ('{"text": "Mind the \\ud800 gap.", "zones": ["hall"]}', "text"),
    ('{"text": "Mind the gap.", "zones": ["\\udfff"]}', "zones.0"),
    (BASE + ', "priority": true}', "priority"),
    (BASE + ', "priority": 1.0}', "priority"),
    (BASE + ', "priority": 256}', "priority"),
    (BASE + ', "priority": "loud"}', "priority"),
    (BASE + ', "speed": "1.5"}', "speed"),
    (BASE + ', "speed": true}', "speed"),
    (BASE + ', "repeats": true}', "repeats"),
    (BASE + ', "repeats": 100000000000000000000000}', "repeats"),
    (BASE + ', "repeat_gap_ms": 1.5}', "repeat_gap_ms"),
    ('{"text": 12, "zones": ["hall"]}', "text"),
    ('{"text": "Mind the gap.", "zones": "hall"}', "zones"),
    ('{"text": "Mind the gap.", "zones": [1]}', "zones.0"),
    (BASE + ', "also": [{"language": "German", "text": 5}]}', "also.0.text"),
    (BASE + ', "also": {"language": "German"}}', "also"),
    (BASE + ', "on_preempt": 1}', "on_preempt"),
    (BASE + ', "variables": {"x": 1}}', "variables"),  # only with a template
    (
        '{"template": "departure", "variables": {"time": 1240, "place": "Leeds", "n": 2}}',
        "variables.time",
    ),
    (
        '{"template": "departure", "variables": {"time": "12:40", "place": ["Leeds"], "n": 2}}',
        "variables.place",
    ),
    (
        '{"template": "departure", "variables": {"time": "12:40", "place": "Leeds", "n": true}}',
        "variables.n",
    ),
    (
        '{"template": "departure", "variables": {"time": "12:40", "place": "Leeds", "n": 1e400}}',
        "variables.n",
    ),
    (
        '{"template": "departure", "variables": {"time": "12:40", "place": "Leeds", "n": null}}',
        "variables.n",
    ),
    ('{"template": ["departure"]}', "template"),
    ('{"text": "Mind the\\u0000 gap.", "zones": ["hall"]}', "text"),
    (BASE + ', "style": "calm\\u001b[31m"}', "style"),
    (BASE + ', "also": [{"language": "German", "text": "Achtung\\u0007"}]}', "also.0.text"),
    (
        '{"template": "departure", "variables": {"time": "12:40", "place": "Leeds\\u0000", "n": 2}}',
        "variables",
    ),
    ('{"template": "departure", "variables": []}', "variables"),
    (BASE + ', "chime_before": "file:/etc/passwd"}', "chime_before"),
    (BASE + ', "chime_before": "file:../secret.wav"}', "chime_before"),
    (BASE + ', "chime_after": "file:escape.wav"}', "chime_after"),
    (BASE + ', "chime_after": "file:missing.wav"}', "chime_after"),
    (BASE + ', "chime_after": "file:long.wav"}', "chime_after"),
    (BASE + ', "chime_after": "file:big.wav"}', "chime_after"),
    (BASE + ', "chime_after": "file:noise.wav"}', "chime_after"),
    (BASE + ', "chime_after": "kazoo"}', "chime_after"),
]


@pytest.mark.parametrize(("raw", "field"), ANNOUNCEMENT_ATTACKS)
async def test_bad_announcement_gets_422_naming_the_field(api, raw, field):
    status, body = await _send(api, "POST", "/v1/announcements", raw.encode("utf-8"))
    assert status == 422, body
    assert body["error"] == "validation_failed"
    assert field in _fields(body), body


async def test_chime_refusals_never_show_the_server_path(api, tmp_path):
    for name in ("long.wav", "big.wav", "noise.wav", "escape.wav"):
        _, body = await _send(
            api, "POST", "/v1/announcements", (BASE + f', "chime_after": "file:{name}"}}').encode()
        )
        assert str(tmp_path) not in json.dumps(body), body


async def test_a_chime_from_the_folder_is_accepted(api):
    status, body = await _send(
        api, "POST", "/v1/announcements", (BASE + ', "chime_before": "file:ding.wav"}').encode()
    )
    assert status == 202, body


async def test_trigger_with_hostile_body(api):
    for raw, field in [
        (
            '{"variables": {"time": "12:40", "place": "Leeds", "n": 2}, "priority": true}',
            "priority",
        ),
        ('{"variables": {"time": "12:40", "place": "\\ud800", "n": 2}}', "variables.place"),
        ("[" * 5000 + "]" * 5000, "(body)"),
    ]:
        status, body = await _send(api, "POST", "/v1/triggers/departure", raw.encode())
        assert status == 422, (raw[:60], body)
        assert field in _fields(body), body


SCHEDULE = (
    '{"id": "s1", "template": "departure", "variables": {"time": "12:40", "place": "Leeds", "n": 2}'
)

SCHEDULE_ATTACKS = [
    (SCHEDULE + ', "every_s": 100000000000000000000}', "every_s"),
    (SCHEDULE + ', "every_s": 31622401}', "every_s"),
    (SCHEDULE + ', "every_s": true}', "every_s"),
    (SCHEDULE + ', "every_s": 60.5}', "every_s"),
    (SCHEDULE + ', "every_s": "60"}', "every_s"),
    (SCHEDULE + ', "every_s": 60, "misfire_grace_s": Infinity}', "misfire_grace_s"),
    (SCHEDULE + ', "every_s": 60, "expires_after_s": 1e300}', "expires_after_s"),
    (SCHEDULE + ', "every_s": 60, "priority": true}', "priority"),
    (SCHEDULE + ', "every_s": 60, "paused": "yes"}', "paused"),
    (SCHEDULE + ', "every_s": 60, "timezone": "../../etc/passwd"}', "timezone"),
    (SCHEDULE + ', "at": "9999-12-31T23:59:59"}', "at"),
    (SCHEDULE + ', "cron": "61 * * * *"}', "cron"),
    (SCHEDULE + ', "cron": "' + "* " * 2000 + '"}', "cron"),
    (SCHEDULE + ', "every_s": 60, "start": "9999-12-31T23:59:59"}', "start"),
    (SCHEDULE + ', "every_s": 60, "except_dates": ["9999-99-99"]}', "except_dates"),
    (SCHEDULE + ', "every_s": 60, "except_dates": ["9999-12-31"]}', "except_dates"),
    (
        SCHEDULE + ', "every_s": 60, "start": "2026-01-01T00:00:00", "end": "9999-12-31T00:00:00"}',
        "end",
    ),
    ('{"id": "s\\ud800", "template": "departure", "every_s": 60}', "id"),
    (
        SCHEDULE + ', "every_s": 60, "except_dates": [' + ", ".join(['"2026-12-25"'] * 1001) + "]}",
        "except_dates",
    ),
    (SCHEDULE + ', "cron": "' + "1," * 200 + '1 * * * *"}', "cron"),
    (SCHEDULE + ', "every_s": 60, "timezone": "' + "A" * 100 + '"}', "timezone"),
    ('{"id": "s1\\n", "template": "departure", "every_s": 60}', "id"),
]


@pytest.mark.parametrize(("raw", "field"), SCHEDULE_ATTACKS)
async def test_bad_schedule_gets_422_naming_the_field(api, raw, field):
    status, body = await _send(api, "POST", "/v1/schedules", raw.encode())
    assert status == 422, body
    assert field in _fields(body), body


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-5", "limit"),
        ("limit=100001", "limit"),
        ("limit=" + "9" * 5000, "limit"),
        ("since=yesterday", "since"),
        ("since=9999-12-31T23:59:59-05:00", "since"),
        ("until=0001-01-01T00:00:00%2B05:00", "until"),
        ("state=exploded", "state"),
        ("limt=5", "limt"),
        ("state=finished&state=%ED%A0%80", "state"),
    ],
)
async def test_bad_query_gets_422_naming_it(api, query, field):
    status, body = await _send(api, "GET", f"/v1/announcements?{query}")
    assert status == 422, body
    assert field in _fields(body), body


async def test_good_query_still_works(api):
    status, body = await _send(api, "GET", "/v1/announcements?limit=5&state=finished&state=queued")
    assert status == 200 and body == {"announcements": []}


async def test_odd_paths_are_not_500(api):
    for method, path in [
        ("GET", "/v1/announcements/%ED%A0%80"),
        ("GET", "/v1/announcements/" + "x" * 5000),
        ("POST", "/v1/announcements/%00/cancel"),
        ("GET", "/v1/schedules/%ED%A0%80"),
        ("POST", "/v1/schedules/%0A/pause"),
        ("DELETE", "/v1/schedules/" + "y" * 5000),
        ("POST", "/v1/triggers/%ED%A0%80"),
    ]:
        status, body = await _send(api, method, path, b"{}")
        assert 400 <= status < 500, (method, path, status, body)


async def test_over_long_request_line_and_header_are_answered_without_a_traceback(api, caplog):
    host, port = api.removeprefix("http://").split(":")
    caplog.set_level(logging.DEBUG)
    for request in (
        f"GET /v1/announcements?{'a' * 20000} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 20000}\r\n\r\n",
        f"GET /healthz HTTP/1.1\r\nHost: x\r\n{'c' * 20000}: 1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        status = int(status_line.split()[1])
        assert 400 <= status < 500, status_line
    await asyncio.sleep(0.1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("bad HTTP request" in r.getMessage() for r in caplog.records)


def test_attack_table_uses_valid_json_where_it_means_to():
    # Every body except the deep ones and NaN/Infinity is plain JSON, so the 422s
    # above are about values, not syntax.
    for raw, _ in ANNOUNCEMENT_ATTACKS + SCHEDULE_ATTACKS:
        if raw.startswith("[[[") or "Infinity" in raw or "NaN" in raw:
            continue
        value = json.loads(raw)
        assert not (isinstance(value, float) and math.isnan(value))
