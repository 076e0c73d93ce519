"""No hole longer than the segment pause, whatever Runware does (the fake, with faults).

Each test plays a multi-segment announcement through the real service with Runware
faked locally, and measures the longest run of silence inside the audio the
reference endpoint wrote (its WAV keeps the timeline: a late chunk becomes silence
of the same length). The bound is the configured segment pause plus TOLERANCE_MS,
the silence the fake's own speech (espeak-ng, rendered by the fake) leaves at the
start and end of every take, which the pause is added to.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from broadcaster.app import Service
from broadcaster.config import TemplateConfig
from tests.fakes.runware import FakeRunware

from .conftest import Harness
from .test_runware_service import runware_config

pytestmark = pytest.mark.integration

#: Five segments of Runware speech at segment_max_chars = 60.
TEXT = (
    "Platform four. The train to Greenhaven is delayed. It will now leave at "
    "twelve forty from platform six. Please mind the gap when boarding. "
    "We apologise for the delay to your journey."
)
PAUSE_MS = 250
#: Silence at the edges of each take of the fake's engine, beside the pause (measured
#: with no fault: see test_without_faults_the_longest_silence_is_the_pause).
TOLERANCE_MS = 400
THRESHOLD = 200  # |sample| below this (about -44 dBFS) counts as silence


def longest_hole_ms(path: Path) -> float:
    """The longest run of silence inside the recording, leading/trailing silence excluded."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) >= THRESHOLD)
    if len(loud) < 2:
        return 0.0
    return float(np.diff(loud).max() - 1) * 1000 / rate


@pytest.fixture
async def fake():
    async with FakeRunware(api_key="test-key") as f:
        yield f


async def start(fake, tmp_path, *, fallback=True, templates=(), **runware):
    cfg = runware_config(fake, tmp_path / "cache", fallback=fallback)
    cfg = cfg.model_copy(update={"templates": list(templates)})
    rw = cfg.speech.runware.model_copy(
        update={
            "segment_max_chars": 60,
            "segment_pause_ms": PAUSE_MS,
            "task_timeout_s": 3,
            "max_attempts": 2,
            "backoff_initial_s": 0.1,
            **runware,
        }
    )
    sp = cfg.speech.model_copy(
        update={"runware": rw, "first_audio_deadline_s": 6, "first_segment_max_chars": 40}
    )
    service = Service(
        cfg.model_copy(update={"speech": sp}), environ={"RUNWARE_API_KEY": "test-key"}
    )
    await service.start()
    return service, Harness(service, tmp_path)


async def play(h: Harness, text: str = TEXT, **extra) -> tuple[dict, Path, int]:
    """Final record, the endpoint's WAV and when its first chunk played (after the POST)."""
    ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
    asked_us = h.service.clock.monotonic_us()
    status, created = await h.post({"text": text, "zones": ["hall"], **extra})
    assert status == 202, created
    final = await h.wait_final(created["id"])
    if final["state"] == "failed":
        return final, Path(), 0
    await h.wait_receipts(created["id"], ["ep-a"])
    rec = ep.announcements[created["id"]]
    assert rec.path is not None
    return final, rec.path, rec.play_at_us[0] - asked_us


async def run_fault(fake, tmp_path, fault, *, fallback=True):
    service, h = await start(fake, tmp_path, fallback=fallback)
    try:
        fake.set_latency(base_ms=100, per_char_ms=1)
        fault(fake)
        final, wav, _ = await play(h)
        return final, longest_hole_ms(wav) if final["state"] != "failed" else None
    finally:
        await h.close()
        await service.stop()


async def test_without_faults_the_longest_silence_is_the_pause(fake, tmp_path):
    final, hole = await run_fault(fake, tmp_path, lambda f: None)
    assert final["engine"] == "runware" and final["segments"] >= 4, final
    assert PAUSE_MS <= hole <= PAUSE_MS + TOLERANCE_MS, hole


FAULTS = {
    "stall every 2nd task": lambda f: f.stall_every(2),
    "fail every 2nd task (retryable)": lambda f: f.fail_every(2),
    "rate limit every 2nd task": lambda f: f.rate_limit_every(2),
    "slow: 400 ms + 40 ms per character": lambda f: f.set_latency(400, 40),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
async def test_no_hole_longer_than_the_pause_whatever_runware_does(fake, tmp_path, fault):
    final, hole = await run_fault(fake, tmp_path, FAULTS[fault])
    assert final["state"] == "finished", final
    assert hole <= PAUSE_MS + TOLERANCE_MS, (hole, final["engine"], final["warnings"])
    # a fault costs the segments it hits, not the rest: later ones are Runware's again
    assert final["engine"].startswith("runware"), final["engine"]
    assert all(w.startswith("segment ") for w in final["warnings"]), final["warnings"]


async def test_no_hole_when_the_connection_drops_mid_announcement(fake, tmp_path):
    # The link is reset (no close frame) after the 2nd task: the client resumes and
    # resends only what the server never got, so Runware still speaks it all.
    final, hole = await run_fault(fake, tmp_path, lambda f: f.drop_after_tasks(2))
    assert final["state"] == "finished", final
    assert hole <= PAUSE_MS + TOLERANCE_MS, (hole, final["engine"], final["warnings"])


async def test_no_hole_when_the_key_is_refused(fake, tmp_path):
    fake.auth_fail = True  # before the service starts: Runware never accepts a task
    service, h = await start(fake, tmp_path)
    try:
        fake.set_latency(base_ms=100, per_char_ms=1)
        final, wav, _ = await play(h)
    finally:
        await h.close()
        await service.stop()
    assert final["state"] == "finished", final
    assert "espeak-ng" in final["engine"], final["engine"]
    hole = longest_hole_ms(wav)
    assert hole <= PAUSE_MS + TOLERANCE_MS, (hole, final["engine"], final["warnings"])


EMERGENCY = (
    "Evacuate platform two now. Leave by the north stairs and follow the staff. "
    "Do not use the lifts. Move away from the platform edge."
)


async def test_an_emergency_starts_locally_within_2_s_and_returns_to_runware(fake, tmp_path):
    service, h = await start(fake, tmp_path)
    try:
        fake.set_latency(base_ms=400, per_char_ms=4)
        final, wav, first_us = await play(h, EMERGENCY, priority=240)
        assert first_us < 2_000_000, first_us  # first audio at the endpoint
        assert final["state"] == "finished", final
        # segment 1 locally at once; Runware's audio for the rest arrived in time
        assert final["engine"].startswith("runware (1 of "), final["engine"]
        assert final["warnings"][0] == (
            "segment 1 spoken by espeak-ng: emergency: runware's audio was not ready at once"
        )
        assert longest_hole_ms(wav) <= PAUSE_MS + TOLERANCE_MS
    finally:
        await h.close()
        await service.stop()


async def test_a_bulletin_spoken_whole_plays_locally_when_an_emergency_and_says_why(fake, tmp_path):
    bulletin = TemplateConfig(name="bulletin", text=EMERGENCY, split=False, priority=240)
    service, h = await start(fake, tmp_path, templates=[bulletin])
    try:
        fake.set_latency(base_ms=400, per_char_ms=4)
        ep = await h.endpoint("ep-a", ["hall"], ["pcm_s16le/24000"])
        asked_us = service.clock.monotonic_us()
        status, created = await h.post({"template": "bulletin", "zones": ["hall"]})
        assert status == 202, created
        final = await h.wait_final(created["id"])
        assert final["segments"] == 1 and final["state"] == "finished", final
        assert final["engine"] == "espeak-ng (fallback from runware)"
        assert final["warnings"] == [
            "segment 1 spoken by espeak-ng: emergency: runware's audio was not ready at once"
        ]
        await h.wait_receipts(created["id"], ["ep-a"])
        assert ep.announcements[created["id"]].play_at_us[0] - asked_us < 2_000_000
    finally:
        await h.close()
        await service.stop()


NAMED = {
    "rateLimitExceeded": lambda f: f.rate_limit_every(1),
    "serverError": lambda f: f.fail_every(1),
    "timeout": lambda f: f.stall_every(1),
}


@pytest.mark.parametrize("fault", NAMED, ids=list(NAMED))
async def test_without_fallback_the_record_names_the_fault(fake, tmp_path, fault):
    final, _ = await run_fault(fake, tmp_path, NAMED[fault], fallback=False)
    assert final["state"] == "failed", final
    assert fault in final["reason"], final
