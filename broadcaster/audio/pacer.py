"""Real-time pacing: when each chunk is due, on the server clock.

The pacer never accumulates durations of sent chunks (that drifts); every
deadline is computed from the chunk's media offset:
``play_at = start + shift + offset`` and ``send_at = play_at - lead``. The
only thing that moves the timeline is an *underrun*: a chunk that becomes
ready after the moment it should have been sent (synthesis slower than real
time). Then ``shift`` grows so that chunk is sent now, the frame is marked as
a discontinuity, and everything after it stays contiguous again. Because the
timeline is shifted instead of bursting, a stall never makes the server send
more than ``lead`` of audio ahead of its play time, which is what the
endpoint's buffer is sized for.

The first chunk is different: it is usually late because synthesis had to
make it (the first-audio latency). Shifting for it moves the start, not a
gap inside the audio, so it is kept apart as ``start_delay_us`` and never
counted as an underrun.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """Where one chunk goes: when to send it, when it plays, and whether a gap precedes it."""

    send_at_us: int
    play_at_us: int
    discontinuity: bool


class Pacer:
    """Deadlines for one announcement's chunks.

    ``start_us`` is the server-clock time at which media offset 0 plays;
    ``lead_us`` is how long before its play time a chunk is sent (the playout
    delay). ``tolerance_us`` is how late a chunk may become ready before the
    timeline is shifted; within it the chunk is simply sent late (it still
    arrives ahead of its play time as long as tolerance < lead).
    """

    def __init__(self, *, start_us: int, lead_us: int, tolerance_us: int | None = None) -> None:
        if lead_us <= 0:
            raise ValueError("lead_us must be positive")
        self.start_us = start_us
        self.lead_us = lead_us
        self.tolerance_us = lead_us // 2 if tolerance_us is None else tolerance_us
        self.shift_us = 0
        self.underruns = 0
        #: How much later than ``start_us`` the first chunk could play.
        self.start_delay_us = 0
        self._placed = 0

    def play_at(self, offset_us: int) -> int:
        return self.start_us + self.shift_us + offset_us

    def send_at(self, offset_us: int) -> int:
        return self.play_at(offset_us) - self.lead_us

    def place(self, offset_us: int, ready_us: int) -> Slot:
        """Slot for a chunk at ``offset_us`` that became ready at ``ready_us``."""
        late_us = ready_us - self.send_at(offset_us)
        discontinuity = False
        if late_us > self.tolerance_us:
            self.shift_us += late_us
            if self._placed == 0:
                self.start_delay_us = late_us  # a late start, not a gap in the audio
            else:
                self.underruns += 1
            discontinuity = True
        self._placed += 1
        return Slot(self.send_at(offset_us), self.play_at(offset_us), discontinuity)
