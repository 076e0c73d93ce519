"""Live paging without sockets: the live source's policies, the live leveler, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import numpy as np
import pytest

from broadcaster.announcements import Registry
from broadcaster.audio.live_level import LiveLeveler
from broadcaster.audio.loudness import measure
from broadcaster.audio.pacer import Pacer
from broadcaster.clock import FakeClock
from broadcaster.journal import recover, spec_to_json
from broadcaster.model import PcmBlock
from broadcaster.paging import (
    FRAME_HEADER,
    MAX_AHEAD_US,
    MAX_PAGE_US,
    QUEUE_FRAMES,
    LiveSource,
    pack_frame,
    unpack_frame,
)
from broadcaster.speech.prepared import Sound
from broadcaster.store import AnnouncementRow

from .test_announcer import InlineExecutor
from .test_durability import NOW, FakeStore, with_priority

RATE = 16000
FRAME = RATE // 50  # 20 ms
LEAD = 300_000


def block(value: int = 1000) -> bytes:
    return np.full(FRAME, value, dtype="<i2").tobytes()


def source(clock: FakeClock) -> tuple[LiveSource, Pacer]:
    src = LiveSource(clock=clock, sample_rate_hz=RATE, executor=InlineExecutor(), codec="pcm_s16le")
    pacer = Pacer(start_us=clock.monotonic_us() + LEAD, lead_us=LEAD)
    src.attach(pacer)
    return src, pacer


async def collect(src: LiveSource, out: list[PcmBlock]) -> None:
    async for b in src.blocks():
        out.append(b)


def test_frame_header_round_trip():
    data = pack_frame(7, 123_456_789, b"\x01\x02")
    assert len(data) == FRAME_HEADER.size + 2
    assert unpack_frame(data) == (7, 123_456_789, b"\x01\x02")
    with pytest.raises(ValueError, match="header"):
        unpack_frame(data[:12])


async def test_audio_before_live_is_dropped_then_played_in_order_until_the_talker_stops():
    clock = FakeClock()
    src, _ = source(clock)
    src.push(block(1))  # before the playout reads: not live yet
    out: list[PcmBlock] = []
    reader = asyncio.create_task(collect(src, out))
    await clock.advance_us(0)
    assert src.is_live and src.stats["dropped_before_live"] == 1
    for v in (2, 3, 4):
        src.push(block(v), capture_us=clock.monotonic_us())
        await clock.advance_us(20_000)
    src.end("talker")
    await clock.run_until_idle()
    await reader
    assert [np.frombuffer(b.samples, "<i2")[0] for b in out] == [2, 3, 4]
    assert src.stats["ended_by"] == "talker" and src.stats["frames"] == 4
    assert src.stats["live_ms"] == 60


async def test_a_chime_goes_first_and_the_page_is_live_when_the_playout_needs_what_follows():
    clock = FakeClock()
    src, pacer = source(clock)
    chime = Sound(bytes(2 * RATE), RATE)  # 1 s
    src.configure(before=lambda: chime, after=None, leveler=None)
    out: list[PcmBlock] = []
    reader = asyncio.create_task(collect(src, out))
    await clock.advance_us(0)
    assert len(out) == 2 and not src.is_live  # chime and pause handed out at once
    await clock.advance_us(1_199_000)
    assert not src.is_live
    await clock.advance_us(1_000)
    assert src.is_live
    assert src.live_play_at_us == pacer.play_at(1_200_000)
    src.end("talker")
    await clock.run_until_idle()
    await reader


async def test_a_full_queue_drops_the_oldest_and_a_late_burst_is_dropped_to_catch_up():
    clock = FakeClock()
    src, pacer = source(clock)
    out: list[PcmBlock] = []
    reader = asyncio.create_task(collect(src, out))
    await clock.advance_us(0)
    for _ in range(QUEUE_FRAMES + 5):  # all at once, faster than real time
        src.push(block())
    assert src.stats["dropped_overflow"] == 5
    # Nobody places them (no pacer loop here): the timeline says each is due 20 ms after
    # the one before, so the ones more than MAX_AHEAD_US ahead of now are dropped.
    src.end("talker")
    await clock.run_until_idle()
    await reader
    kept = len(out)
    assert src.stats["dropped_catch_up"] == QUEUE_FRAMES - kept
    assert pacer.send_at((kept - 1) * 20_000) - clock.monotonic_us() <= MAX_AHEAD_US


async def test_a_page_ends_at_the_time_limit():
    clock = FakeClock()
    src, _ = source(clock)
    out: list[PcmBlock] = []
    reader = asyncio.create_task(collect(src, out))
    await clock.advance_us(MAX_PAGE_US + 1)
    await clock.run_until_idle()
    await asyncio.wait_for(reader, 1)
    assert src.stats["ended_by"] == "time_limit"


def speechlike(seconds: float, level_db: float, rate: int = 48000) -> bytes:
    """Voiced-speech-like: harmonics of a wandering 110-160 Hz pitch falling off at
    6 dB per octave, in syllables of about 150 ms with pauses."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 135 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    env = np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    x = x * env
    x *= 10 ** (level_db / 20) * 32767 / np.max(np.abs(x))
    return bytes(np.clip(x, -32768, 32767).astype("<i2").tobytes())


@pytest.mark.parametrize("level_db", [-24.0, -12.0, 0.0])
def test_live_leveler_keeps_the_true_peak_and_lands_near_the_loudness_target(level_db):
    rate = 48000
    pcm = speechlike(12.0, level_db, rate)
    lv = LiveLeveler(rate, target_lufs=-16.0, true_peak_dbtp=-1.0)
    out = bytearray()
    step = 2 * 960
    for i in range(0, len(pcm), step):
        out += lv.process(pcm[i : i + step])
    out += lv.flush()
    assert len(out) == len(pcm)  # delayed, nothing lost or added
    whole = measure(bytes(out), rate)
    assert whole.true_peak_dbtp <= -1.0
    settled = measure(bytes(out[len(out) // 2 // 2 * 2 :]), rate)  # after the AGC settled
    assert abs(settled.integrated_lufs - -16.0) <= 2.0, settled


def test_live_leveler_does_not_raise_an_open_microphone_with_nobody_speaking():
    rate = 48000
    rng = np.random.default_rng(2)
    noise = (rng.normal(size=rate * 5) * 0.003 * 32767).astype("<i2").tobytes()  # ~-50 dBFS
    lv = LiveLeveler(rate)
    out = bytearray()
    for i in range(0, len(noise), 2 * 960):
        out += lv.process(noise[i : i + 2 * 960])
    assert lv.gain_db <= 1.0
    assert measure(bytes(out), rate).integrated_lufs < -40


async def test_a_live_page_found_at_a_restart_fails_whatever_its_priority():
    live = dataclasses.replace(with_priority(255), kind="live", on_preempt="drop")
    rows = [
        AnnouncementRow(
            id=f"live-{state}",
            number=1,
            spec=spec_to_json(live),
            state=state,
            created_at=NOW - timedelta(seconds=20),
            started_at=NOW - timedelta(seconds=3) if state == "playing" else None,
        )
        for state in ("queued", "playing")
    ]
    store = FakeStore(rows)
    to_play, ended = await recover(
        store,  # type: ignore[arg-type]
        registry=Registry(100),
        now=NOW,
        now_us=0,
        emergency_priority=224,
    )
    assert to_play == [] and sorted(ended) == ["live-playing", "live-queued"]
    assert store.updates["live-playing"]["state"] == "failed"
    assert "live page" in store.updates["live-playing"]["reason"]


def test_only_the_newest_recordings_are_kept(tmp_path):
    from broadcaster.paging import KEEP_RECORDINGS
    from broadcaster.store import RecordingRow, Store

    s = Store.open(tmp_path / "db.sqlite3", now=NOW)
    spec = spec_to_json(with_priority(100))
    try:
        for i in range(KEEP_RECORDINGS + 2):
            s.insert_recording(
                RecordingRow(
                    f"page-{i:02d}", spec, "op", 48000, bytes([i]) * 4, NOW + timedelta(seconds=i)
                ),
                KEEP_RECORDINGS,
            )
        assert s.get_recording("page-00") is None and s.get_recording("page-01") is None
        kept = s.get_recording("page-02")
        assert kept is not None and kept.pcm == bytes([2]) * 4 and kept.spec["text"] == spec["text"]
        assert kept.created_by == "op" and kept.sample_rate_hz == 48000
        assert s.get_recording(f"page-{KEEP_RECORDINGS + 1:02d}") is not None
    finally:
        s.close()
