"""Which engine speaks each segment, so the speech never leaves a hole (pure).

The rule: no hole longer than the segment pause. Segment ``k`` is *needed* when
the audio before it has been handed out and will have played (its first chunk
must be sent then; see :class:`~broadcaster.audio.pacer.Pacer`). The primary's
audio for ``k`` is used if it is ready ``margin`` before that moment; if not (or
the primary failed on it), the local engine speaks ``k`` in its place — the
margin covers local synthesis (espeak-ng is ~1000x real time), loudness and
transcoding. Segment ``k + 1`` is decided afresh: it goes back to the primary
if its audio is ready. Mixed voices in a fault; never silence.

The first segment of an announcement's audio is different: nothing plays yet,
so waiting for it delays the start rather than leaving a hole. A routine
announcement waits up to the first-audio deadline; an emergency waits only
``emergency_start`` (enough for a cached segment) and then starts locally.

This module reads no clock and awaits nothing: the chain
(:mod:`broadcaster.speech.chain`) feeds it times and readiness.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Pick(Enum):
    PRIMARY = "primary"
    LOCAL = "local"
    #: Not decided yet: ask again at ``until_us`` (None: when the primary answers).
    WAIT = "wait"
    #: The primary failed and there is no local engine: the error is the outcome.
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Decision:
    pick: Pick
    until_us: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SegmentScheduler:
    """Decisions for the segments of one spoken part (one ``EngineChain.speak`` call)."""

    primary: str
    local: str | None
    #: When the segments were asked for (server clock, µs).
    asked_us: int
    #: How long before it is needed a segment's primary audio must be ready.
    margin_us: int
    #: Whether this part's first segment is the announcement's first audio.
    starts_audio: bool = True
    emergency: bool = False
    #: Routine first segment: how long the primary may take (None: no limit).
    first_audio_deadline_us: int | None = 6_000_000
    #: Emergency first segment: how long to wait for the primary (a cache hit).
    emergency_start_us: int = 100_000

    def deadline_us(self, index: int, needed_at_us: int | None) -> int | None:
        """When segment ``index`` must have its primary audio, or it is spoken locally."""
        if index == 0 and self.starts_audio:
            if self.emergency:
                return self.asked_us + self.emergency_start_us
            if self.first_audio_deadline_us is None:
                return None
            return self.asked_us + self.first_audio_deadline_us
        if needed_at_us is None:
            return None
        return needed_at_us - self.margin_us

    def late_reason(self, index: int) -> str:
        if index == 0 and self.starts_audio:
            if self.emergency:
                return f"emergency: {self.primary}'s audio was not ready at once"
            assert self.first_audio_deadline_us is not None
            return (
                f"{self.primary} produced no audio within {self.first_audio_deadline_us / 1e6:g} s"
            )
        return (
            f"{self.primary}'s audio was not ready {self.margin_us / 1e6:g} s before it was needed"
        )

    def decide(
        self,
        index: int,
        *,
        now_us: int,
        ready: bool,
        error: str | None = None,
        needed_at_us: int | None = None,
    ) -> Decision:
        """What plays as segment ``index`` now.

        ``ready``: the primary's audio for it is all here; ``error``: the primary
        failed on it; ``needed_at_us``: when its first chunk must be sent (None:
        the playout timeline is not known yet).
        """
        if ready:
            return Decision(Pick.PRIMARY)
        if error is not None:
            if self.local is None:
                return Decision(Pick.FAIL, reason=f"{self.primary} failed: {error}")
            return Decision(Pick.LOCAL, reason=f"{self.primary} failed: {error}")
        deadline = self.deadline_us(index, needed_at_us)
        if deadline is not None and now_us >= deadline:
            if self.local is None:
                if index == 0 and self.starts_audio:
                    return Decision(Pick.WAIT)  # a later start, not a hole
                # nothing else can speak: wait, and say so
                return Decision(Pick.WAIT, None, self.late_reason(index))
            return Decision(Pick.LOCAL, reason=self.late_reason(index))
        return Decision(Pick.WAIT, deadline)


def engine_label(primary: str, local: str | None, sources: list[str]) -> str:
    """The record's ``engine``: who spoke, honestly, for a mix too."""
    if local is None or local not in sources:
        return primary
    by_local = sources.count(local)
    if by_local == len(sources):
        return f"{local} (fallback from {primary})"
    return f"{primary} ({by_local} of {len(sources)} segments by {local})"
