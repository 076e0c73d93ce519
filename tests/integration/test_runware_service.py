"""The whole service on Runware (the local fake): announcements, fallback, cost, cache."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.app import Service
from broadcaster.config import hash_token, parse_config
from tests.fakes.runware import FakeRunware

from .conftest import TOKENS, Harness, api_tokens_config

pytestmark = pytest.mark.integration

TEXT = (
    "Attention passengers waiting for the northbound line. The 12:40 service to Greenhaven "
    "is delayed. Please stand clear of the platform edge."
)


def runware_config(fake, cache_dir, **speech):
    return parse_config(
        {
            "server": {"http_port": 0, "ws_port": 0, "shutdown_timeout_s": 2},
            "store": {"path": str(cache_dir.parent / "store.sqlite3")},
            "streaming": {"playout_delay_ms": 200},
            "speech": {
                "engine": "runware",
                "first_audio_deadline_s": 20,
                "emergency_first_audio_deadline_s": 0.8,
                **speech,
                "runware": {
                    "ws_url": fake.ws_url,
                    "rest_url": fake.rest_url,
                    "cache_dir": str(cache_dir),
                    "task_timeout_s": 10,
                    "segment_pause_ms": 100,
                },
            },
            "zones": [{"id": "hall"}],
            "api_tokens": api_tokens_config(limited_zone=None),
            "endpoints": [
                {"id": "ep-a", "token_hash": hash_token(TOKENS["ep-a"]), "zones": ["hall"]}
            ],
        },
        "runware-test",
    )


@pytest.fixture
async def fake():
    async with FakeRunware(api_key="test-key") as f:
        yield f


async def start(fake, tmp_path, **speech):
    service = Service(
        runware_config(fake, tmp_path / "cache", **speech), environ={"RUNWARE_API_KEY": "test-key"}
    )
    await service.start()
    return service, Harness(service, tmp_path)


async def test_runware_speaks_with_cost_and_segments_in_order(fake, tmp_path):
    service, h = await start(fake, tmp_path)
    try:
        fake.set_latency(base_ms=100, per_char_ms=1)
        ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        _, created = await h.post(
            {"text": TEXT, "zones": ["hall"], "voice": "vivian", "style": "Calm.", "speed": 1.5}
        )
        final = await h.wait_final(created["id"])
        assert final["state"] == "finished", final
        assert final["engine"] == "runware" and not final["warnings"]
        assert final["segments"] == final["speech_requests"] == len(fake.tasks_received) >= 2
        expected = sum(fake.cost_for(t["speech"]["text"]) for t in fake.tasks_received)
        assert final["cost_usd"] == pytest.approx(expected)
        sent = [t["speech"]["text"] for t in fake.tasks_received]
        # The provider is given the spoken text (times in words), the record shows both.
        assert final["text"] == TEXT
        assert " ".join(sent).split() == final["spoken"][0]["text"].split()
        assert "twelve forty" in final["spoken"][0]["text"]
        assert all(
            t["positivePrompt"] == "Calm."
            and t["speech"]["voice"] == "vivian"
            and t["speech"]["speed"] == 1.5
            for t in fake.tasks_received
        )
        await h.wait_receipts(created["id"], ["ep-a"])
        rec = ep.announcements[created["id"]]
        assert rec.status == "complete" and rec.gaps == 0
    finally:
        await h.close()
        await service.stop()


async def test_emergency_falls_back_to_the_local_engine_when_runware_stalls(fake, tmp_path):
    service, h = await start(fake, tmp_path)
    try:
        fake.stall_next(100)
        ep = await h.endpoint("ep-a", ["hall"], ["opus/48000"])
        _, created = await h.post(
            {"text": "Evacuate the platform now.", "zones": ["hall"], "priority": 240}
        )
        final = await h.wait_final(created["id"])
        assert final["state"] == "finished"
        assert final["engine"] == "espeak-ng (fallback from runware)"
        assert final["warnings"] == [
            "segment 1 spoken by espeak-ng: emergency: runware's audio was not ready at once"
        ]
        _, listed = await h.get("/v1/events")
        told = [e for e in listed["events"] if e["kind"] == "speech_fallback"]
        assert [(e["severity"], e["subject"]) for e in told] == [("error", created["id"])]
        # an emergency starts locally at once, not after a timeout
        assert final["first_audio_ms"] < 2000
        await h.wait_receipts(created["id"], ["ep-a"])
        assert ep.announcements[created["id"]].status == "complete"
    finally:
        await h.close()
        await service.stop()


async def test_a_failing_runware_falls_back_and_the_operator_is_told(fake, tmp_path, caplog):
    service, h = await start(fake, tmp_path)
    try:
        fake.fail_next("insufficientCredits", "Your balance is too low", count=100)
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/16000"])
        _, created = await h.post({"text": "Gate closing.", "zones": ["hall"]})
        final = await h.wait_final(created["id"])
        assert final["state"] == "finished"
        assert final["engine"] == "espeak-ng (fallback from runware)"
        assert "Your balance is too low" in final["warnings"][0]
        assert "segment 1 spoken by espeak-ng" in caplog.text
        _, listed = await h.get("/v1/events")
        told = [e for e in listed["events"] if e["kind"] == "speech_fallback"]
        assert len(told) == 1 and told[0]["severity"] == "warning"
        assert "Your balance is too low" in told[0]["detail"]
    finally:
        await h.close()
        await service.stop()


async def test_without_fallback_the_state_says_why(fake, tmp_path):
    service, h = await start(fake, tmp_path, fallback=False)
    try:
        fake.fail_next("insufficientCredits", "Your balance is too low", count=100)
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/16000"])
        _, created = await h.post({"text": "Gate closing.", "zones": ["hall"]})
        final = await h.wait_final(created["id"])
        assert final["state"] == "failed"
        assert "Your balance is too low" in final["reason"]
    finally:
        await h.close()
        await service.stop()


async def test_cache_across_a_restart_of_the_service(fake, tmp_path):
    for run in range(2):
        service, h = await start(fake, tmp_path)
        try:
            await h.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
            _, created = await h.post({"text": "Mind the gap. Thank you.", "zones": ["hall"]})
            final = await h.wait_final(created["id"])
            assert final["state"] == "finished"
            if run == 0:
                first_syntheses = fake.syntheses
                assert final["cache_hits"] == 0 and final["speech_requests"] >= 1
            else:
                assert fake.syntheses == first_syntheses  # nothing synthesized again
                assert final["cache_hits"] == final["segments"] and final["speech_requests"] == 0
                assert final["cost_usd"] is None
        finally:
            await h.close()
            await service.stop()


async def test_seed_template_is_one_request_exactly_as_in_the_seed(fake, tmp_path):
    import json
    from pathlib import Path

    from broadcaster.config import load_config

    root = Path(__file__).resolve().parents[2]
    demo = load_config(root / "configs" / "demo.toml")
    cfg = runware_config(fake, tmp_path / "cache")
    # (no warm-up: this counts the announcement's own request; test_warm_up.py warms)
    runware = cfg.speech.runware.model_copy(update={"warm_up": False})
    speech = cfg.speech.model_copy(update={"runware": runware})
    cfg = cfg.model_copy(update={"templates": demo.templates, "speech": speech})
    service = Service(cfg, environ={"RUNWARE_API_KEY": "test-key"})
    await service.start()
    h = Harness(service, tmp_path)
    try:
        await h.endpoint("ep-a", ["hall"], ["pcm_s16le/8000"])
        status, created = await h.post({"template": "midnight-train-delay", "zones": ["hall"]})
        assert status == 202, created
        assert created["template"] == "midnight-train-delay" and created["voice"] == "vivian"
        for _ in range(500):  # until the request has been sent, then stop the playout
            if fake.tasks_received:
                break
            await asyncio.sleep(0.01)
        service.announcer.cancel(created["id"], "test done")
        await h.wait_final(created["id"])
        seeds = {
            s["name"]: s for s in json.loads((root / "tests/unit/seed_requests.json").read_text())
        }
        seed = seeds["midnight-train-delay"]
        [sent] = fake.tasks_received
        for key in ("model", "positivePrompt", "speech", "settings"):
            assert sent[key] == seed[key], key
    finally:
        await h.close()
        await service.stop()
