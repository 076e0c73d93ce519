"""Speech made ahead of its play time, handed to the playout when it starts.

A scheduled announcement is synthesized inside the pre-render window (default
60 s before it is due), so its first chunk can play exactly at the scheduled
instant however slow the engine is. The playout reads the blocks in order; it
may begin before synthesis has finished, in which case it simply waits for
the next block, as with live synthesis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.chain import EngineChain, SpeechOutcome


@dataclass(frozen=True, slots=True)
class _Done:
    error: BaseException | None = None


class PreparedSpeech:
    """Runs ``chain.speak`` now and keeps its blocks for one reader.

    The block queue is unbounded but holds at most one announcement's audio
    (its text is bounded by ``announcements.max_text_chars``), and the number of
    announcements prepared at once is bounded by the announcer's queue limit.
    Blocks are dropped as the reader takes them.
    """

    def __init__(
        self,
        chain: EngineChain,
        requests: Sequence[SpeechRequest],
        *,
        priority: int,
        outcome: SpeechOutcome,
    ) -> None:
        self._chain = chain
        self._requests = list(requests)
        self._priority = priority
        self.outcome = outcome
        self._queue: asyncio.Queue[PcmBlock | _Done] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin synthesis in a task this object owns (cancelled by :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prepare-speech")

    async def _run(self) -> None:
        try:
            async for block in self._chain.speak(
                self._requests, priority=self._priority, outcome=self.outcome
            ):
                self._queue.put_nowait(block)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the reader, in order
            self._queue.put_nowait(_Done(exc))
            return
        self._queue.put_nowait(_Done())

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
        """Stop synthesis; the task ends by itself (it is cancelled, nothing awaits it)."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
