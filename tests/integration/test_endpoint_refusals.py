"""Bad endpoints are refused with a reason and never disturb the others."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.integration

LONG = " ".join(f"Sentence number {i} of a bulletin for the hall." for i in range(6))


def hello(eid="ep-b", token="token-b", zones=("hall",), **over):
    msg = {
        "type": "hello",
        "protocol": 1,
        "endpoint_id": eid,
        "token": token,
        "zones": list(zones),
        "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 16000}],
    }
    msg.update(over)
    return json.dumps(msg)


async def exchange(url, *frames):
    """Send frames, collect what the server says until it closes: (messages, code, reason)."""
    messages = []
    async with connect(url, ping_interval=None, max_size=None) as ws:
        for f in frames:
            await ws.send(f)
        try:
            async for m in ws:
                messages.append(json.loads(m) if isinstance(m, str) else m)
        except ConnectionClosed:
            pass
        return messages, ws.close_code, ws.close_reason


MISBEHAVIOURS = [
    ([hello(token="nope")], 4001, "unauthorized"),
    ([hello(eid="intruder", token="x")], 4001, "unauthorized"),
    ([hello(zones=("hall", "gate"))], 4003, "forbidden_zone"),
    ([hello(zones=("hall", "no-such-zone"))], 4003, "forbidden_zone"),
    ([hello(protocol=7)], 4009, "unsupported_protocol"),
    ([hello(formats=[{"codec": "mp3", "sample_rate_hz": 44100}])], 4006, "no_common_format"),
    (["{oops"], 4000, "invalid_json"),
    ([hello(), '{"type": "sing"}'], 4000, "unknown_type"),
    (
        [hello(), json.dumps({"type": "ping", "id": 1, "sent_us": 1, "pad": "x" * 70000})],
        1009,
        "message_too_big",
    ),
    ([hello(), b"\x00\x01"], 1003, "binary_not_allowed"),
]


async def test_misbehaving_endpoints_are_closed_with_a_reason_while_another_plays(harness):
    good = await harness.endpoint("ep-a", ["hall"], ["opus/48000"])
    _, created = await harness.post({"text": LONG, "zones": ["hall"], "speed": 2})
    # wait until audio is flowing to the good endpoint
    for _ in range(400):
        rec = good.announcements.get(created["id"])
        if rec and rec.chunks > 5:
            break
        await asyncio.sleep(0.01)
    results = await asyncio.gather(
        *(exchange(harness.ws_url, *frames) for frames, _, _ in MISBEHAVIOURS)
    )
    for (_frames, code, error), (messages, close_code, reason) in zip(
        MISBEHAVIOURS, results, strict=True
    ):
        assert close_code == code, (error, close_code, reason)
        assert reason
        errors = [m for m in messages if isinstance(m, dict) and m.get("type") == "error"]
        assert errors and errors[-1]["code"] == error and errors[-1]["message"]
    assert good.announcements[created["id"]].status == "receiving"  # still playing meanwhile

    final = await harness.wait_final(created["id"])
    assert final["state"] == "finished"
    await harness.wait_receipts(created["id"], ["ep-a"])
    rec = good.announcements[created["id"]]
    assert rec.status == "complete" and rec.gaps == 0 and rec.late_chunks == 0


async def test_wrong_path_is_404(harness):
    url = harness.ws_url.replace("/v1/endpoint", "/elsewhere")
    with pytest.raises(InvalidStatus) as err:
        async with connect(url):
            pass
    assert err.value.response.status_code == 404


async def test_reconnect_replaces_the_old_connection(harness):
    async with connect(harness.ws_url, ping_interval=None) as first:
        await first.send(hello())
        assert json.loads(await first.recv())["type"] == "welcome"
        async with connect(harness.ws_url, ping_interval=None) as second:
            await second.send(hello())
            assert json.loads(await second.recv())["type"] == "welcome"
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(first.recv(), 5)
            assert first.close_code == 4010
            _, eps = await harness.get("/v1/endpoints")
            b = next(e for e in eps["endpoints"] if e["endpoint_id"] == "ep-b")
            assert b["connected"]


async def test_silent_endpoint_is_dropped_after_hello_timeout(tmp_path):
    from broadcaster.app import Service

    from .conftest import make_config

    async with Service(make_config(hello_timeout_ms=300)) as svc:
        url = f"ws://127.0.0.1:{svc.ws_port}/v1/endpoint"
        messages, code, _ = await asyncio.wait_for(exchange(url), 10)
        assert code == 4004 and messages[-1]["code"] == "hello_timeout"
