"""The reference endpoint's clock arithmetic as docs/protocol.md §3 states it."""

from __future__ import annotations

import asyncio

from broadcaster.clock import FakeClock
from broadcaster.endpoint import ClockEstimate, ReferenceEndpoint
from broadcaster.model import StreamFormat
from broadcaster.streaming import wire


def test_the_offset_midpoint_is_floor_division_also_below_zero() -> None:
    """§3.2: ``offset = floor((min(up) + max(down)) / 2)``; truncation toward zero would
    give -9 here, floor gives -10."""
    est = ClockEstimate()
    est.update(sent_us=10, server_us=2, received_us=13)  # up = -8, down = -11
    assert est.offset_us == -10
    est = ClockEstimate()
    est.update(sent_us=0, server_us=8, received_us=3)  # up = 8, down = 5
    assert est.offset_us == 6
    # the worked example of §12.1
    assert (782112939 + 782112649) // 2 == 782112794


async def test_a_chunk_too_far_ahead_restarts_the_clock_estimate() -> None:
    """§3.4: a chunk more than playout delay + 500 ms ahead means a wrong estimate."""
    clock = FakeClock(start_us=5_000_000)
    ep = ReferenceEndpoint(
        url="ws://127.0.0.1:1/v1/endpoint",
        endpoint_id="x",
        token="t",
        zones=["z"],
        formats=["pcm_s16le/16000"],
        out_dir=None,
        clock=clock,
    )
    fmt = wire.ServerFormatSpec(codec="pcm_s16le", sample_rate_hz=16000, channels=1, frame_ms=20)
    ep.welcome = wire.Welcome(
        session_id="s",
        endpoint_id="x",
        zones=["z"],
        format=fmt,
        server_time_us=0,
        settings=wire.Settings(
            heartbeat_interval_ms=3000,
            heartbeat_timeout_ms=10000,
            playout_delay_ms=300,
            max_message_bytes=65536,
        ),
    )
    ep.clock_estimate.update(sent_us=5_000_000, server_us=5_000_000, received_us=5_000_000)
    started = wire.AnnouncementStarted(
        announcement_id="a",
        stream=1,
        text="t",
        priority=100,
        zones=["z"],
        format=fmt,
        start_at_us=0,
        expected_duration_ms=1000,
    )
    ep._on_started(started)
    payload = bytes(640)
    limit = 300_000 + wire.RESYNC_MARGIN_US

    def frame(seq: int, ahead_us: int) -> bytes:
        return wire.pack_audio_frame(
            stream=1, seq=seq, play_at_us=5_000_000 + ahead_us, duration_us=20_000, payload=payload
        )

    ep._on_audio(frame(0, limit))  # exactly at the limit: fine
    assert ep.resyncs == 0 and ep.clock_estimate.offset_us == 0
    ep._on_audio(frame(1, limit + 1))
    assert ep.resyncs == 1 and ep.clock_estimate.offset_us is None
    assert StreamFormat.parse("pcm_s16le/16000").samples_per_frame * 2 == len(payload)
    await asyncio.sleep(0)
