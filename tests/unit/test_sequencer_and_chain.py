"""Segments in order, bounded concurrency, fallback rules: fake engines under a FakeClock."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.clock import FakeClock
from broadcaster.model import PcmBlock, SpeechRequest
from broadcaster.speech.chain import EngineChain, FallbackPolicy, SpeechOutcome
from broadcaster.speech.engine import SpeechError, SynthesisMeta
from broadcaster.speech.sequencer import SegmentFailed, synthesize_in_order


class ScriptedEngine:
    """Each request takes ``delay_us(text)`` of fake time, then yields two blocks tagged by text."""

    def __init__(
        self,
        clock,
        name="primary",
        *,
        delay_us=lambda text: 0,
        fail_on=(),
        concurrency=4,
        max_text_chars=1000,
    ):
        self.clock = clock
        self.name = name
        self.delay_us = delay_us
        self.fail_on = set(fail_on)
        self.concurrency = concurrency
        self.max_text_chars = max_text_chars
        self.active = 0
        self.max_active = 0
        self.started: list[str] = []
        self.start_times: list[int] = []
        self.cancelled: list[str] = []

    async def synthesize(self, request: SpeechRequest, meta: SynthesisMeta | None = None):
        self.started.append(request.text)
        self.start_times.append(self.clock.monotonic_us())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.clock.sleep_us(self.delay_us(request.text))
            if request.text in self.fail_on:
                raise SpeechError(f"{self.name} cannot say {request.text}")
            if meta is not None:
                meta.requests += 1
                meta.add_cost(0.5)
            for part in (b"A", b"B"):
                yield PcmBlock(f"{self.name}:{request.text}:".encode() + part, 16000)
        except asyncio.CancelledError:
            self.cancelled.append(request.text)
            raise
        finally:
            self.active -= 1

    async def aclose(self):
        pass


def reqs(*texts):
    return [SpeechRequest(text=t) for t in texts]


async def collect(aiter):
    return [item async for item in aiter]


async def run_with_clock(clock, coro):
    task = asyncio.ensure_future(coro)
    while not task.done():
        await clock.run_until_idle(limit_us=60_000_000)
        await asyncio.sleep(0)
    return task.result()


async def test_in_order_even_when_later_segments_finish_first():
    clock = FakeClock()
    delays = {"one": 300_000, "two": 100_000, "three": 10_000}
    engine = ScriptedEngine(clock, delay_us=lambda t: delays[t])
    items = await run_with_clock(
        clock, collect(synthesize_in_order(engine, reqs("one", "two", "three"), ahead=3))
    )
    assert [i for i, _ in items] == [0, 0, 1, 1, 2, 2]
    assert next(b.samples for _, b in items) == b"primary:one:A"
    assert engine.max_active == 3  # all requested at once


async def test_concurrency_is_bounded_by_ahead():
    clock = FakeClock()
    engine = ScriptedEngine(clock, delay_us=lambda t: 50_000)
    texts = [f"s{i}" for i in range(10)]
    items = await run_with_clock(clock, collect(synthesize_in_order(engine, reqs(*texts), ahead=2)))
    assert len(items) == 20
    assert engine.max_active <= 2


async def test_an_error_surfaces_in_its_turn_after_earlier_audio():
    clock = FakeClock()
    engine = ScriptedEngine(clock, fail_on={"two"})
    got = []

    async def consume():
        async for item in synthesize_in_order(engine, reqs("one", "two", "three"), ahead=3):
            got.append(item)

    with pytest.raises(SegmentFailed) as err:
        await run_with_clock(clock, consume())
    assert err.value.index == 1
    assert [i for i, _ in got] == [0, 0]


async def test_closing_early_cancels_outstanding_work():
    clock = FakeClock()
    engine = ScriptedEngine(clock, delay_us=lambda t: 0 if t == "one" else 10_000_000)
    stream = synthesize_in_order(engine, reqs("one", "two", "three"), ahead=3)
    first = await anext(stream)
    assert first[0] == 0
    await stream.aclose()
    assert sorted(engine.cancelled) == ["three", "two"]


def chain(clock, primary, fallback, **policy):
    return EngineChain(primary, fallback, clock=clock, policy=FallbackPolicy(**policy))


async def test_primary_speaks_when_it_is_on_time():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 1_000_000)
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    blocks = await run_with_clock(
        clock,
        collect(
            chain(clock, primary, fallback).speak(reqs("a", "b"), priority=100, outcome=outcome)
        ),
    )
    assert all(b.samples.startswith(b"primary:") for b in blocks) and len(blocks) == 4
    assert outcome.engine == "primary" and outcome.fallback_reason is None
    assert outcome.meta.requests == 2 and outcome.meta.cost == 1.0
    assert fallback.started == []


@pytest.mark.parametrize(
    ("priority", "deadline_s", "falls_back"), [(100, 6.0, False), (230, 2.0, True)]
)
async def test_emergencies_wait_less_for_the_primary(priority, deadline_s, falls_back):
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 3_000_000)  # 3 s to first audio
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    c = chain(
        clock, primary, fallback, first_audio_deadline_s=6.0, emergency_first_audio_deadline_s=2.0
    )
    blocks = await run_with_clock(
        clock, collect(c.speak(reqs("a", "b"), priority=priority, outcome=outcome))
    )
    if falls_back:
        assert all(b.samples.startswith(b"local:") for b in blocks) and len(blocks) == 4
        assert outcome.fallback_reason == f"primary produced no audio within {deadline_s:g} s"
        assert outcome.fallback_from_segment == 0
        assert outcome.engine == "local (fallback from primary)"
        assert sorted(primary.cancelled) == ["a", "b"]  # nothing left running
    else:
        assert all(b.samples.startswith(b"primary:") for b in blocks)


async def test_failure_mid_way_resumes_on_the_fallback_at_that_segment():
    clock = FakeClock()
    primary = ScriptedEngine(clock, fail_on={"b"})
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    blocks = await run_with_clock(
        clock,
        collect(
            chain(clock, primary, fallback).speak(
                reqs("a", "b", "c"), priority=100, outcome=outcome
            )
        ),
    )
    assert [b.samples for b in blocks] == [
        b"primary:a:A",
        b"primary:a:B",
        b"local:b:A",
        b"local:b:B",
        b"local:c:A",
        b"local:c:B",
    ]
    assert outcome.fallback_from_segment == 1
    assert outcome.fallback_reason == "primary failed: primary cannot say b"


async def test_fallback_resplits_for_a_smaller_limit():
    clock = FakeClock()
    primary = ScriptedEngine(clock, fail_on={"First sentence here. Second one."})
    fallback = ScriptedEngine(clock, "local", max_text_chars=25)
    outcome = SpeechOutcome(engine="?")
    await run_with_clock(
        clock,
        collect(
            chain(clock, primary, fallback).speak(
                reqs("First sentence here. Second one."), priority=1, outcome=outcome
            )
        ),
    )
    assert fallback.started == ["First sentence here.", "Second one."]


async def test_without_fallback_the_error_is_the_outcome():
    clock = FakeClock()
    primary = ScriptedEngine(clock, fail_on={"a"})
    with pytest.raises(SpeechError, match="primary cannot say a"):
        await run_with_clock(
            clock,
            collect(
                chain(clock, primary, None).speak(
                    reqs("a"), priority=1, outcome=SpeechOutcome(engine="?")
                )
            ),
        )


async def test_a_segment_stalling_mid_announcement_is_spoken_by_the_fallback():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 10_000_000 if t == "c" else 0)
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, primary, fallback, first_audio_deadline_s=2.0)
    t0 = clock.monotonic_us()
    blocks = await run_with_clock(
        clock, collect(c.speak(reqs("a", "b", "c", "d"), priority=100, outcome=outcome))
    )
    assert [b.samples for b in blocks] == [
        b"primary:a:A",
        b"primary:a:B",
        b"primary:b:A",
        b"primary:b:B",
        b"local:c:A",
        b"local:c:B",
        b"local:d:A",
        b"local:d:B",
    ]
    assert outcome.fallback_from_segment == 2
    assert outcome.fallback_reason == (
        "primary fell behind: segment 3 was not ready 2 s after the audio before it ran out"
    )
    # the fallback took over at the grace, not after the stalled request
    assert 2_000_000 <= fallback.start_times[0] - t0 < 2_010_000
