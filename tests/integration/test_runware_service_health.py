"""The service on Runware (the local fake) under connection faults: health tells the
truth, nothing is lost after a drop, and every task billed is in the record."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from tests.integration.test_runware_service import TEXT, fake, start  # noqa: F401

pytestmark = pytest.mark.integration


def speech_reasons(body):
    return [r["reason"] for r in body["reasons"] if r.get("check") == "speech"]


async def wait_for(pred, timeout_s=5.0):
    for _ in range(int(timeout_s / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_health_and_readiness_name_a_refused_key(fake, tmp_path):  # noqa: F811
    fake.auth_fail = True  # the "wrong key" fault: every authentication is refused
    service, h = await start(fake, tmp_path)
    try:
        client = service.engine.client  # type: ignore[attr-defined]
        await wait_for(lambda: client.health.authenticated is False)
        _, health = await h.get("/healthz", as_=None)
        assert health["status"] == "speech_failing"
        sp = health["speech"]
        assert sp["engine"] == "runware" and sp["connected"] is False
        assert sp["authenticated"] is False
        assert "Invalid API key" in sp["last_error"] and sp["last_error_at"]
        status, ready = await h.get("/readyz", as_=None)
        assert status == 503
        [reason] = speech_reasons(ready)
        assert reason.startswith("runware: authentication failed (")
        assert "Invalid API key" in reason and f"since {sp['last_error_at']}" in reason
        _, listed = await h.get("/v1/events")
        faults = [e for e in listed["events"] if e["kind"] == "runware_fault"]
        assert len(faults) == 1 and faults[0]["subject"] == "speech"
    finally:
        await h.close()
        await service.stop()


async def test_an_unreachable_websocket_uses_rest_and_says_so(fake, tmp_path):  # noqa: F811
    fake.refuse_websocket = True
    service, h = await start(fake, tmp_path)
    try:
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        _, created = await h.post({"text": "Gate closing.", "zones": ["hall"]})
        final = await h.wait_final(created["id"])
        assert final["state"] == "finished" and final["engine"] == "runware"
        assert {t["transport"] for t in fake.tasks_received} == {"rest"}
        _, health = await h.get("/healthz", as_=None)
        assert health["status"] == "ok"
        assert health["speech"]["rest_fallback"].startswith("WebSocket unavailable")
        assert health["speech"]["connected"] is False
        _, ready = await h.get("/readyz", as_=None)
        assert any("not connected: WebSocket unavailable" in r for r in speech_reasons(ready))
    finally:
        await h.close()
        await service.stop()


async def test_a_drop_mid_announcement_loses_no_task_and_bills_each_once(fake, tmp_path):  # noqa: F811
    # Fallback off: nothing hides a lost task. The socket resets after the first task;
    # the segments written behind it are found unknown and sent again at once.
    service, h = await start(fake, tmp_path, fallback=False)
    try:
        fake.set_latency(base_ms=150, per_char_ms=1)
        fake.drop_after_tasks(1)
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        _, created = await h.post({"text": TEXT, "zones": ["hall"]})
        final = await h.wait_final(created["id"], timeout_s=25)
        assert final["state"] == "finished", final
        assert final["engine"] == "runware"
        assert final["warnings"] == [  # the record names the fault
            "runware connection dropped: a segment never reached the server "
            "and was sent again after the session resumed"
        ]
        assert fake.drops == 1
        uuids = [t["taskUUID"] for t in fake.tasks_received]
        assert len(uuids) == len(set(uuids)) == final["segments"] >= 2  # none lost or doubled
        assert final["speech_tasks_billed"] == final["speech_tasks_heard"] == len(uuids)
        exact = sum(
            (Decimal(repr(fake.cost_for(t["speech"]["text"]))) for t in fake.tasks_received),
            Decimal(0),
        )
        assert Decimal(repr(final["cost_usd"])) == exact
        # the announcement did not wait for the per-attempt timeout (10 s here)
        assert final["first_audio_ms"] < 5000
    finally:
        await h.close()
        await service.stop()


async def test_a_superseded_task_is_billed_in_the_record_and_not_heard(fake, tmp_path):  # noqa: F811
    # Runware answers after the emergency deadline: espeak speaks instead, and the task
    # Runware still made (and billed) is in the record, with its cost, as not heard.
    service, h = await start(fake, tmp_path)
    try:
        fake.set_latency(base_ms=1500)
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        text = "Evacuate the platform now. Leave by the nearest exit and follow the staff."
        _, created = await h.post({"text": text, "zones": ["hall"], "priority": 240})
        final = await h.wait_final(created["id"])
        assert "fallback from runware" in final["engine"], final
        sent = fake.tasks_received
        assert sent and final["speech_tasks_billed"] == len(sent)
        # at least the first segment's task was superseded by the local engine
        assert final["speech_tasks_heard"] < final["speech_tasks_billed"]
        exact = sum((Decimal(repr(fake.cost_for(t["speech"]["text"]))) for t in sent), Decimal(0))
        assert Decimal(repr(final["cost_usd"])) == exact
    finally:
        await h.close()
        await service.stop()
