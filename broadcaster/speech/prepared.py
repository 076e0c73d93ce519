"""An announcement's whole programme, made ahead of (or while) it plays.

A programme is what one announcement sounds like, in order: an optional
pre-chime, the spoken text (in one or several languages, one after another),
repeated 0..N times with a gap, and an optional post-chime — one announcement
with one id. Speech is loudness-normalized segment by segment (the chimes are
made at the same target), so voices, engines and chimes play at one level.

A scheduled announcement is prepared inside the pre-render window so its
first chunk can play exactly at the scheduled instant; the playout reads the
blocks in order and may start before the programme is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.chain import EngineChain, SpeechOutcome

#: Gaps and repeats are handed out in blocks of this length.
_BLOCK_MS = 100


class Timeline(Protocol):
    """When the chunk at a media offset must be sent (the announcer's Pacer)."""

    def send_at(self, offset_us: int) -> int: ...


class AudioProgramme(Protocol):
    """What the playout reads: :class:`PreparedSpeech`, or a live page's source
    (``broadcaster.paging.LiveSource``)."""

    outcome: SpeechOutcome

    def attach(self, timeline: Timeline) -> None: ...

    def start(self) -> None: ...

    def blocks(self) -> AsyncIterator[PcmBlock]: ...

    def cancel(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Speech:
    """Segments of one text in one language."""

    requests: Sequence[SpeechRequest]


@dataclass(frozen=True, slots=True)
class Sound:
    """Ready-made audio (a chime) at its own rate."""

    pcm: bytes
    sample_rate_hz: int


@dataclass(frozen=True, slots=True)
class Gap:
    ms: int


#: Makes a chime's audio (file decoding, loudness): CPU work, so it is called in a
#: worker thread when the programme is made, never on the event loop.
ChimeMaker = Callable[[], Sound | None]


@dataclass(frozen=True, slots=True)
class Programme:
    before: ChimeMaker | None = None
    speech: Sequence[Speech] = ()
    #: Times the spoken part is played again after the first time.
    repeats: int = 0
    repeat_gap_ms: int = 1000
    #: Pause between languages of a multi-language announcement.
    language_gap_ms: int = 500
    after: ChimeMaker | None = None
    pauses_ms: int = 300  # between a chime and the speech


@dataclass(frozen=True, slots=True)
class _Done:
    error: BaseException | None = None


class PreparedSpeech:
    """Runs the programme now and keeps its blocks for one reader.

    The block queue is unbounded but holds at most one announcement's audio
    (its text is bounded by ``announcements.max_text_chars`` and its repeats by
    the config), and the number of announcements prepared at once is bounded by
    the announcer's queue limit. Blocks are dropped as the reader takes them;
    the spoken part is kept while repeats are still to come.
    """

    def __init__(
        self,
        chain: EngineChain,
        programme: Programme,
        *,
        priority: int,
        outcome: SpeechOutcome,
        normalize: Callable[[bytes, int], bytes] | None = None,
    ) -> None:
        self._chain = chain
        self._programme = programme
        self._priority = priority
        self.outcome = outcome
        self._normalize = normalize
        self._queue: asyncio.Queue[PcmBlock | _Done] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        #: Media offset of the next block put (µs from the programme's start).
        self._offset_us = 0
        #: The playout's timeline, once it plays (see :meth:`attach`).
        self._timeline: Timeline | None = None

    def attach(self, timeline: Timeline) -> None:
        """The playout's timeline: from now on each segment's audio is due when the
        playout needs it (a late one is spoken by the fallback in its place)."""
        self._timeline = timeline

    def _needed_at(self) -> int | None:
        timeline = self._timeline
        return None if timeline is None else timeline.send_at(self._offset_us)

    def start(self) -> None:
        """Begin in a task this object owns (cancelled by :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prepare-speech")

    async def _run(self) -> None:
        try:
            await self._make()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, in order
            self._queue.put_nowait(_Done(exc))
            return
        self._queue.put_nowait(_Done())

    async def _make(self) -> None:
        p = self._programme

        def put(block: PcmBlock) -> None:
            self._offset_us += block.duration_us
            self._queue.put_nowait(block)

        rate = 0  # the speech's rate, for gaps
        before = await asyncio.to_thread(p.before) if p.before is not None else None
        if before is not None:
            put(PcmBlock(before.pcm, before.sample_rate_hz))
            put(_silence(p.pauses_ms, before.sample_rate_hz))
            rate = before.sample_rate_hz
        spoken: list[PcmBlock] = []
        for i, part in enumerate(p.speech):
            if i and rate:
                spoken.append(_silence(p.language_gap_ms, rate))
                put(spoken[-1])
            async for block in self._chain.speak(
                part.requests,
                priority=self._priority,
                outcome=self.outcome,
                transform=self._normalize,
                needed_at=self._needed_at,
                starts_audio=self._offset_us == 0,
            ):
                rate = block.sample_rate_hz
                put(block)
                if p.repeats:
                    spoken.append(block)
        for _ in range(p.repeats):
            if rate:
                put(_silence(p.repeat_gap_ms, rate))
            for block in spoken:  # the same audio again: no second synthesis
                put(block)
        after = await asyncio.to_thread(p.after) if p.after is not None else None
        if after is not None:
            if rate:
                put(_silence(p.pauses_ms, rate))
            put(PcmBlock(after.pcm, after.sample_rate_hz))

    async def blocks(self) -> AsyncIterator[PcmBlock]:
        """The blocks in order, as they become available; raises what synthesis raised."""
        self.start()
        while True:
            item = await self._queue.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item

    def cancel(self) -> None:
        """Stop; the task ends by itself (it is cancelled, nothing awaits it)."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _silence(ms: int, rate: int) -> PcmBlock:
    return PcmBlock(bytes(2 * (rate * ms // 1000)), rate)
