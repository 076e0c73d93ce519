"""docs/protocol.md and the server agree where the document used to leave room to guess.

One test per point an independent endpoint found ambiguous (issue 10, "Protocol
document"); each fails if the server and the document part ways again.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from broadcaster.clock import FakeClock
from broadcaster.config import StreamingConfig
from broadcaster.endpoint import FATAL_CLOSE_CODES
from broadcaster.streaming.hub import Hub
from broadcaster.streaming.server import EndpointServer
from broadcaster.streaming.wire import MAX_SAFE_INTEGER

from .conftest import make_config

pytestmark = pytest.mark.integration

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def hello(eid: str = "ep-b", token: str = "token-b", **over: object) -> str:
    msg: dict[str, object] = {
        "type": "hello",
        "protocol": 1,
        "endpoint_id": eid,
        "token": token,
        "zones": ["hall"],
        "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 16000}],
    }
    msg.update(over)
    return json.dumps(msg)


async def test_first_server_ping_comes_one_interval_after_welcome_then_every_interval():
    """§8: the server pings heartbeat_interval_ms after welcome and every interval after,
    so with the defaults three pings arrive within one heartbeat timeout. (It used to
    sleep until the hello timeout first: the first ping came 5 s after welcome.)"""
    defaults = StreamingConfig()
    assert 3 * defaults.heartbeat_interval_ms < defaults.heartbeat_timeout_ms
    assert defaults.hello_timeout_ms > defaults.heartbeat_interval_ms  # the old bug showed
    clock = FakeClock()
    cfg = make_config()
    server = EndpointServer(config=cfg, hub=Hub(), clock=clock, on_receipt=lambda e, r: None)
    await server.start("127.0.0.1", 0)
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/endpoint", ping_interval=None) as ws:
            await ws.send(hello())
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome"
            interval_us = welcome["settings"]["heartbeat_interval_ms"] * 1000
            timeout_us = welcome["settings"]["heartbeat_timeout_ms"] * 1000
            pings = []
            elapsed = 0
            while elapsed < timeout_us:
                step = min(1_000_000, timeout_us - elapsed)
                await clock.advance_us(step)
                elapsed += step
                while True:
                    try:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 0.05))
                    except TimeoutError:
                        break
                    if msg["type"] == "ping":
                        pings.append(msg)
                        # answer, as an endpoint must, so the link stays up
                        pong = {"type": "pong", "id": msg["id"], "echo_us": msg["sent_us"]}
                        await ws.send(json.dumps({**pong, "time_us": 1}))
            sent = [p["sent_us"] - welcome["server_time_us"] for p in pings]
            assert [p["id"] for p in pings] == [1, 2, 3]
            assert sent == [interval_us, 2 * interval_us, 3 * interval_us]
    finally:
        await server.stop()


async def exchange(url: str, *frames: str | bytes) -> tuple[list[dict], int | None]:
    """Send frames (bytes marked ``text`` go as text frames), collect until the close."""
    messages: list[dict] = []
    async with connect(url, ping_interval=None) as ws:
        for f in frames:
            await ws.send(f)
        try:
            async for m in ws:
                messages.append(json.loads(m))
        except ConnectionClosed:
            pass
        return messages, ws.close_code


def section(number: str) -> str:
    start = DOC.index(f"\n## {number}. ")
    return DOC[start : DOC.index("\n## ", start + 1)]


def codes_in(text: str) -> set[int]:
    return {int(c) for c in re.findall(r"\b(1\d{3}|4\d{3})\b", text)}


async def test_invalid_utf8_is_closed_1007_and_sections_9_and_11_agree_on_fatal_codes(harness):
    """§9 and §11 list the same fatal codes, 1007 and 4010 included, and the reference
    endpoint stops on exactly those; the server really closes invalid UTF-8 with 1007."""
    async with connect(harness.ws_url, ping_interval=None) as ws:
        await ws.send(hello())
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(b'{"type":"ping","id":1,"sent_us":\xff}', text=True)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1007

    s9 = section("9")
    flat = " ".join(s9.split())
    listed_9 = flat[flat.index("treats exactly") : flat.index("as fatal")]
    s11 = section("11")
    dont = s11[s11.index("**Do not reconnect after fatal codes:**") :]
    listed_11 = dont[: dont.index("\n* ")]
    assert codes_in(listed_9) == codes_in(listed_11) == set(FATAL_CLOSE_CODES)
    assert {1007, 4010} <= set(FATAL_CLOSE_CODES)
    # and the table of §9 says "No" (or "Not automatically") for each of them
    for code in FATAL_CLOSE_CODES:
        row = next(line for line in s9.splitlines() if line.startswith(f"| {code} |"))
        last = row.rstrip(" |").rsplit("|", 1)[-1].strip()
        assert last.startswith(("No", "**Not automatically", "Only with")), (code, last)


async def test_codec_names_are_case_sensitive(harness):
    """§5 / §7: codec names match exactly as written (lower case); "Opus" is unknown."""
    upper = [{"codec": "PCM_S16LE", "sample_rate_hz": 16000}]
    messages, code = await exchange(harness.ws_url, hello(formats=upper))
    assert code == 4006 and messages[-1]["code"] == "no_common_format"
    mixed = [
        {"codec": "Opus", "sample_rate_hz": 48000},
        {"codec": "pcm_s16le", "sample_rate_hz": 16000},
    ]
    async with connect(harness.ws_url, ping_interval=None) as ws:
        await ws.send(hello(formats=mixed))
        welcome = json.loads(await ws.recv())
        assert welcome["format"]["codec"] == "pcm_s16le"
    assert "case-sensitive" in DOC


async def test_ping_numbers_are_limited_to_what_javascript_holds_exactly(harness):
    """§5.3/§5.4: ping and pong id and times are integers 0..2^53-1; the server echoes
    the largest exactly and refuses anything beyond (invalid_field, 4000)."""
    top = MAX_SAFE_INTEGER
    assert top == 2**53 - 1 and "9007199254740991" in DOC
    async with connect(harness.ws_url, ping_interval=None) as ws:
        await ws.send(hello())
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "ping", "id": top, "sent_us": top}))
        pong = json.loads(await ws.recv())
        assert pong["type"] == "pong" and pong["id"] == top and pong["echo_us"] == top
    for field, value in [("id", top + 1), ("sent_us", 2**64 - 1), ("sent_us", -1)]:
        ping = {"type": "ping", "id": 1, "sent_us": 1, field: value}
        messages, code = await exchange(harness.ws_url, hello(), json.dumps(ping))
        assert code == 4000, (field, value)
        assert messages[-1]["code"] == "invalid_field" and messages[-1]["field"] == field
    pong = {"type": "pong", "id": 1, "echo_us": 1, "time_us": top + 1}
    messages, code = await exchange(harness.ws_url, hello(), json.dumps(pong))
    assert code == 4000 and messages[-1]["field"] == "time_us"


async def test_a_binary_message_ends_the_link_it_is_no_sign_of_life(harness):
    """§2 and §8 agree: a binary message from an endpoint is fatal (1003)."""
    messages, code = await exchange(harness.ws_url, hello(), b"\x01\x01")
    assert code == 1003 and messages[-1]["code"] == "binary_not_allowed"
    s8 = section("8")
    assert "Any **text** message" in s8 and "binary message ends the connection" in s8


async def test_a_cancelled_streams_receipt_counts_what_was_received_not_played(harness):
    """§5.8: ``duration_ms`` of a receipt is the audio received, also for a cancelled
    stream whose buffered tail the endpoint flushed (``playback`` says what played)."""
    ep = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    text = " ".join(f"Notice number {i} for the hall." for i in range(4))
    _, created = await harness.post({"text": text, "zones": ["hall"], "speed": 1.5})
    for _ in range(500):
        rec = ep.announcements.get(created["id"])
        if rec and rec.chunks >= 20:
            break
        await asyncio.sleep(0.01)
    status, _ = await harness.post(None, path=f"/v1/announcements/{created['id']}/cancel")
    assert status == 202
    final = await harness.wait_receipts(created["id"], ["ep-b"])
    receipt = final["endpoints"]["ep-b"]["receipt"]
    rec = ep.announcements[created["id"]]
    assert receipt["status"] == "cancelled" and rec.flushed_chunks > 0  # a tail was dropped
    frame_ms = 20
    assert receipt["chunks"] == rec.chunks
    assert receipt["duration_ms"] == rec.chunks * frame_ms  # received, no gaps
    assert rec.duration_ms < receipt["duration_ms"]  # what it kept (played) is less
