"""Primary engine, local fallback, decided per segment: an announcement is always
spoken without a hole, and says by whom.

The chain asks the primary engine (Runware) for the announcement's segments,
several at once, and hands them out in order. Each segment is decided on its
own by :class:`~broadcaster.speech.schedule.SegmentScheduler`: the primary's
audio if it is ready in time (a margin before the playout needs it), else the
fallback engine (embedded espeak-ng) speaks that segment in its place, and the
next segment goes back to the primary if its audio is ready. An emergency
starts on the fallback at once unless the primary's audio is already there.
:class:`SpeechOutcome` records which engine spoke each segment and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broadcaster.clock import Clock
from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.engine import SpeechEngine, SpeechError, SynthesisMeta
from broadcaster.speech.schedule import Pick, SegmentScheduler, engine_label
from broadcaster.speech.segmenter import split_text
from broadcaster.speech.sequencer import SegmentFailed, synthesize_in_order, transformed

log = logging.getLogger(__name__)

#: When the playout timeline is not known yet, how often a waiting segment looks again.
_RECHECK_US = 100_000


@dataclass
class SpeechOutcome:
    """Filled in while an announcement is spoken."""

    engine: str
    #: Why the fallback first spoke (None: the primary spoke every segment).
    fallback_reason: str | None = None
    #: The first segment the fallback spoke (counted over the whole announcement).
    fallback_from_segment: int | None = None
    meta: SynthesisMeta = field(default_factory=SynthesisMeta)
    #: Per segment, in order: the name of the engine that spoke it.
    sources: list[str] = field(default_factory=list)
    #: One line per segment not spoken by the primary in time ("segment 3 spoken by ...").
    warnings: list[str] = field(default_factory=list)


#: When the next audio handed out must be handed out (server clock, µs), or None
#: while the playout timeline is not known (speech made ahead of its playout).
NeededAt = Callable[[], int | None]


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    #: Seconds the primary may take to produce the first audio (None: no limit).
    first_audio_deadline_s: float | None = 6.0
    #: Kept for configs; emergencies now start locally at once (``emergency_start_s``).
    emergency_first_audio_deadline_s: float = 2.0
    emergency_priority: int = 224
    #: How long before it is needed a segment's primary audio must be ready, or the
    #: fallback speaks it: covers local synthesis, loudness and transcoding.
    margin_s: float = 0.3
    #: How long an emergency waits for the primary's first segment (a cache hit).
    emergency_start_s: float = 0.1

    def deadline_s(self, priority: int) -> float | None:
        if priority >= self.emergency_priority:
            return self.emergency_start_s
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

    def scheduler(self, *, priority: int, starts_audio: bool) -> SegmentScheduler:
        p = self.policy
        first = p.first_audio_deadline_s
        return SegmentScheduler(
            primary=self.primary.name,
            local=self.fallback.name if self.fallback is not None else None,
            asked_us=self.clock.monotonic_us(),
            margin_us=int(p.margin_s * 1e6),
            starts_audio=starts_audio,
            emergency=priority >= p.emergency_priority,
            first_audio_deadline_us=None if first is None else int(first * 1e6),
            emergency_start_us=int(p.emergency_start_s * 1e6),
        )

    async def speak(
        self,
        requests: Sequence[SpeechRequest],
        *,
        priority: int,
        outcome: SpeechOutcome,
        transform: Callable[[bytes, int], bytes] | None = None,
        needed_at: NeededAt | None = None,
        starts_audio: bool = True,
    ) -> AsyncIterator[PcmBlock]:
        """Yield the PCM of every request in order, each segment from whichever engine
        has it in time.

        ``needed_at`` tells when the next audio must be handed out (the playout
        timeline); without it, the audio handed out is taken to play in real time
        from the first block on. ``starts_audio``: these segments begin the
        announcement's audio (a later language of it does not).
        """
        primary = self.primary
        if not outcome.sources:
            outcome.engine = primary.name
        plan = self.scheduler(priority=priority, starts_audio=starts_audio)
        ahead = max(1, primary.concurrency)
        results: list[asyncio.Future[list[PcmBlock]]] = []
        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()

        async def gather(index: int) -> None:
            fut = results[index]
            blocks: list[PcmBlock] = []
            stream = primary.synthesize(requests[index], outcome.meta)
            try:
                async for block in stream:
                    blocks.append(block)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer, in its turn
                if not fut.done():
                    fut.set_exception(exc)
                return
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(BaseException):
                        await aclose()
            if not fut.done():
                fut.set_result(blocks)

        def launch(upto: int) -> None:
            while len(tasks) < min(upto, len(requests)):
                index = len(tasks)
                results.append(loop.create_future())
                tasks.append(asyncio.create_task(gather(index), name=f"synth-segment-{index}"))

        first_us: int | None = None  # when this call handed out its first audio
        handed_us = 0

        def when_needed() -> int | None:
            if needed_at is not None:
                return needed_at()
            return None if first_us is None else first_us + handed_us

        late_noted: set[int] = set()
        try:
            launch(ahead)
            for index in range(len(requests)):
                launch(index + ahead)
                fut = results[index]
                while True:
                    error: str | None = None
                    if fut.done() and fut.exception() is not None:
                        exc = fut.exception()
                        if not isinstance(exc, SpeechError):
                            raise exc  # type: ignore[misc]
                        error = str(exc)
                    now = self.clock.monotonic_us()
                    decision = plan.decide(
                        index,
                        now_us=now,
                        ready=fut.done() and error is None,
                        error=error,
                        needed_at_us=when_needed(),
                    )
                    if decision.pick is not Pick.WAIT:
                        break
                    if decision.reason is not None and index not in late_noted:
                        late_noted.add(index)  # no fallback: waiting is all there is
                        outcome.warnings.append(
                            f"segment {len(outcome.sources) + 1} was late: {decision.reason} "
                            "(no fallback engine)"
                        )
                    until = decision.until_us
                    if until is None and (needed_at is not None or first_us is None):
                        until = now + _RECHECK_US  # the timeline may become known
                    await self._wait(fut, until)
                if decision.pick is Pick.FAIL:
                    exc = fut.exception()
                    assert isinstance(exc, SpeechError)
                    raise SegmentFailed(index, exc) from exc
                if decision.pick is Pick.PRIMARY:
                    blocks = fut.result()
                    if transform is not None and blocks:
                        blocks = await transformed(blocks, transform)
                    outcome.sources.append(primary.name)
                    self._label(outcome)
                    for block in blocks:
                        if first_us is None:
                            first_us = self.clock.monotonic_us()
                        handed_us += block.duration_us
                        yield block
                    outcome.meta.mark_heard(requests[index])  # handed on whole: heard
                    continue
                # The fallback speaks this segment in the primary's place.
                assert self.fallback is not None and decision.reason is not None
                tasks[index].cancel()
                self._note_local(outcome, decision.reason)
                async for block in self._local(requests[index], outcome, transform):
                    if first_us is None:
                        first_us = self.clock.monotonic_us()
                    handed_us += block.duration_us
                    yield block
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for fut in results:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
                else:
                    fut.cancel()
            self._label(outcome)

    def _label(self, outcome: SpeechOutcome) -> None:
        """Keep ``engine`` honest while the speech is made (the first audio's metric uses it)."""
        local = self.fallback.name if self.fallback is not None else None
        outcome.engine = engine_label(self.primary.name, local, outcome.sources)

    def _note_local(self, outcome: SpeechOutcome, reason: str) -> None:
        assert self.fallback is not None
        number = len(outcome.sources)
        outcome.sources.append(self.fallback.name)
        self._label(outcome)
        line = f"segment {number + 1} spoken by {self.fallback.name}: {reason}"
        outcome.warnings.append(line)
        if outcome.fallback_reason is None:
            outcome.fallback_reason = reason
            outcome.fallback_from_segment = number
        log.warning("speech: %s", line)

    async def _local(
        self,
        request: SpeechRequest,
        outcome: SpeechOutcome,
        transform: Callable[[bytes, int], bytes] | None,
    ) -> AsyncIterator[PcmBlock]:
        assert self.fallback is not None
        pieces = [
            SpeechRequest(
                text=piece,
                voice=request.voice,
                language=request.language,
                speed=request.speed,
                style=request.style,
            )
            for piece in split_text(request.text, self.fallback.max_text_chars)
        ]
        async for _, block in synthesize_in_order(
            self.fallback,
            pieces,
            ahead=self.fallback.concurrency,
            meta=outcome.meta,
            transform=transform,
        ):
            assert block is not None
            yield block

    async def _wait(self, fut: asyncio.Future[list[PcmBlock]], until_us: int | None) -> None:
        """Until ``fut`` is done or the clock reaches ``until_us`` (None: no limit)."""
        if fut.done():
            return
        if until_us is None:
            await asyncio.wait({fut})
            return
        timer: asyncio.Future[None] = asyncio.ensure_future(self.clock.sleep_until_us(until_us))
        try:
            racers: set[asyncio.Future[Any]] = {fut, timer}
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            with contextlib.suppress(BaseException):
                await timer
