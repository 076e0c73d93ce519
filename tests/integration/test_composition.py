"""Call composition and loudness through the real pipeline."""

from __future__ import annotations

import pytest

from broadcaster.audio.chimes import chime_duration_s
from broadcaster.audio.loudness import measure

pytestmark = pytest.mark.integration


async def received(harness, ep, body):
    status, created = await harness.post(body)
    assert status == 202, created
    final = await harness.wait_final(created["id"])
    assert final["state"] == "finished", final
    await harness.wait_receipts(created["id"], [ep.endpoint_id])
    return final, ep.announcements[created["id"]]


async def test_chimes_repeats_and_languages_are_one_announcement_at_one_level(harness):
    ep = await harness.endpoint("ep-b", ["hall"], ["pcm_s16le/24000"])
    # the same call decoded by an Opus and a mu-law endpoint (README: <= -1 dBTP in every
    # format as decoded; the reference endpoint's s16 output would clip only at 0 dBFS)
    opus = await harness.endpoint("ep-c", ["hall"], ["opus/48000"])
    mulaw = await harness.endpoint("ep-a", ["hall"], ["pcm_mulaw/8000"])
    _, plain = await received(
        harness, ep, {"text": "Platform two.", "zones": ["hall"], "speed": 1.5}
    )
    final, rec = await received(
        harness,
        ep,
        {
            "text": "Platform two.",
            "zones": ["hall"],
            "speed": 1.5,
            "chime_before": "three-tone",
            "chime_after": "two-tone",
            "repeats": 1,
            "repeat_gap_ms": 500,
            "also": [{"language": "German", "text": "Gleis zwei."}],
        },
    )
    assert rec.status == "complete" and rec.gaps == 0
    assert final["repeats"] == 1 and final["also"] == [
        {"language": "German", "text": "Gleis zwei."}
    ]
    chimes_s = chime_duration_s("three-tone") + chime_duration_s("two-tone")
    # one stream holds: chime, speech (English, German) twice with a gap, chime
    assert rec.duration_ms / 1000 > chimes_s + 2 * plain.duration_ms / 1000 + 0.5
    # everything plays at one loudness (EBU R128 target -16 LUFS)
    level = measure(bytes(rec.pcm), 24000)
    assert -17.5 < level.integrated_lufs < -14.5, level
    assert level.true_peak_dbtp <= -1.0
    await harness.wait_receipts(final["id"], ["ep-c", "ep-a"])
    for other, rate in [(opus, 48000), (mulaw, 8000)]:
        decoded = measure(bytes(other.announcements[final["id"]].pcm), rate)
        assert -17.5 < decoded.integrated_lufs < -14.5, decoded
        assert decoded.true_peak_dbtp <= -1.0, decoded
    plain_level = measure(bytes(plain.pcm), 24000)
    assert -17.5 < plain_level.integrated_lufs < -14.5, plain_level
