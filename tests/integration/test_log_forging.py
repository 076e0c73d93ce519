"""Values from endpoints and callers never start a log line of their own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broadcaster.logsetup import JsonFormatter, TextFormatter

pytestmark = pytest.mark.integration

#: Sent with every request; the auth work's middleware needs a token that may do
#: everything (add it to this file's config as an admin token at the merge).
API_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

FORGED = "1999-01-01T10:00:00.000Z ERROR   broadcaster.app: FORGED"
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


def _hello(eid: str, token: str, zones: list[str], **over: object) -> str:
    msg = {
        "type": "hello",
        "protocol": 1,
        "endpoint_id": eid,
        "token": token,
        "zones": zones,
        "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 16000}],
        **over,
    }
    return json.dumps(msg)


async def _say(url: str, *frames: str) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        async with connect(url, ping_interval=None, max_size=None) as ws:
            for frame in frames:
                await ws.send(frame)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    async for _ in ws:
                        pass


async def _attack(harness) -> None:
    # hostile hello fields: id, token, zones, protocol, formats, an unknown message type
    await _say(harness.ws_url, _hello("ep-b\n" + FORGED, "token-b", ["hall"]))
    await _say(harness.ws_url, _hello("ep-b", "token-b", ["hall\n" + FORGED]))
    await _say(harness.ws_url, _hello("ep-b", "token-b", ["hall"], protocol="1\n" + FORGED))
    await _say(
        harness.ws_url,
        _hello(
            "ep-b", "token-b", ["hall"], formats=[{"codec": "x\n" + FORGED, "sample_rate_hz": 1}]
        ),
    )
    await _say(
        harness.ws_url, _hello("ep-b", "token-b", ["hall"]), json.dumps({"type": "x\n" + FORGED})
    )
    # a caller's text, style and unknown template/zone names
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for body in (
            {"text": "Mind the gap.\n" + FORGED, "zones": ["hall"], "style": "calm\r\n" + FORGED},
            {"text": "Mind the gap.", "zones": ["hall\n" + FORGED]},
            {"template": "t\n" + FORGED},
        ):
            async with http.post(f"{harness.api}/v1/announcements", json=body) as r:
                assert r.status in (202, 422)
        async with http.post(
            f"{harness.api}/v1/triggers/t%0A{FORGED.replace(' ', '%20')}", json={}
        ):
            pass
    await asyncio.sleep(0.5)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_hostile_values_never_start_a_log_line(harness, fmt):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        await _attack(harness)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    assert "FORGED" in stream.getvalue(), (
        "the attack never reached the log; the test proves nothing"
    )
    for line in lines:
        if fmt == "json":
            json.loads(line)  # every line is one whole record
        else:
            assert _RECORD_START.match(line) or line.startswith("    "), line
        assert not line.startswith(FORGED[:10])
