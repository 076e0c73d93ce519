"""The whole pipeline: HTTP API → espeak → PyAV → pacer → hub → WebSocket → reference endpoint."""

from __future__ import annotations

import asyncio
import wave

import pytest

from broadcaster.model import SpeechRequest

pytestmark = pytest.mark.integration

TEXT = (
    "Attention passengers. The 12:40 service to Greenhaven is delayed by about 18 minutes. "
    "Please stand clear of the platform edge."
)


async def engine_duration_us(harness, text: str) -> int:
    """Synthesize the same text straight from the engine: the audio the endpoints should get."""
    total = 0
    engine = harness.service.engine
    from broadcaster.speech.segmenter import split_text

    cfg = harness.service.config
    for seg in split_text(text, engine.max_text_chars, cfg.speech.first_segment_max_chars):
        async for block in engine.synthesize(
            SpeechRequest(text=seg, voice="ryan", language="English", speed=1.0)
        ):
            total += block.duration_us
    return total


async def test_one_announcement_reaches_endpoints_of_three_formats(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["opus/48000"])
    b = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    c = await harness.endpoint("ep-c", ["hall"], ["pcm_mulaw/8000"])
    status, created = await harness.post({"text": TEXT, "zones": ["hall"]})
    assert status == 202 and created["state"] in ("queued", "playing")
    final = await harness.wait_final(created["id"])
    assert final["state"] == "finished", final
    assert sorted(final["formats"]) == ["opus/48000", "pcm_mulaw/8000", "pcm_s16le/16000"]
    final = await harness.wait_receipts(created["id"], ["ep-a", "ep-b", "ep-c"])

    expected_us = await engine_duration_us(harness, TEXT)
    assert expected_us > 3_000_000
    for ep in (a, b, c):
        rec = ep.announcements[created["id"]]
        frame_us = rec.format.frame_ms * 1000
        assert rec.status == "complete"
        assert rec.seqs == list(range(rec.chunks)), "chunks out of order or missing"
        assert rec.gaps == 0
        # Contiguous play-at times: the only holes in the timeline are the ones the
        # server flagged as discontinuities and counted as underruns in the record
        # (on a loaded machine synthesis can fall behind the playout; the server must
        # say so, never leave an unexplained hole).
        holes_us = 0
        for i in range(1, rec.chunks):
            step = rec.play_at_us[i] - (rec.play_at_us[i - 1] + rec.durations_us[i - 1])
            if i in rec.discontinuities:
                assert step > 0
                holes_us += step
            else:
                assert step == 0, (ep.endpoint_id, i, step)
        assert len(rec.discontinuities) == final["underruns"]
        decoded_us = len(rec.pcm) // 2 * 1_000_000 // rec.format.sample_rate_hz
        heard_us = decoded_us - holes_us  # the reference endpoint fills holes with silence
        assert abs(heard_us - expected_us) <= frame_us, (ep.endpoint_id, decoded_us, expected_us)
        # every chunk arrived before its play-at time (clock offset estimated over the socket)
        assert rec.late_chunks == 0
        with wave.open(str(rec.path), "rb") as w:
            assert w.getframerate() == rec.format.sample_rate_hz
            assert w.getnframes() == len(rec.pcm) // 2
        receipt = final["endpoints"][ep.endpoint_id]["receipt"]
        assert receipt["status"] == "complete" and receipt["chunks"] == rec.chunks
        server = final["endpoints"][ep.endpoint_id]
        assert server["chunks_sent"] == rec.chunks and server["dropped_stale"] == 0


async def test_same_format_endpoints_get_identical_bytes(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["opus/48000"])
    b = await harness.endpoint("ep-b", ["hall"], ["opus/48000"])
    _, created = await harness.post({"text": "Platform two.", "zones": ["hall"]})
    await harness.wait_final(created["id"])
    await harness.wait_receipts(created["id"], ["ep-a", "ep-b"])
    ra, rb = a.announcements[created["id"]], b.announcements[created["id"]]
    assert ra.chunks == rb.chunks > 0
    assert ra.pcm == rb.pcm


async def test_zones_are_kept_apart(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
    d = await harness.endpoint("ep-d", ["gate"], ["pcm_s16le/8000"])
    _, one = await harness.post({"text": "Hall only.", "zones": ["hall"]})
    _, two = await harness.post({"text": "Gate only.", "zones": ["gate"]})
    await harness.wait_final(one["id"])
    await harness.wait_final(two["id"])
    await harness.wait_receipts(one["id"], ["ep-a"])
    await harness.wait_receipts(two["id"], ["ep-d"])
    assert set(a.announcements) == {one["id"]}
    assert set(d.announcements) == {two["id"]}


async def test_long_text_is_split_and_played_whole(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
    sentence = "Passengers for the coastal route should follow the departure screens. "
    text = sentence * 8  # longer than one engine request (the harness engine takes 200)
    status, created = await harness.post({"text": text, "zones": ["hall"], "speed": 4})
    assert status == 202
    final = await harness.wait_final(created["id"], timeout_s=120)
    assert final["state"] == "finished"
    assert final["segments"] > 1
    await harness.wait_receipts(created["id"], ["ep-a"])
    rec = a.announcements[created["id"]]
    assert rec.status == "complete" and rec.gaps == 0


async def test_announcements_in_one_zone_play_one_after_another(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
    _, first = await harness.post({"text": "First announcement.", "zones": ["hall"]})
    _, second = await harness.post({"text": "Second announcement.", "zones": ["hall"]})
    f1 = await harness.wait_final(first["id"])
    f2 = await harness.wait_final(second["id"])
    assert f1["state"] == f2["state"] == "finished"
    await harness.wait_receipts(second["id"], ["ep-a"])
    r1, r2 = a.announcements[first["id"]], a.announcements[second["id"]]
    end1 = r1.play_at_us[-1] + r1.durations_us[-1]
    assert r2.play_at_us[0] >= end1  # no overlap in one zone


async def test_cancel_reaches_the_endpoint(harness):
    a = await harness.endpoint("ep-a", ["hall"], ["opus/48000"])
    _, created = await harness.post({"text": TEXT * 3, "zones": ["hall"]})
    for _ in range(200):
        _, body = await harness.get(f"/v1/announcements/{created['id']}")
        if body["chunks"] > 10:
            break
        await asyncio.sleep(0.02)
    from aiohttp import ClientSession

    from .conftest import bearer

    async with (
        ClientSession(headers=bearer()) as http,
        http.post(f"{harness.api}/v1/announcements/{created['id']}/cancel") as r,
    ):
        assert r.status == 202
    final = await harness.wait_final(created["id"])
    assert final["state"] == "cancelled" and final["reason"] == "cancelled by operator"
    await harness.wait_receipts(created["id"], ["ep-a"])
    rec = a.announcements[created["id"]]
    assert rec.status == "cancelled"
    assert final["endpoints"]["ep-a"]["state"] == "cancelled"


async def test_no_endpoint_in_zone_fails_with_a_reason(harness):
    _, created = await harness.post({"text": "Anyone there?", "zones": ["empty"]})
    final = await harness.wait_final(created["id"])
    assert final["state"] == "failed"
    assert "no endpoint connected in zone(s) empty" in final["reason"]
