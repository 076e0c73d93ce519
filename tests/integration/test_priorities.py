"""Priorities through real servers and endpoints: preemption, stacking, flush."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.integration

ROUTINE = " ".join(f"Routine notice number {i} for the hall." for i in range(4))


async def wait_chunks(ep, ann_id, n=10):
    for _ in range(500):
        rec = ep.announcements.get(ann_id)
        if rec and rec.chunks >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("audio never started")


async def test_emergency_preempts_routine_in_its_zone_only_and_routine_is_replayed(harness):
    hall = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    gate = await harness.endpoint("ep-d", ["gate"], ["pcm_s16le/16000"])
    _, routine_hall = await harness.post({"text": ROUTINE, "zones": ["hall"], "speed": 1.5})
    _, routine_gate = await harness.post({"text": "Gate notice.", "zones": ["gate"], "speed": 1.5})
    await wait_chunks(hall, routine_hall["id"])
    await wait_chunks(gate, routine_gate["id"], 3)
    status, emergency = await harness.post(
        {"text": "Evacuate the hall.", "zones": ["hall"], "priority": "emergency"}
    )
    assert status == 202 and emergency["priority"] == 240
    final_emergency = await harness.wait_final(emergency["id"])
    assert final_emergency["state"] == "finished"
    # the routine announcement in the hall was stopped, flushed and replayed afterwards
    final_routine = await harness.wait_final(routine_hall["id"], timeout_s=60)
    assert final_routine["state"] == "finished" and final_routine["preemptions"] == 1
    assert "preempted by announcement" in final_routine["warnings"][0]
    # the gate was not touched
    final_gate = await harness.wait_final(routine_gate["id"])
    assert final_gate["state"] == "finished" and final_gate["preemptions"] == 0
    started = [e for e in hall.events if e["type"] == "announcement_started"]
    cancelled = [e for e in hall.events if e["type"] == "announcement_cancelled"]
    assert [e["announcement_id"] for e in started] == [
        routine_hall["id"],
        emergency["id"],
        routine_hall["id"],
    ]
    assert cancelled[0]["preempted_by"] == emergency["id"]
    # the emergency started right away, not after the routine one
    assert started[1]["start_at_us"] < started[0]["start_at_us"] + 5_000_000
    assert all(e["type"] != "announcement_cancelled" for e in gate.events)


async def test_drop_policy_and_cancel_flush_the_speaker(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["opus/48000"])
    _, low = await harness.post({"text": ROUTINE, "zones": ["hall"], "on_preempt": "drop"})
    await wait_chunks(ep, low["id"])
    rec_before = ep.announcements[low["id"]]
    _, high = await harness.post(
        {"text": "Operational message.", "zones": ["hall"], "priority": 200}
    )
    final_low = await harness.wait_final(low["id"])
    assert final_low["state"] == "cancelled" and "dropped by its policy" in final_low["reason"]
    assert final_low["endpoints"]["ep-b"]["state"] == "preempted"
    assert rec_before.status == "cancelled" and rec_before.flushed_chunks > 0  # buffer dropped
    await harness.wait_final(high["id"])


async def test_late_joiner_hears_the_rest_from_the_live_point(harness):
    first = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/16000"])
    _, created = await harness.post({"text": ROUTINE, "zones": ["hall"], "speed": 1.5})
    await wait_chunks(first, created["id"], 60)
    late = await harness.endpoint("ep-c", ["hall"], ["pcm_s16le/16000"])
    final = await harness.wait_final(created["id"])
    await harness.wait_receipts(created["id"], ["ep-b", "ep-c"])
    whole, rest = first.announcements[created["id"]], late.announcements[created["id"]]
    assert whole.status == "complete" and whole.seqs[0] == 0
    assert rest.status == "complete" and rest.joined_late and rest.gaps == 0
    # it started from what was still to play, not from the beginning, and got to the end
    assert rest.seqs[0] > 0 and rest.seqs[-1] == whole.seqs[-1]
    assert rest.late_chunks == 0  # nothing stale was sent to it
    assert final["endpoints"]["ep-c"]["late_join"] is True


async def test_a_stalled_endpoint_does_not_delay_the_others(tmp_path):
    import json

    from websockets.asyncio.client import connect

    from broadcaster.app import Service
    from broadcaster.speech.espeak import EspeakEngine

    from .conftest import Harness, make_config

    # small queue and lag limit so the stalled endpoint is found out within the test
    cfg = make_config(
        endpoint_queue_ms=300,
        lagging_disconnect_ms=1500,
        heartbeat_interval_ms=1000,
        heartbeat_timeout_ms=3000,
    )
    async with Service(cfg, engine=EspeakEngine()) as svc:
        h = Harness(svc, tmp_path)
        try:
            good = await h.endpoint("ep-b", ["hall"], ["pcm_s16le/48000"])
            stalled = await connect(h.ws_url, ping_interval=None, max_size=None)
            await stalled.send(
                json.dumps(
                    {
                        "type": "hello",
                        "protocol": 1,
                        "endpoint_id": "ep-c",
                        "token": "token-c",
                        "zones": ["hall"],
                        "formats": [{"codec": "pcm_s16le", "sample_rate_hz": 48000}],
                    }
                )
            )
            assert json.loads(await stalled.recv())["type"] == "welcome"
            stalled.transport.pause_reading()  # a box that hangs: it never reads again
            _, created = await h.post({"text": ROUTINE * 2, "zones": ["hall"], "speed": 2})
            final = await h.wait_final(created["id"], timeout_s=90)
            assert final["state"] == "finished"
            await h.wait_receipts(created["id"], ["ep-b"])
            rec = good.announcements[created["id"]]
            assert rec.status == "complete" and rec.late_chunks == 0 and rec.gaps == 0
            # it is disconnected (lagging, or silent past the heartbeat timeout) and
            # reported faulty; its delivery did not hold anyone back
            for _ in range(100):
                _, eps = await h.get("/v1/endpoints")
                c = next(e for e in eps["endpoints"] if e["endpoint_id"] == "ep-c")
                if not c["connected"]:
                    break
                await asyncio.sleep(0.1)
            assert not c["connected"] and c["supervision"]["status"] == "faulty"
            stalled.transport.abort()
        finally:
            await h.close()
