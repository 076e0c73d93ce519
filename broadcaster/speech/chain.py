"""Primary engine, local fallback: an announcement is always spoken, and says by whom.

The chain asks the primary engine (Runware) for the announcement's segments,
several at once, and plays them in order. If the primary has produced no
audio by the first-audio deadline (shorter for emergencies), or fails on a
segment after its own retries, the rest of the announcement — from the first
segment not yet heard — is spoken by the fallback engine (embedded espeak-ng),
and :class:`SpeechOutcome` records why, for the announcement's state and the
operator's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broadcaster.clock import Clock
from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.engine import SpeechEngine, SynthesisMeta
from broadcaster.speech.segmenter import split_text
from broadcaster.speech.sequencer import SegmentFailed, synthesize_in_order

log = logging.getLogger(__name__)


@dataclass
class SpeechOutcome:
    """Filled in while an announcement is spoken."""

    engine: str
    fallback_reason: str | None = None
    fallback_from_segment: int | None = None
    meta: SynthesisMeta = field(default_factory=SynthesisMeta)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    #: Seconds the primary may take to produce the first audio (None: no limit).
    first_audio_deadline_s: float | None = 6.0
    #: The same for announcements of emergency priority.
    emergency_first_audio_deadline_s: float = 2.0
    emergency_priority: int = 224

    def deadline_s(self, priority: int) -> float | None:
        if priority >= self.emergency_priority:
            return self.emergency_first_audio_deadline_s
        return self.first_audio_deadline_s


class EngineChain:
    def __init__(
        self,
        primary: SpeechEngine,
        fallback: SpeechEngine | None = None,
        *,
        clock: Clock,
        policy: FallbackPolicy | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.clock = clock
        self.policy = policy or FallbackPolicy()

    @property
    def max_text_chars(self) -> int:
        return self.primary.max_text_chars

    async def speak(
        self,
        requests: Sequence[SpeechRequest],
        *,
        priority: int,
        outcome: SpeechOutcome,
        transform: Callable[[bytes, int], bytes] | None = None,
    ) -> AsyncIterator[PcmBlock]:
        """Yield the PCM of every request in order, falling back when the primary cannot."""
        primary = self.primary
        outcome.engine = primary.name
        if self.fallback is None:
            async for _, only in synthesize_in_order(
                primary, requests, ahead=primary.concurrency, meta=outcome.meta, transform=transform
            ):
                assert only is not None
                yield only
            for r in requests:
                outcome.meta.mark_heard(r)  # all of it was handed on to be played
            return

        stream = synthesize_in_order(
            primary,
            requests,
            ahead=primary.concurrency,
            meta=outcome.meta,
            mark_ends=True,
            transform=transform,
        )
        resume_at = 0  # first segment not yet delivered whole
        heard = False
        deadline_s = self.policy.deadline_s(priority)
        grace_us = None if deadline_s is None else int(deadline_s * 1e6)
        try:
            # Audio handed out plays in real time from the first block on; each next
            # block may be late by the grace at most past the moment the audio handed
            # out so far runs dry, or the rest is spoken by the fallback.
            started_us = self.clock.monotonic_us()
            handed_us = 0
            deadline_us = self._after(grace_us)
            while True:
                item = await self._next(stream, deadline_us)
                if item is None:
                    return
                index, block = item
                if block is None:
                    resume_at = index + 1  # segment `index` was delivered whole
                    outcome.meta.mark_heard(requests[index])
                    continue
                if not heard:
                    heard = True
                    started_us = self.clock.monotonic_us()
                handed_us += block.duration_us
                yield block
                if grace_us is not None:
                    dry_us = max(self.clock.monotonic_us(), started_us + handed_us)
                    deadline_us = dry_us + grace_us
        except _NoAudioInTime:
            if not heard:
                reason = f"{primary.name} produced no audio within {deadline_s:g} s"
            else:
                reason = (
                    f"{primary.name} fell behind: segment {resume_at + 1} was not ready "
                    f"{deadline_s:g} s after the audio before it ran out"
                )
        except SegmentFailed as exc:
            resume_at = exc.index
            reason = f"{primary.name} failed: {exc}"
        finally:
            with contextlib.suppress(BaseException):
                await stream.aclose()
        # Only reached on a switch. A segment that failed part-way restarts from its
        # beginning: repeating a few words beats losing the rest of a sentence.
        outcome.fallback_reason = reason
        outcome.fallback_from_segment = resume_at
        outcome.engine = f"{self.fallback.name} (fallback from {primary.name})"
        log.warning(
            "speech falls back to %s from segment %d: %s", self.fallback.name, resume_at, reason
        )
        rest = [
            SpeechRequest(
                text=piece, voice=r.voice, language=r.language, speed=r.speed, style=r.style
            )
            for r in requests[resume_at:]
            for piece in split_text(r.text, self.fallback.max_text_chars)
        ]
        async for _, fallback_block in synthesize_in_order(
            self.fallback,
            rest,
            ahead=self.fallback.concurrency,
            meta=outcome.meta,
            transform=transform,
        ):
            assert fallback_block is not None
            yield fallback_block

    def _after(self, grace_us: int | None) -> int | None:
        return None if grace_us is None else self.clock.monotonic_us() + grace_us

    async def _next(
        self, stream: AsyncGenerator[tuple[int, PcmBlock | None], None], deadline_us: int | None
    ) -> tuple[int, PcmBlock | None] | None:
        """The next item of ``stream`` (None at its end); _NoAudioInTime after the deadline."""
        nxt: asyncio.Future[tuple[int, PcmBlock | None]] = asyncio.ensure_future(anext(stream))
        try:
            if deadline_us is not None and not nxt.done():
                timer: asyncio.Future[None] = asyncio.ensure_future(
                    self.clock.sleep_until_us(deadline_us)
                )
                try:
                    racers: set[asyncio.Future[Any]] = {nxt, timer}
                    await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                if not nxt.done():
                    raise _NoAudioInTime
            return await nxt
        except StopAsyncIteration:
            return None
        finally:
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt


class _NoAudioInTime(Exception):
    pass
