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
                # half a second each, so the audio handed out has a play time
                tagged = f"{self.name}:{request.text}:".encode() + part
                yield PcmBlock(tagged.ljust(16000, b"\0"), 16000)
        except asyncio.CancelledError:
            self.cancelled.append(request.text)
            raise
        finally:
            self.active -= 1

    async def aclose(self):
        pass


def tag(block):
    return block.samples.rstrip(b"\0")


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
    assert next(tag(b) for _, b in items) == b"primary:one:A"
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
    assert all(tag(b).startswith(b"primary:") for b in blocks) and len(blocks) == 4
    assert outcome.engine == "primary" and outcome.fallback_reason is None
    assert outcome.meta.requests == 2 and outcome.meta.cost == 1.0
    assert fallback.started == []


async def test_a_routine_announcement_waits_for_the_primary_up_to_its_deadline():
    clock = FakeClock()
    slow = ScriptedEngine(clock, delay_us=lambda t: 3_000_000)  # 3 s to first audio
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, slow, ScriptedEngine(clock, "local"), first_audio_deadline_s=6.0)
    blocks = await run_with_clock(
        clock, collect(c.speak(reqs("a", "b"), priority=100, outcome=outcome))
    )
    assert all(tag(b).startswith(b"primary:") for b in blocks)
    stuck = ScriptedEngine(clock, delay_us=lambda t: 30_000_000)
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, stuck, ScriptedEngine(clock, "local"), first_audio_deadline_s=6.0)
    blocks = await run_with_clock(clock, collect(c.speak(reqs("a"), priority=100, outcome=outcome)))
    assert [tag(b) for b in blocks] == [b"local:a:A", b"local:a:B"]
    assert outcome.fallback_reason == "primary produced no audio within 6 s"
    assert outcome.engine == "local (fallback from primary)"


async def test_an_emergency_starts_locally_at_once_and_returns_to_the_primary():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 600_000)  # all ready after 0.6 s
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, primary, fallback, emergency_priority=224)
    t0 = clock.monotonic_us()
    blocks = await run_with_clock(
        clock, collect(c.speak(reqs("a", "b", "c"), priority=230, outcome=outcome))
    )
    # segment 1 locally at once (1 s of audio), then the primary's, ready in time
    assert [tag(b) for b in blocks] == [
        b"local:a:A",
        b"local:a:B",
        b"primary:b:A",
        b"primary:b:B",
        b"primary:c:A",
        b"primary:c:B",
    ]
    assert fallback.start_times[0] - t0 == 100_000  # emergency_start_s: a cache hit's time
    assert outcome.sources == ["local", "primary", "primary"]
    assert outcome.engine == "primary (1 of 3 segments by local)"
    assert outcome.warnings == [
        "segment 1 spoken by local: emergency: primary's audio was not ready at once"
    ]


async def test_an_emergency_uses_the_primary_when_its_audio_is_already_there():
    clock = FakeClock()
    primary = ScriptedEngine(clock)  # answers at once (a cached segment)
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, primary, ScriptedEngine(clock, "local"))
    blocks = await run_with_clock(clock, collect(c.speak(reqs("a"), priority=240, outcome=outcome)))
    assert all(tag(b).startswith(b"primary:") for b in blocks)
    assert outcome.engine == "primary" and not outcome.warnings


async def test_failure_mid_way_is_spoken_locally_for_that_segment_only():
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
    assert [tag(b) for b in blocks] == [
        b"primary:a:A",
        b"primary:a:B",
        b"local:b:A",
        b"local:b:B",
        b"primary:c:A",
        b"primary:c:B",
    ]
    assert outcome.fallback_from_segment == 1
    assert outcome.fallback_reason == "primary failed: primary cannot say b"
    assert outcome.warnings == ["segment 2 spoken by local: primary failed: primary cannot say b"]
    assert outcome.engine == "primary (1 of 3 segments by local)"


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


async def test_a_segment_stalling_mid_announcement_is_spoken_locally_in_its_place():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 10_000_000 if t == "c" else 0)
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    c = chain(clock, primary, fallback, margin_s=0.3)
    t0 = clock.monotonic_us()
    blocks = await run_with_clock(
        clock, collect(c.speak(reqs("a", "b", "c", "d"), priority=100, outcome=outcome))
    )
    assert [tag(b) for b in blocks] == [
        b"primary:a:A",
        b"primary:a:B",
        b"primary:b:A",
        b"primary:b:B",
        b"local:c:A",
        b"local:c:B",
        b"primary:d:A",  # back to the primary: its audio is ready
        b"primary:d:B",
    ]
    assert outcome.fallback_from_segment == 2
    assert outcome.warnings == [
        "segment 3 spoken by local: primary's audio was not ready 0.3 s before it was needed"
    ]
    # a and b (2 s of audio) were handed out at t0: c was needed at t0 + 2 s, and the
    # fallback started it one margin before, not after the stalled request
    assert fallback.start_times[0] - t0 == 1_700_000
    assert "c" in primary.cancelled


async def test_a_segment_is_due_when_the_playout_timeline_needs_it():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 5_000_000 if t == "b" else 0)
    fallback = ScriptedEngine(clock, "local")
    outcome = SpeechOutcome(engine="?")
    t0 = clock.monotonic_us()
    # the playout sends the next chunk 4 s from now (e.g. made ahead of its due time)
    c = chain(clock, primary, fallback, margin_s=0.3)
    blocks = await run_with_clock(
        clock,
        collect(
            c.speak(
                reqs("a", "b"),
                priority=100,
                outcome=outcome,
                needed_at=lambda: t0 + 4_000_000,
            )
        ),
    )
    assert [tag(b)[:9] for b in blocks] == [b"primary:a"] * 2 + [b"local:b:A", b"local:b:B"]
    assert fallback.start_times == [t0 + 3_700_000]


async def test_without_fallback_a_late_segment_is_waited_for_and_recorded():
    clock = FakeClock()
    primary = ScriptedEngine(clock, delay_us=lambda t: 3_000_000 if t == "b" else 0)
    outcome = SpeechOutcome(engine="?")
    blocks = await run_with_clock(
        clock,
        collect(chain(clock, primary, None).speak(reqs("a", "b"), priority=1, outcome=outcome)),
    )
    assert [tag(b)[:9] for b in blocks] == [b"primary:a"] * 2 + [b"primary:b"] * 2
    assert outcome.engine == "primary"
    assert outcome.warnings == [
        "segment 2 was late: primary's audio was not ready 0.3 s before it was needed "
        "(no fallback engine)"
    ]
