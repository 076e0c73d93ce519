"""Live paging: a talker's microphone audio played as an announcement of its own kind.

The uplink (``api/paging.py``, documented in docs/paging.md) decodes what the
browser sends and pushes PCM into a :class:`LiveSource`; the announcer plays the
source exactly like prepared speech (same arbiter, pacer, fan-out, record and
receipts): :class:`LiveSource` has the shape of
:class:`~broadcaster.speech.prepared.PreparedSpeech` that the playout reads.

What it hands the playout, in order: the chime before (if any) and a pause, then
the live audio, levelled by :class:`~broadcaster.audio.live_level.LiveLeveler`,
then the chime after (if any). The page goes *live* when the playout needs the
audio after the chime: audio that arrived before that moment is dropped
(counted), and the talker is told "live" then, so the first word they say after
the chime plays right after it, one playout delay later, instead of everything
being late by the chime's length.

Policies (every queue bounded):

* Uplink **faster** than real time (a burst after a stall): at most
  :data:`QUEUE_FRAMES` blocks wait; when full, the oldest is dropped. A block that
  would still play more than :data:`MAX_AHEAD_US` later than its real-time slot
  (the pacer's send time is that far ahead) is dropped to catch up, so the
  latency returns to one playout delay instead of staying late for the rest of
  the page.
* Uplink **slower** than real time (a stall): the playout's pacer shifts its
  timeline when a block comes too late (a gap of silence, flagged as a
  discontinuity and counted as an underrun), never stretching the audio.
* The talker stops: the page ends after the audio received so far.
* The uplink drops: the same, and the record says ``ended_by: "uplink_lost"``
  with a warning.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

from broadcaster.audio.live_level import LiveLeveler
from broadcaster.clock import Clock, wait_event_or_deadline
from broadcaster.model import PcmBlock
from broadcaster.speech.chain import SpeechOutcome
from broadcaster.speech.prepared import ChimeMaker, Timeline

#: Decoded blocks that may wait for the playout; the oldest is dropped beyond it.
QUEUE_FRAMES = 25
#: A block due to be sent more than this after it arrived is dropped (catch up).
MAX_AHEAD_US = 60_000
#: Longest live page; the server ends it then (``ended_by: "time_limit"``).
MAX_PAGE_US = 300_000_000
#: The uplink's binary frame header: seq (u32), capture time on the server clock
#: (i64 µs; 0 = unknown), both big-endian; the codec payload follows.
FRAME_HEADER = struct.Struct(">Iq")
#: PCM uplink rates (Opus is always 48 kHz).
PCM_RATES_HZ = (8000, 16000, 24000, 48000)
#: Longest audio in one uplink message.
MAX_FRAME_MS = 200
#: Pause between the chime and the live audio.
CHIME_PAUSE_MS = 200
#: Recordings of live pages kept for replay (the newest; older ones are deleted).
KEEP_RECORDINGS = 20
#: A replay hands out its recording in blocks of this length.
_REPLAY_BLOCK_MS = 100


def pack_frame(seq: int, capture_us: int, payload: bytes) -> bytes:
    """One uplink binary message (what a client sends)."""
    return FRAME_HEADER.pack(seq & 0xFFFFFFFF, capture_us) + payload


def unpack_frame(data: bytes) -> tuple[int, int, bytes]:
    """(seq, capture_us, payload); ValueError when the message is too short."""
    if len(data) <= FRAME_HEADER.size:
        raise ValueError(f"binary message of {len(data)} bytes: header is {FRAME_HEADER.size}")
    seq, capture_us = FRAME_HEADER.unpack_from(data)
    return seq, capture_us, data[FRAME_HEADER.size :]


@dataclass(frozen=True, slots=True)
class _Pcm:
    pcm: bytes
    capture_us: int


@dataclass(frozen=True, slots=True)
class _End:
    pass


def _silence(ms: int, rate: int) -> PcmBlock:
    return PcmBlock(bytes(2 * (rate * ms // 1000)), rate)


class LiveSource:
    """The audio of one live page, for the announcer's playout (one reader).

    It owns ``executor`` (the page's worker thread for decoding and levelling) once
    the announcer has accepted it: :meth:`cancel` / :meth:`close`, which the playout
    always calls when it is done with the source, shut it down.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        sample_rate_hz: int,
        executor: Executor,
        codec: str,
    ) -> None:
        self.clock = clock
        self.sample_rate_hz = sample_rate_hz
        self.outcome = SpeechOutcome(engine="live")
        self._executor = executor
        self._queue: deque[_Pcm | _End] = deque()
        self._wake = asyncio.Event()
        self._timeline: Timeline | None = None
        self._offset_us = 0
        self._before: ChimeMaker | None = None
        self._after: ChimeMaker | None = None
        self._leveler: LiveLeveler | None = None
        self._ended = False
        self._closed = False
        #: Set when the page goes live (the talker may speak): the play-at of its
        #: first live sample, on the server clock.
        self.live_event = asyncio.Event()
        self.live_play_at_us: int | None = None
        #: The audio that played (levelled), kept for replay; bounded by MAX_PAGE_US.
        self.recording = bytearray()
        #: A replay: audio recorded earlier, played instead of an uplink's.
        self._replay: bytes | None = None
        self._latencies: list[int] = []
        self._pending_latency: deque[tuple[int, int]] = deque()
        #: The record's ``live`` figures (the same dict object is kept in the record).
        self.stats: dict[str, object] = {
            "codec": codec,
            "sample_rate_hz": sample_rate_hz,
            "frames": 0,
            "dropped_before_live": 0,
            "dropped_overflow": 0,
            "dropped_catch_up": 0,
            "decode_errors": 0,
            "live_ms": 0,
            "ended_by": None,
            "latency_ms": None,
        }

    @classmethod
    def replaying(
        cls, *, clock: Clock, pcm: bytes, sample_rate_hz: int, executor: Executor, of: str
    ) -> LiveSource:
        """A source that plays a recorded live page (``of``: its announcement id)."""
        src = cls(clock=clock, sample_rate_hz=sample_rate_hz, executor=executor, codec="recording")
        src._replay = pcm
        src.stats = {"replay_of": of, "live_ms": 0, "ended_by": None}
        src._ended = True
        return src

    # --- set up by the announcer ----------------------------------------------------------

    def configure(
        self,
        *,
        before: ChimeMaker | None,
        after: ChimeMaker | None,
        leveler: LiveLeveler | None,
    ) -> None:
        self._before, self._after = before, after
        # A recording was levelled when it was live.
        self._leveler = leveler if self._replay is None else None

    def attach(self, timeline: Timeline) -> None:
        self._timeline = timeline

    def start(self) -> None:
        """Nothing to start: the uplink pushes the audio."""

    # --- fed by the uplink ----------------------------------------------------------------

    @property
    def is_live(self) -> bool:
        return self.live_event.is_set()

    @property
    def ended(self) -> bool:
        return self._ended

    def _count(self, key: str, n: int = 1) -> None:
        value = self.stats[key]
        assert isinstance(value, int)
        self.stats[key] = value + n

    def push(self, pcm: bytes, capture_us: int = 0) -> None:
        """A decoded block (mono s16le at ``sample_rate_hz``) from the uplink."""
        if self._ended or self._closed:
            return
        self._count("frames")
        if not self.is_live:
            self._count("dropped_before_live")
            return
        if sum(isinstance(i, _Pcm) for i in self._queue) >= QUEUE_FRAMES:
            self._queue.popleft()
            self._count("dropped_overflow")
        self._queue.append(_Pcm(pcm, capture_us))
        self._wake.set()

    def decode_error(self) -> None:
        """A frame from the uplink could not be decoded (it is skipped)."""
        self._count("decode_errors")

    def end(self, ended_by: str) -> None:
        """No more audio: ``"talker"`` (stopped), ``"uplink_lost"``, ``"time_limit"``."""
        if self._ended:
            return
        self._ended = True
        if self.stats["ended_by"] is None:
            self.stats["ended_by"] = ended_by
        self._queue.append(_End())
        self._wake.set()

    def note_end(self, ended_by: str) -> None:
        """Why it ended when the playout ended it (preempted, cancelled)."""
        if self.stats["ended_by"] is None:
            self.stats["ended_by"] = ended_by

    # --- read by the playout --------------------------------------------------------------

    async def blocks(self) -> AsyncIterator[PcmBlock]:
        loop = asyncio.get_running_loop()
        rate = self.sample_rate_hz
        if self._before is not None:
            chime = await loop.run_in_executor(self._executor, self._before)
            if chime is not None and chime.sample_rate_hz == rate:
                yield self._advance(PcmBlock(chime.pcm, rate))
                yield self._advance(_silence(CHIME_PAUSE_MS, rate))
        timeline = self._timeline
        if timeline is not None:
            # Live from the moment the playout needs the audio after the chime.
            await self.clock.sleep_until_us(timeline.send_at(self._offset_us))
        self._queue = deque(i for i in self._queue if isinstance(i, _End))
        live_from_us = self._offset_us
        self.live_play_at_us = (
            timeline.send_at(self._offset_us) + self._lead(timeline)
            if timeline is not None
            else None
        )
        self.live_event.set()
        limit_at = self.clock.monotonic_us() + MAX_PAGE_US
        if self._replay is not None:
            step = 2 * (rate * _REPLAY_BLOCK_MS // 1000)
            for i in range(0, len(self._replay), step):
                yield self._advance(PcmBlock(self._replay[i : i + step], rate))
            self.stats["live_ms"] = (self._offset_us - live_from_us) // 1000
            self.stats["ended_by"] = "end_of_recording"
            self._queue = deque([_End()])  # nothing live follows
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    if self.clock.monotonic_us() >= limit_at:
                        self.end("time_limit")
                        continue
                    await wait_event_or_deadline(self.clock, self._wake, limit_at)
                    continue
                item = self._queue.popleft()
                if isinstance(item, _End):
                    break
                now = self.clock.monotonic_us()
                if timeline is not None and timeline.send_at(self._offset_us) - now > MAX_AHEAD_US:
                    self._count("dropped_catch_up")
                    continue
                pcm = item.pcm
                if self._leveler is not None:
                    pcm = await loop.run_in_executor(self._executor, self._leveler.process, pcm)
                if item.capture_us > 0:
                    self._pending_latency.append((self._offset_us, item.capture_us))
                self._settle_latency(timeline, self._offset_us - 40_000)
                if pcm:
                    self.recording += pcm
                    yield self._advance(PcmBlock(pcm, rate))
            if self._leveler is not None:
                tail = await loop.run_in_executor(self._executor, self._leveler.flush)
                if tail:
                    self.recording += tail
                    yield self._advance(PcmBlock(tail, rate))
        finally:
            if self._replay is None:
                self._settle_latency(timeline, self._offset_us)
                self.stats["live_ms"] = (self._offset_us - live_from_us) // 1000
                self._finish_latency()
        if self._after is not None:
            chime = await loop.run_in_executor(self._executor, self._after)
            if chime is not None and chime.sample_rate_hz == rate:
                yield self._advance(_silence(CHIME_PAUSE_MS, rate))
                yield self._advance(PcmBlock(chime.pcm, rate))

    @staticmethod
    def _lead(timeline: Timeline) -> int:
        lead = getattr(timeline, "lead_us", 0)
        return lead if isinstance(lead, int) else 0

    def _advance(self, block: PcmBlock) -> PcmBlock:
        self._offset_us += block.duration_us
        return block

    def _settle_latency(self, timeline: Timeline | None, upto_us: int) -> None:
        """Capture -> play-at of the blocks the pacer has placed (an estimate: the
        pacer's current shift is taken as final)."""
        while self._pending_latency and self._pending_latency[0][0] <= upto_us:
            offset, capture = self._pending_latency.popleft()
            if timeline is not None:
                play_at = timeline.send_at(offset) + self._lead(timeline)
                self._latencies.append(play_at - capture)

    def _finish_latency(self) -> None:
        if self._latencies:
            ms = [v / 1000 for v in self._latencies]
            self.stats["latency_ms"] = {
                "median": round(statistics.median(ms), 1),
                "max": round(max(ms), 1),
                "count": len(ms),
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def cancel(self) -> None:
        """The playout is done with it (or it never played): its worker thread ends."""
        self._closed = True
        self._wake.set()
        shutdown = getattr(self._executor, "shutdown", None)
        if shutdown is not None:
            shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        self.cancel()
