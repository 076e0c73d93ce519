"""Live paging through the uplink (docs/paging.md) with a Python talker, no browser."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from broadcaster.audio.loudness import measure
from broadcaster.audio.transcode import Transcoder
from broadcaster.model import Codec, StreamFormat
from broadcaster.paging_client import PagingClient, PagingRefused
from broadcaster.speech.espeak import EspeakEngine
from tests.integration.conftest import API_TOKENS, Harness, make_config

pytestmark = pytest.mark.integration

RATE = 48000
FRAME = 960  # 20 ms


def sweep(seconds: float, rate: int = RATE, level_db: float = -18.0) -> bytes:
    """A 300 -> 3000 Hz sweep with a little amplitude wobble (not a pure tone, so the
    correlation has one clear peak)."""
    t = np.arange(int(seconds * rate)) / rate
    f0, f1 = 300.0, 3000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    x = np.sin(phase) * env * 10 ** (level_db / 20) * 32767
    return bytes(x.astype("<i2").tobytes())


def frames(pcm: bytes, n: int = FRAME) -> list[bytes]:
    return [pcm[i : i + 2 * n] for i in range(0, len(pcm) - 2 * n + 1, 2 * n)]


def windowed_correlation(source: bytes, received: bytes, window_ms: int = 100) -> float:
    """Median over the received audio's 100 ms windows (those with sound) of each one's
    best normalized correlation anywhere in the source: robust to the gaps a stall
    leaves in a live playout."""
    a = np.frombuffer(source, "<i2").astype(float)
    b = np.frombuffer(received, "<i2").astype(float)
    n = RATE * window_ms // 1000
    energy = np.convolve(a**2, np.ones(n), mode="valid")  # per source offset
    size = 1 << int(np.ceil(np.log2(len(a) + n)))
    fa = np.fft.rfft(a, size)
    scores = []
    for i in range(0, len(b) - n + 1, n):
        w = b[i : i + n]
        if np.sqrt(np.mean(w**2)) < 100:
            continue  # silence (a gap, padding)
        xc = np.fft.irfft(fa * np.conj(np.fft.rfft(w, size)), size)[: len(energy)]
        scores.append(float(np.max(xc / (np.sqrt(energy) * np.linalg.norm(w) + 1e-9))))
    return float(np.median(scores)) if scores else 0.0


def url(h) -> str:
    return f"{h.api.replace('http', 'ws', 1)}/v1/paging"


def start(who: str = "operator", **over):
    return {
        "token": API_TOKENS[who],
        "zones": ["hall"],
        "codec": "pcm_s16le",
        "sample_rate_hz": RATE,
        **over,
    }


async def talk(
    h, payloads: list[bytes], frame_us: int = 20_000, **over
) -> tuple[PagingClient, dict]:
    client = await PagingClient.open(url(h), start(**over))
    try:
        await asyncio.wait_for(client.live.wait(), 10)
        await client.send_paced(payloads, frame_us)
        await client.stop()
        ended = await client.wait_ended()
    finally:
        await client.close()
    assert ended is not None
    return client, ended


async def test_pcm_page_reaches_the_endpoint_and_is_recorded(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    source = sweep(1.6)
    client, ended = await talk(harness, frames(source))
    assert ended["state"] == "finished" and ended["ended_by"] == "talker"
    ann_id = client.accepted["announcement_id"]
    record = await harness.wait_receipts(ann_id, ["ep-b"])
    assert record["kind"] == "live" and record["state"] == "finished"
    assert record["created_by"] == "operator"
    assert record["endpoints"]["ep-b"]["state"] == "finished"
    assert record["coverage"]["hall"]["heard"] is True
    live = record["live"]
    assert live["codec"] == "pcm_s16le" and live["frames"] == len(frames(source))
    assert live["latency_ms"]["count"] > 10
    rec = ep.announcements[ann_id]
    corr = windowed_correlation(source, bytes(rec.pcm))
    assert corr > 0.9, corr
    # Levelled like any announcement: the true peak stays under the ceiling.
    assert measure(bytes(rec.pcm), RATE).true_peak_dbtp <= -1.0


async def test_opus_page_with_a_chime_goes_live_after_the_chime(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["opus/48000"])
    source = sweep(1.2)
    enc = Transcoder(StreamFormat(Codec.OPUS, RATE), source_rate_hz=RATE)
    packets = [f.payload for f in enc.push(source)] + [f.payload for f in enc.flush()]
    client, ended = await talk(
        harness,
        packets,
        codec="opus",
        chime_before="two-tone",
        chime_after="two-tone",
        priority="operational",
    )
    assert ended["state"] == "finished"
    record = await harness.wait_receipts(client.accepted["announcement_id"], ["ep-b"])
    assert record["priority"] == 160 and record["chime_before"] == "two-tone"
    assert record["chime_after"] == "two-tone"
    # chime (1.5 s) + pause + the live audio + pause + chime
    assert record["duration_ms"] >= 1500 + 200 + 1100 + 200 + 1500
    started = next(e for e in ep.events if e.get("type") == "announcement_started")
    assert started["expected_duration_ms"] == 0  # a live page's length is the talker's
    live = record["live"]
    assert live["decode_errors"] == 0 and live["dropped_overflow"] == 0
    # The talker was told "live" only once the chime had been sent.
    rec = ep.announcements[record["id"]]
    live_msg = next(m for m in client.messages if m["type"] == "live")
    assert live_msg["play_at_us"] > rec.play_at_us[0] + 500_000
    assert rec.duration_ms > 1000


@pytest.mark.parametrize(
    ("who", "over", "code", "field"),
    [
        ("operator", {"token": "wrong-token"}, 4401, "token"),
        ("operator", {"priority": "emergency"}, 4403, "priority"),
        ("gate-operator", {"zones": ["hall"]}, 4403, "zones"),
        ("viewer", {}, 4403, None),
        ("operator", {"zones": ["nowhere"]}, 4400, "zones"),
        ("operator", {"codec": "opus", "sample_rate_hz": 16000}, 4400, "sample_rate_hz"),
        ("operator", {"priority": 999}, 4400, "priority"),
        ("operator", {"volume": 3}, 4400, "volume"),
        ("operator", {"text": "Live\x1b[2J"}, 4400, "text"),
    ],
)
async def test_refusals_name_the_reason_and_close_with_a_code(harness, who, over, code, field):
    with pytest.raises(PagingRefused) as info:
        await PagingClient.open(url(harness), start(who, **over))
    assert info.value.code == code
    assert info.value.message["type"] == "error"
    assert info.value.message.get("field") == field


async def test_refusals_are_audited_and_a_dispatcher_may_page_at_emergency(harness):
    with pytest.raises(PagingRefused):
        await PagingClient.open(url(harness), start("operator", priority=230))
    client = await PagingClient.open(url(harness), start("dispatcher", priority="emergency"))
    await client.stop()
    ended = await client.wait_ended()
    await client.close()
    assert ended is not None and ended["state"] in ("cancelled", "failed", "finished")
    _, audit = await harness.get("/v1/audit", as_="dispatcher")
    rows = [r for r in audit["audit"] if r["path"] == "/v1/paging"]
    assert [r["status"] for r in rows][-2:] == [403, 202]
    assert rows[-1]["created_id"] == client.accepted["announcement_id"]


async def test_preempted_page_tells_the_talker(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client = await PagingClient.open(url(harness), start("operator"))
    try:
        await asyncio.wait_for(client.live.wait(), 10)
        talking = asyncio.create_task(client.send_paced(frames(sweep(8.0)), 20_000))
        await asyncio.sleep(0.5)
        status, body = await harness.post(
            {"text": "Emergency.", "zones": ["hall"], "priority": "emergency"}, as_="dispatcher"
        )
        assert status == 202
        ended = await client.wait_ended(15)
        talking.cancel()
    finally:
        await client.close()
    assert ended is not None and ended["state"] == "cancelled"
    assert ended["ended_by"] == "preempted" and body["id"] in ended["reason"]
    assert ended["replay_available"] is False  # only a page its talker ended is kept
    _, record = await harness.get(f"/v1/announcements/{ended['announcement_id']}")
    assert record["live"]["ended_by"] == "preempted"


async def test_a_lost_uplink_ends_the_page_and_the_record_says_so(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client = await PagingClient.open(url(harness), start("operator"))
    ann_id = client.accepted["announcement_id"]
    await asyncio.wait_for(client.live.wait(), 10)
    await client.send_paced(frames(sweep(0.6)), 20_000)
    await client.close()  # no stop: the connection just goes away
    record = await harness.wait_final(ann_id)
    assert record["live"]["ended_by"] == "uplink_lost"
    assert any("uplink was lost" in w for w in record["warnings"])
    assert record["duration_ms"] >= 500


async def test_a_burst_after_a_stall_is_dropped_to_catch_up(harness):
    """Faster than real time (a stall, then everything at once): the backlog is
    dropped, not played late for the rest of the page."""
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client = await PagingClient.open(url(harness), start("operator"))
    ann_id = client.accepted["announcement_id"]
    try:
        await asyncio.wait_for(client.live.wait(), 10)
        blocks = frames(sweep(1.0))
        await client.send_paced(blocks[:10], 20_000)
        for b in blocks[10:]:  # 0.8 s at once
            await client.send(b)
        await client.send_paced(blocks[:10], 20_000)
        await client.stop()
        await client.wait_ended()
    finally:
        await client.close()
    _, record = await harness.get(f"/v1/announcements/{ann_id}")
    live = record["live"]
    assert live["dropped_catch_up"] + live["dropped_overflow"] > 10
    assert live["latency_ms"]["max"] < 1000


async def test_the_uplink_obeys_the_origin_policy(harness):
    other = "http://127.0.0.1:1"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url(harness), headers={"Origin": other})
    assert info.value.status == 403
    own = f"http://127.0.0.1:{harness.service.http_port}"
    client = await PagingClient.open(url(harness), start(), origin=own)
    await client.stop()
    await client.wait_ended()
    await client.close()


async def test_a_stop_before_the_page_is_live_cancels_it(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    status, busy = await harness.post(
        {
            "text": "A long emergency message that keeps the hall busy for a while.",
            "zones": ["hall"],
            "priority": "emergency",
        },
        as_="dispatcher",
    )
    assert status == 202
    client = await PagingClient.open(url(harness), start("operator"))
    assert client.accepted["state"] == "queued"
    await client.send(frames(sweep(0.1))[0])  # not live yet: dropped
    await client.stop()
    ended = await client.wait_ended()
    await client.close()
    assert ended is not None and ended["state"] == "cancelled"
    assert ended["reason"] == "the talker stopped before the page went live"
    _, record = await harness.get(f"/v1/announcements/{ended['announcement_id']}")
    assert record["live"]["dropped_before_live"] == 1 and record["duration_ms"] is None
    await harness.post({}, path=f"/v1/announcements/{busy['id']}/cancel", as_="dispatcher")


async def test_oversized_frames_are_skipped_and_a_flood_closes_the_uplink(harness):
    client = await PagingClient.open(url(harness), start("operator"))
    await client.send(bytes(2 * RATE // 4))  # 250 ms of PCM in one message: over 200 ms
    for _ in range(30):  # 3 s of audio at once: faster than real time
        await client.send(bytes(2 * RATE // 10))
    await client.wait_ended()
    await client.close()
    assert client.close_code == 4400
    error = next(m for m in client.messages if m["type"] == "error")
    assert error["error"] == "too_fast"
    _, record = await harness.get(f"/v1/announcements/{client.accepted['announcement_id']}")
    assert record["live"]["decode_errors"] == 1


async def test_start_timeout_and_the_failed_attempt_limit(tmp_path):
    from broadcaster.app import Service

    config = make_config(auth={"failed_attempts_burst": 2}, hello_timeout_ms=300)
    async with Service(config, engine=EspeakEngine(max_text_chars=200)) as service:
        h = Harness(service, tmp_path)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url(h))
            msg = await ws.receive(timeout=5)  # the error, then the close
            assert json.loads(msg.data)["error"] == "start_timeout"
            await ws.receive(timeout=5)
            assert ws.close_code == 4408
        for _ in range(2):
            with pytest.raises(PagingRefused) as info:
                await PagingClient.open(url(h), start("operator", token="guess"))
            assert info.value.code == 4401
        with pytest.raises(PagingRefused) as info:  # blocked now, the right token too
            await PagingClient.open(url(h), start("operator"))
        assert info.value.code == 4429
        assert info.value.message["error"] == "too_many_failed_attempts"


async def test_a_page_cancelled_through_the_api_tells_the_talker(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client = await PagingClient.open(url(harness), start("operator"))
    ann_id = client.accepted["announcement_id"]
    try:
        await asyncio.wait_for(client.live.wait(), 10)
        talking = asyncio.create_task(client.send_paced(frames(sweep(6.0)), 20_000))
        await asyncio.sleep(0.4)
        status, _ = await harness.post({}, path=f"/v1/announcements/{ann_id}/cancel")
        assert status == 202
        ended = await client.wait_ended(10)
        talking.cancel()
    finally:
        await client.close()
    assert ended is not None and ended["state"] == "cancelled" and ended["ended_by"] == "ended"
    assert client.close_code == 1000


async def test_a_plain_get_is_a_clear_400(harness):
    async with (
        aiohttp.ClientSession() as http,
        http.get(url(harness).replace("ws", "http", 1)) as r,
    ):
        assert r.status == 400
        assert "WebSocket" in (await r.json())["message"]


async def test_a_page_the_talker_ended_can_be_replayed(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client, ended = await talk(harness, frames(sweep(1.0)))
    assert ended["replay_available"] is True
    page_id = client.accepted["announcement_id"]
    await harness.wait_receipts(page_id, ["ep-b"])
    status, refused = await harness.post(
        {"priority": "emergency"}, path=f"/v1/announcements/{page_id}/replay", as_="operator"
    )
    assert status == 403 and refused["fields"][0]["field"] == "priority"
    status, body = await harness.post(
        {"zones": ["hall"], "priority": 120},
        path=f"/v1/announcements/{page_id}/replay",
        as_="operator",
    )
    assert status == 202, body
    record = await harness.wait_final(body["id"])
    assert record["kind"] == "replay" and record["state"] in ("finished", "unconfirmed")
    assert record["priority"] == 120 and record["live"]["replay_of"] == page_id
    # The endpoint gets exactly the recording: the audio that played live (levelled),
    # without the gaps a stalled uplink may have left in the live playout.
    assert harness.service.store is not None
    kept = await harness.service.store.get_recording(page_id)
    assert kept is not None and kept.sample_rate_hz == RATE
    replayed = bytes(ep.announcements[body["id"]].pcm)
    assert replayed[: len(kept.pcm)] == kept.pcm
    assert not any(replayed[len(kept.pcm) :])  # then only the last frame's padding
    assert windowed_correlation(kept.pcm, bytes(ep.announcements[page_id].pcm)) > 0.9
    status, missing = await harness.post({}, path="/v1/announcements/nope/replay")
    assert status == 404 and missing["error"] == "not_found"


async def test_a_live_uplink_that_goes_silent_ends_the_page(harness, monkeypatch):
    from broadcaster.api import paging as uplink

    monkeypatch.setattr(uplink, "_IDLE_US", 400_000)
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    client = await PagingClient.open(url(harness), start("operator"))
    try:
        await asyncio.wait_for(client.live.wait(), 10)
        await client.send_paced(frames(sweep(0.4)), 20_000)
        ended = await client.wait_ended(10)  # then nothing, and no stop
    finally:
        await client.close()
    assert ended is not None and ended["ended_by"] == "uplink_lost"
    _, record = await harness.get(f"/v1/announcements/{ended['announcement_id']}")
    assert any("uplink was lost" in w for w in record["warnings"])


async def test_a_page_finding_its_queue_full_is_refused_and_recorded(harness):
    await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    harness.service.announcer.admission.band_limit = 1
    status, busy = await harness.post(
        {
            "text": "A long emergency message that keeps the hall busy for a while.",
            "zones": ["hall"],
            "priority": "emergency",
        },
        as_="dispatcher",
    )
    assert status == 202
    status, waiting = await harness.post({"text": "Routine.", "zones": ["hall"], "priority": 100})
    assert status == 202
    with pytest.raises(PagingRefused) as info:
        await PagingClient.open(url(harness), start("operator", priority=100))
    assert info.value.code == 4503 and info.value.message["error"] == "queue_full"
    for ann in (busy, waiting):
        await harness.post({}, path=f"/v1/announcements/{ann['id']}/cancel", as_="dispatcher")


async def test_a_pre_recorded_page_is_kept_then_sent_by_a_replay(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
    source = sweep(1.0)
    _, before = await harness.get("/v1/announcements?limit=100")
    client = await PagingClient.open(url(harness), start("operator", mode="record", priority=120))
    try:
        assert client.accepted["type"] == "recording"
        await client.send_paced(frames(source), 20_000)
        await client.stop()
        ended = await client.wait_ended()
    finally:
        await client.close()
    assert ended is not None and ended["state"] == "recorded" and ended["replay_available"]
    assert 950 <= ended["duration_ms"] <= 1000
    _, after = await harness.get("/v1/announcements?limit=100")
    assert len(after["announcements"]) == len(before["announcements"])  # nothing aired
    status, body = await harness.post(
        {}, path=f"/v1/announcements/{ended['recording_id']}/replay", as_="operator"
    )
    assert status == 202, body
    record = await harness.wait_final(body["id"])
    assert record["kind"] == "replay" and record["priority"] == 120
    assert record["zones"] == ["hall"] and record["created_by"] == "operator"
    assert windowed_correlation(source, bytes(ep.announcements[body["id"]].pcm)) > 0.9


async def test_a_recording_cut_off_is_not_kept(harness):
    client = await PagingClient.open(url(harness), start("operator", mode="record"))
    recording_id = client.accepted["recording_id"]
    await client.send_paced(frames(sweep(0.3)), 20_000)
    await client.close()  # no stop
    await asyncio.sleep(0.2)
    status, _ = await harness.post({}, path=f"/v1/announcements/{recording_id}/replay")
    assert status == 404


async def test_the_server_pings_and_a_talker_that_never_answers_is_dropped(harness, monkeypatch):
    from broadcaster.api import paging as uplink

    monkeypatch.setattr(uplink, "_HEARTBEAT_S", 0.3)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url(harness), autoping=False)  # never answers a ping
        await ws.send_str(json.dumps({"type": "start", **start("operator")}))
        kinds = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                kinds.append(msg.type)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
                continue
            kinds.append(json.loads(msg.data)["type"])
    assert "accepted" in kinds and aiohttp.WSMsgType.PING in kinds
