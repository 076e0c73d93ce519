"""The playout loop under a FakeClock with a fake engine: exact deadlines, no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest

from broadcaster.announcements import Registry
from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings
from broadcaster.clock import FakeClock
from broadcaster.model import AnnouncementSpec, PcmBlock, SpeechRequest, StreamFormat
from broadcaster.speech.engine import SpeechError
from broadcaster.streaming import wire
from broadcaster.streaming.hub import EndpointLink, Hub, Outbox

RATE = 16000
LEAD_US = 300_000


class InlineExecutor(Executor):
    """Runs the transcoder at once, so fake time never races a real thread."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


class FakeEngine:
    """Canned PCM: ``seconds`` of a tone in 100 ms blocks, optionally stalling or failing."""

    name = "fake"
    max_text_chars = 1000
    concurrency = 1

    def __init__(
        self,
        clock: FakeClock,
        seconds: float,
        *,
        stall_at_s: float | None = None,
        stall_us: int = 0,
        fail_at_s: float | None = None,
        stall_request: int = 0,
    ) -> None:
        self.stall_request = stall_request  # which request (segment) stalls
        self.clock = clock
        self.seconds = seconds
        self.stall_at_s = stall_at_s
        self.stall_us = stall_us
        self.fail_at_s = fail_at_s
        self.requests: list[SpeechRequest] = []

    async def synthesize(self, request: SpeechRequest, meta=None) -> AsyncIterator[PcmBlock]:
        self.requests.append(request)
        block = int(RATE * 0.1)
        t = np.arange(block) / RATE
        pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
        for i in range(round(self.seconds * 10)):
            stalls = len(self.requests) - 1 == self.stall_request
            if stalls and self.stall_at_s is not None and i == round(self.stall_at_s * 10):
                await self.clock.sleep_us(self.stall_us)
            if self.fail_at_s is not None and i == round(self.fail_at_s * 10):
                raise SpeechError("engine fell over")
            yield PcmBlock(pcm, RATE)

    async def aclose(self) -> None:
        pass


class RecordingOutbox(Outbox):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(max_audio_us=10_000_000)
        self.clock = clock
        self.audio: list[tuple[int, wire.AudioHeader]] = []  # (time queued, header)
        self.control: list[dict[str, Any]] = []

    def put_audio(self, frame: bytes, **kw: Any) -> None:
        header, _ = wire.unpack_audio_frame(frame)
        self.audio.append((self.clock.monotonic_us(), header))
        super().put_audio(frame, **kw)

    def put_control(self, text: str) -> None:
        self.control.append(wire.parse_server_message(text).model_dump())
        super().put_control(text)


def setup(engine_factory, fmt="pcm_s16le/16000"):
    clock = FakeClock()
    engine = engine_factory(clock)
    hub = Hub()
    box = RecordingOutbox(clock)
    hub.register(EndpointLink("ep", "s", ("z",), StreamFormat.parse(fmt), box, 0))
    announcer = Announcer(
        engine=engine,
        hub=hub,
        clock=clock,
        registry=Registry(100),
        settings=PlayoutSettings(
            lead_us=LEAD_US,
            opus_bitrate_bps=32000,
            first_segment_max_chars=100,
            queue_limit=10,
            # Loudness runs in a real thread; these tests are about exact timing.
            audio=AudioSettings(normalize=False),
        ),
        transcode_executor=InlineExecutor(),
    )
    return clock, announcer, box


# The fake link sends no playback receipts: a played announcement ends "unconfirmed".


def spec(text="Hello there.", zones=("z",)):
    return AnnouncementSpec(text=text, zones=zones, voice="ryan", language="English", speed=1.0)


async def play(clock, announcer, *specs):
    task = asyncio.create_task(announcer.run())
    anns = [announcer.submit(s) for s in specs]
    await clock.run_until_idle(limit_us=4 * 3600 * 1_000_000)
    await clock.advance_us(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return anns


async def test_ten_minutes_are_paced_exactly_with_no_drift():
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=600))
    t0 = clock.monotonic_us()
    [ann] = await play(clock, announcer, spec())
    assert ann.state.value == "unconfirmed", ann.reason  # no playback receipts here
    n = 600 * 1000 // 20
    assert len(box.audio) == n
    start = ann.start_at_us
    assert start == t0 + LEAD_US
    for i, (queued_at, h) in enumerate(box.audio):
        assert h.seq == i
        assert h.play_at_us == start + i * 20_000  # from offsets, not a running sum
        assert queued_at == h.play_at_us - LEAD_US  # sent exactly one lead ahead
    last = box.audio[-1][1]
    assert last.play_at_us + last.duration_us - start == 600_000_000
    assert ann.duration_ms == 600_000 and ann.underruns == 0
    assert ann.finished_at is not None
    kinds = [m["type"] for m in box.control]
    assert kinds == ["announcement_started", "announcement_ended"]
    assert box.control[1]["end_at_us"] == start + 600_000_000


async def test_started_carries_a_caption_per_language_in_the_order_spoken():
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=1))
    multi = AnnouncementSpec(
        text="Hello there.",
        zones=("z",),
        voice="ryan",
        language="English",
        speed=1.0,
        also=(("German", "Hallo."), ("French", "Bonjour.")),
    )
    await play(clock, announcer, multi)
    started = box.control[0]
    assert started["text"] == "Hello there."
    assert started["captions"] == [
        {"language": "English", "text": "Hello there."},
        {"language": "German", "text": "Hallo."},
        {"language": "French", "text": "Bonjour."},
    ]


async def test_a_stall_shifts_the_timeline_without_a_burst():
    # The second segment is 3 s late (no fallback engine): the audio has a gap there.
    # (A segment is handed on whole, so the stall shows between segments.)
    clock, announcer, box = setup(
        lambda c: FakeEngine(c, seconds=2, stall_at_s=0.0, stall_us=3_000_000, stall_request=1)
    )
    text = "First part of the message here. " + "Then the second sentence goes on. " * 5
    [ann] = await play(clock, announcer, spec(text))
    assert ann.segments == 2
    assert ann.state.value == "unconfirmed"
    assert ann.underruns == 1
    flagged = [h for _, h in box.audio if h.flags & wire.FLAG_DISCONTINUITY]
    assert len(flagged) == 1
    # at no moment is more than one lead of audio sent ahead of its play time
    for queued_at, h in box.audio:
        assert h.play_at_us - queued_at <= LEAD_US
    plays = [h.play_at_us for _, h in box.audio]
    assert all(b - a >= 20_000 for a, b in itertools.pairwise(plays))


async def test_back_to_back_announcements_in_one_zone_do_not_overlap():
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=1))
    a, b = await play(clock, announcer, spec("One."), spec("Two."))
    by_stream: dict[int, list[wire.AudioHeader]] = {}
    for _, h in box.audio:
        by_stream.setdefault(h.stream, []).append(h)
    first, second = by_stream[a.number], by_stream[b.number]
    assert second[0].play_at_us == first[-1].play_at_us + first[-1].duration_us  # seamless


async def test_engine_failure_is_recorded_and_endpoints_told():
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=3, fail_at_s=1.0))
    [ann] = await play(clock, announcer, spec())
    assert ann.state.value == "failed"
    assert ann.reason == "speech engine failed: engine fell over"
    assert box.control[-1]["type"] == "announcement_cancelled"
    assert box.control[-1]["reason"] == ann.reason


async def test_long_text_is_split_into_engine_sized_requests():
    clock, announcer, _box = setup(lambda c: FakeEngine(c, seconds=0.2))
    text = " ".join(["This sentence is about forty characters long."] * 60)
    [ann] = await play(clock, announcer, spec(text))
    engine = announcer.engine
    assert ann.segments == len(engine.requests) > 2
    assert all(len(r.text) <= engine.max_text_chars for r in engine.requests)
    assert len(engine.requests[0].text) <= 100  # short first segment
    assert " ".join(r.text for r in engine.requests).split() == text.split()


async def test_cancel_while_queued_and_queue_limit():
    clock, announcer, _box = setup(lambda c: FakeEngine(c, seconds=1))
    task = asyncio.create_task(announcer.run())
    first = announcer.submit(spec())
    second = announcer.submit(spec())
    await clock.advance_us(1000)
    announcer.cancel(second.id)
    assert second.state.value == "cancelled" and second.reason == "cancelled by operator"
    for _ in range(10):  # queue_limit waiting (the first one is playing, not waiting)
        announcer.submit(spec())
    from broadcaster.announcer import QueueFull

    with pytest.raises(QueueFull):
        announcer.submit(spec())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert first.state.value == "failed" and first.reason == "server shutting down"


async def test_scheduled_announcement_is_made_ahead_and_starts_exactly_when_due():
    from datetime import timedelta

    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=1))
    task = asyncio.create_task(announcer.run())
    due = clock.wall() + timedelta(seconds=60)
    ann = announcer.submit(spec(), due_at=due)
    await clock.advance_us(1000)
    assert announcer.engine.requests, "speech is made inside the pre-render window"
    assert box.audio == [] and ann.state.value == "queued"
    await clock.run_until_idle(limit_us=120_000_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ann.state.value == "unconfirmed"
    first_queued_at, first = box.audio[0]
    due_mono = 1_000_000_000 + 60_000_000  # FakeClock starts at 1e9 us
    assert first.play_at_us == due_mono  # plays exactly at the due instant
    assert first_queued_at == due_mono - LEAD_US


async def test_expiry_drops_a_waiting_announcement_with_a_reason():
    from datetime import timedelta

    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=10))
    task = asyncio.create_task(announcer.run())
    long = announcer.submit(spec("Long."))
    stale = announcer.submit(spec("Stale soon."), expires_at=clock.wall() + timedelta(seconds=3))
    already = announcer.submit(spec("Too late."), expires_at=clock.wall() - timedelta(seconds=1))
    assert already.state.value == "expired" and already.reason == "expired before it could start"
    await clock.run_until_idle(limit_us=60_000_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert long.state.value == "unconfirmed"
    assert stale.state.value == "expired" and stale.reason == "expired while waiting to start"
    assert stale.number not in {h.stream for _, h in box.audio}


async def test_late_joiner_gets_the_start_message_and_only_fresh_audio():
    """docs/protocol.md §5.5: a late joiner gets the frames whose play_at_us is still
    ahead of the server clock when it joins (the first may be due very soon after)."""
    clock, announcer, box = setup(lambda c: FakeEngine(c, seconds=5))
    task = asyncio.create_task(announcer.run())
    ann = announcer.submit(spec())
    await clock.advance_us(2_000_000)  # two seconds into the announcement
    late_box = RecordingOutbox(clock)
    late = EndpointLink("late", "s2", ("z",), StreamFormat.parse("pcm_s16le/16000"), late_box, 0)
    announcer.hub.register(late)
    joined_at = clock.monotonic_us()
    announcer.on_join(late)
    await clock.run_until_idle(limit_us=60_000_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ann.state.value == "unconfirmed"
    kinds = [m["type"] for m in late_box.control]
    assert kinds == ["announcement_started", "announcement_ended"]
    seqs = [h.seq for _, h in late_box.audio]
    assert seqs[0] > 0 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[-1] == box.audio[-1][1].seq  # to the end
    assert all(h.play_at_us > joined_at for _, h in late_box.audio)  # nothing stale
    assert ann.deliveries["late"].late_join


# --- chime files (issue 8): the folder for bare names, limits for every file -------------


def _chime_announcer(tmp_path, **audio):
    from broadcaster.announcements import Registry
    from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings

    clock = FakeClock()
    return Announcer(
        engine=FakeEngine(clock, 1.0),
        hub=Hub(),
        clock=clock,
        registry=Registry(10),
        settings=PlayoutSettings(
            lead_us=LEAD_US,
            opus_bitrate_bps=32000,
            first_segment_max_chars=100,
            queue_limit=10,
            audio=AudioSettings(normalize=False, **audio),
        ),
    )


def _wav(path, seconds, rate=8000):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x10\x00" * int(seconds * rate))
    return path


def test_a_bare_chime_name_is_looked_up_in_the_chime_folder(tmp_path, caplog):
    folder = tmp_path / "chimes"
    folder.mkdir()
    _wav(folder / "ding.wav", 0.5)
    (folder / "out.wav").symlink_to(_wav(tmp_path / "secret.wav", 0.5))
    announcer = _chime_announcer(tmp_path, chime_dir=str(folder))
    sound = announcer._chime("file:ding.wav", 8000)
    assert sound is not None and len(sound.pcm) == 2 * 4000
    assert announcer._chime("file:out.wav", 8000) is None  # a symlink out: skipped, logged
    assert "leads out of the chime folder" in caplog.text


def test_a_template_path_is_trusted_but_the_limits_hold(tmp_path, caplog):
    announcer = _chime_announcer(tmp_path, chime_max_s=1.0, chime_max_kb=64)
    short = _wav(tmp_path / "short.wav", 0.5)
    assert announcer._chime(f"file:{short}", 8000) is not None  # any path from the config
    assert announcer._chime(f"file:{_wav(tmp_path / 'long.wav', 2.0)}", 8000) is None
    assert "longer than 1 s" in caplog.text
    assert announcer._chime(f"file:{_wav(tmp_path / 'big.wav', 1.0, 48000)}", 8000) is None
    assert "at most 65536 are read" in caplog.text


async def test_first_audio_latency_is_not_an_underrun():
    # Like every remote engine: 1.5 s before the first block, then faster than real time.
    clock, announcer, box = setup(
        lambda c: FakeEngine(c, seconds=3, stall_at_s=0.0, stall_us=1_500_000)
    )
    [ann] = await play(clock, announcer, spec())
    assert ann.state.value == "unconfirmed", ann.reason
    assert ann.underruns == 0
    plays = [h.play_at_us for _, h in box.audio]
    assert all(b - a == 20_000 for a, b in itertools.pairwise(plays))  # no gap inside


async def test_one_receipt_per_stream_only_the_current_streams_counts():
    """docs/protocol.md §4.2/§5.8: an endpoint sends one receipt per stream; the server
    keeps the one for the announcement's current stream (the last that arrived) and
    ignores a receipt for another stream of it, such as a preempted earlier play."""
    clock, announcer, _ = setup(lambda c: FakeEngine(c, seconds=1))
    [ann] = await play(clock, announcer, spec())

    def receipt(stream: int, status: str = "complete") -> wire.Receipt:
        return wire.Receipt(
            announcement_id=ann.id, stream=stream, status=status, chunks=50, duration_ms=1000
        )

    announcer.on_receipt("ep", receipt(ann.number + 1, "cancelled"))  # not this stream
    assert ann.deliveries["ep"].receipt is None
    announcer.on_receipt("ep", receipt(ann.number, "incomplete"))
    announcer.on_receipt("ep", receipt(ann.number))
    assert ann.deliveries["ep"].receipt["status"] == "complete"  # the last one is kept
    assert ann.deliveries["ep"].receipt["stream"] == ann.number
