"""The only place in broadcaster that reads time or sleeps.

Everything else receives a :class:`Clock` and asks it. Production uses
:class:`SystemClock`; tests use :class:`FakeClock`, which only moves when told,
so "after 20 ms" is an assertion rather than a sleep.

Two time scales exist:

* ``monotonic_us()``: the *server clock* of the wire protocol. It never jumps,
  has an arbitrary epoch, and is what ``play_at_us`` in audio frames refers to.
* ``wall()``: an aware UTC datetime, used only for records shown to people
  (created/started/finished timestamps), never for pacing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")


class Clock(Protocol):
    def monotonic_us(self) -> int:
        """Microseconds on a clock that never goes backwards (the server clock)."""
        ...

    def wall(self) -> datetime:
        """Current UTC time, timezone-aware."""
        ...

    async def sleep_until_us(self, deadline_us: int) -> None:
        """Return once ``monotonic_us() >= deadline_us`` (immediately if already past)."""
        ...

    async def sleep_us(self, duration_us: int) -> None:
        """Sleep for a duration measured on the monotonic clock."""
        ...


class SystemClock:
    """Real time: ``time.monotonic_ns`` and the asyncio event loop's timers."""

    def monotonic_us(self) -> int:
        return time.monotonic_ns() // 1000

    def wall(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until_us(self, deadline_us: int) -> None:
        delay_us = deadline_us - self.monotonic_us()
        if delay_us > 0:
            await asyncio.sleep(delay_us / 1_000_000)
        else:
            # Yield once so a producer that is always late cannot starve the loop.
            await asyncio.sleep(0)

    async def sleep_us(self, duration_us: int) -> None:
        await self.sleep_until_us(self.monotonic_us() + max(0, duration_us))


class FakeClock:
    """A clock that moves only when :meth:`advance` (or :meth:`run_until_idle`) is called.

    Sleepers are woken in deadline order as time is advanced, and each wake-up
    lets the event loop run the woken task before time moves further, so a
    loop of ``sleep_until`` calls sees every deadline exactly.
    """

    def __init__(self, start_us: int = 1_000_000_000, wall_start: datetime | None = None) -> None:
        self._now_us = start_us
        self._start_us = start_us
        self._wall_start = wall_start or datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def monotonic_us(self) -> int:
        return self._now_us

    def wall(self) -> datetime:
        return self._wall_start + timedelta(microseconds=self._now_us - self._start_us)

    async def sleep_until_us(self, deadline_us: int) -> None:
        if deadline_us <= self._now_us:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline_us, next(self._counter), fut))
        await fut

    async def sleep_us(self, duration_us: int) -> None:
        await self.sleep_until_us(self._now_us + max(0, duration_us))

    @property
    def pending_sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline_us(self) -> int | None:
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance_us(self, duration_us: int) -> None:
        """Move time forward, waking every sleeper whose deadline is reached, in order."""
        target = self._now_us + duration_us
        await self._settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now_us = max(self._now_us, deadline)
            fut.set_result(None)
            await self._settle()
        self._now_us = target
        await self._settle()

    async def run_until_idle(self, limit_us: int = 3600 * 1_000_000) -> None:
        """Advance to each next deadline until nobody sleeps (or ``limit_us`` passes)."""
        end = self._now_us + limit_us
        await self._settle()
        while True:
            nxt = self.next_deadline_us()
            if nxt is None or nxt > end:
                return
            await self.advance_us(nxt - self._now_us)

    @staticmethod
    async def _settle() -> None:
        # Several loop turns so chains of awaits triggered by a wake-up complete.
        for _ in range(20):
            await asyncio.sleep(0)


async def wait_event_or_deadline(
    clock: Clock, event: asyncio.Event, deadline_us: int | None
) -> None:
    """Return when ``event`` is set or the clock reaches ``deadline_us`` (None: no deadline).

    The event is cleared on return, so the caller's next wait sees only new changes.
    Used by every loop that sleeps "until the next thing is due, or something changed".
    """
    if deadline_us is None:
        await event.wait()
    else:
        waker = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(clock.sleep_until_us(deadline_us))
        try:
            racers: set[asyncio.Future[Any]] = {waker, timer}
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
            timer.cancel()
    event.clear()


async def within_us(clock: Clock, awaitable: Awaitable[_T], timeout_us: int) -> _T:
    """``await awaitable``, or TimeoutError once ``timeout_us`` have passed on ``clock``.

    The awaitable is cancelled on timeout (like ``asyncio.wait_for``, on the injectable clock).
    """
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep_us(timeout_us))
    try:
        await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        timed_out = not work.done()
        if timed_out:
            work.cancel()
    if timed_out:
        raise TimeoutError(f"not done within {timeout_us / 1e6:g} s")
    return work.result()
