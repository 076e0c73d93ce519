"""Synthesize several segments at once, hand their audio out strictly in order.

A remote engine answers each request after a latency that does not shrink
with concurrency, so the segments of one announcement are requested together
(at most ``ahead`` at a time) while the first one plays. Audio is always
yielded in segment order; the first segment streams as it arrives, later ones
wait in memory until their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.engine import SpeechEngine, SpeechError, SynthesisMeta


@dataclass(frozen=True, slots=True)
class _End:
    pass


class SegmentFailed(SpeechError):
    """Synthesis of segment ``index`` failed; every segment before it was delivered whole."""

    def __init__(self, index: int, cause: SpeechError) -> None:
        super().__init__(str(cause), retryable=cause.retryable)
        self.index = index
        self.cause = cause


_END = _End()


async def synthesize_in_order(
    engine: SpeechEngine,
    requests: Sequence[SpeechRequest],
    *,
    ahead: int,
    meta: SynthesisMeta | None = None,
    mark_ends: bool = False,
    transform: Callable[[bytes, int], bytes] | None = None,
) -> AsyncGenerator[tuple[int, PcmBlock | None], None]:
    """Yield ``(segment index, block)`` for every request, in request order.

    With ``mark_ends``, ``(index, None)`` follows the last block of each segment,
    so the caller knows which segments were delivered whole.

    With ``transform`` (loudness normalization), each segment is gathered whole,
    passed through ``transform(pcm, rate)`` in a worker thread, in segment order
    (it may keep state from one segment to the next), and handed out in blocks.

    Memory is bounded: a segment's slot is freed only once the consumer has
    taken all of its audio, so at most ``ahead`` segments are being synthesized
    or waiting. Each segment's queue holds at most that segment's audio (one
    request of at most ``engine.max_text_chars`` characters); it never blocks
    the engine. An engine error surfaces when its segment's turn comes, so the
    audio before it still plays; closing the iterator cancels everything.
    """
    if ahead < 1:
        raise ValueError("ahead must be at least 1")
    slots = asyncio.Semaphore(ahead)
    queues: list[asyncio.Queue[PcmBlock | _End | BaseException]] = [
        asyncio.Queue() for _ in requests
    ]
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        q = queues[index]
        stream = engine.synthesize(requests[index], meta)
        try:
            async for block in stream:
                q.put_nowait(block)
            q.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, in order
            q.put_nowait(exc)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()

    async def launch() -> None:
        for index in range(len(requests)):
            await slots.acquire()
            tasks.append(asyncio.create_task(one(index), name=f"synth-segment-{index}"))

    launcher = asyncio.create_task(launch(), name="synth-launcher")
    try:
        for index, q in enumerate(queues):
            gathered: list[PcmBlock] = []
            while True:
                item = await q.get()
                if isinstance(item, _End):
                    if transform is not None and gathered:
                        for block in await transformed(gathered, transform):
                            yield index, block
                    if mark_ends:
                        yield index, None
                    break
                if isinstance(item, SpeechError):
                    raise SegmentFailed(index, item) from item
                if isinstance(item, BaseException):
                    raise item
                if transform is not None:
                    gathered.append(item)
                else:
                    yield index, item
            slots.release()
    finally:
        launcher.cancel()
        for task in tasks:
            task.cancel()
        for task in [launcher, *tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task


#: Transformed segments are handed out in blocks of this length.
_BLOCK_MS = 100


async def transformed(
    blocks: list[PcmBlock], transform: Callable[[bytes, int], bytes]
) -> list[PcmBlock]:
    out: list[PcmBlock] = []
    start = 0
    # A segment normally has one rate; an engine switching rate mid-segment gets
    # each run transformed on its own.
    while start < len(blocks):
        rate = blocks[start].sample_rate_hz
        end = start
        while end < len(blocks) and blocks[end].sample_rate_hz == rate:
            end += 1
        pcm = b"".join(b.samples for b in blocks[start:end])
        pcm = await asyncio.to_thread(transform, pcm, rate)
        step = rate * _BLOCK_MS // 1000 * 2
        out += [PcmBlock(pcm[i : i + step], rate) for i in range(0, len(pcm), step)]
        start = end
    return out
