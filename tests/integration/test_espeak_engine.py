"""The espeak-ng engine against the real library shipped in the espeakng-loader wheel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import espeakng_loader
import numpy as np
import pytest

from broadcaster.model import LANGUAGES, VOICES, PcmBlock, SpeechRequest
from broadcaster.speech import espeak
from broadcaster.speech.engine import SpeechEngine, SpeechError
from broadcaster.speech.espeak import EspeakEngine, EspeakVoice

pytestmark = pytest.mark.integration

SAMPLE_TEXTS = {
    "Auto": "各位旅客请注意，列车即将进站。",
    "English": "Attention please, the train to Leeds is arriving at platform two.",
    "Chinese": "各位旅客请注意，列车即将进站。",
    "Japanese": "まもなく、にばんせんに、でんしゃがまいります。",
    "Korean": "열차가 곧 도착합니다. 안전선 밖으로 물러나 주십시오.",
    "German": "Achtung, der Zug nach München fährt ein.",
    "French": "Attention, le train pour Lyon entre en gare.",
    "Russian": "Внимание, поезд на Москву прибывает.",
    "Portuguese": "Atenção, o comboio para Lisboa está a chegar.",
    "Spanish": "Atención, el tren a Madrid está llegando.",
    "Italian": "Attenzione, il treno per Roma è in arrivo.",
}

SENTENCE = (
    "Ladies and gentlemen, the next train to arrive at platform two is the delayed "
    "service to Manchester Piccadilly. Please stand well back from the platform edge. "
)
LONG_TEXT = (SENTENCE * 8)[:1000]


@pytest.fixture
async def engine() -> AsyncIterator[EspeakEngine]:
    eng = EspeakEngine()
    try:
        yield eng
    finally:
        await eng.aclose()


async def collect(engine: EspeakEngine, **kwargs: Any) -> list[PcmBlock]:
    return [block async for block in engine.synthesize(SpeechRequest(**kwargs))]


def seconds(blocks: list[PcmBlock]) -> float:
    return sum(b.sample_count for b in blocks) / blocks[0].sample_rate_hz if blocks else 0.0


def pcm(blocks: list[PcmBlock]) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.frombuffer(b"".join(b.samples for b in blocks), dtype="<i2")


def assert_audible(engine: EspeakEngine, blocks: list[PcmBlock]) -> None:
    assert blocks
    assert all(b.sample_rate_hz == engine.sample_rate_hz for b in blocks)
    assert all(len(b.samples) % 2 == 0 and b.samples for b in blocks)
    samples = pcm(blocks)
    assert seconds(blocks) > 0.3
    assert int(np.abs(samples.astype(np.int32)).max()) > 1000  # not silence


def median_f0(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> float:
    """Rough pitch: autocorrelation over loud 40 ms frames."""
    x = samples.astype(np.float64)
    frame, found = int(0.04 * rate), []
    lo, hi = rate // 400, rate // 60
    for i in range(0, len(x) - frame, frame // 2):
        w = x[i : i + frame]
        if np.sqrt(np.mean(w**2)) < 1500:
            continue
        w = w - w.mean()
        ac = np.correlate(w, w, "full")[frame - 1 :]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.4 * ac[0]:
            found.append(rate / k)
    return float(np.median(found))


# -- basics -------------------------------------------------------------------------------


async def test_engine_shape(engine: EspeakEngine) -> None:
    assert isinstance(engine, SpeechEngine)
    assert engine.name == "espeak-ng"
    assert engine.max_text_chars == 1000
    assert engine.sample_rate_hz == 22050


def test_every_mapped_variant_exists_in_the_wheel() -> None:
    variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    for style in espeak.VOICE_STYLES.values():
        assert (variants / style.variant).is_file(), style.variant


@pytest.mark.parametrize("voice", VOICES)
async def test_every_voice_speaks(engine: EspeakEngine, voice: str) -> None:
    assert_audible(engine, await collect(engine, text=SAMPLE_TEXTS["English"], voice=voice))


@pytest.mark.parametrize("language", LANGUAGES)
async def test_every_language_speaks(engine: EspeakEngine, language: str) -> None:
    blocks = await collect(engine, text=SAMPLE_TEXTS[language], voice="auto", language=language)
    assert_audible(engine, blocks)


async def test_voices_sound_different(engine: EspeakEngine) -> None:
    rate = engine.sample_rate_hz
    text = SAMPLE_TEXTS["English"]
    low = median_f0(pcm(await collect(engine, text=text, voice="uncle_fu")), rate)
    male = median_f0(pcm(await collect(engine, text=text, voice="dylan")), rate)
    high = median_f0(pcm(await collect(engine, text=text, voice="vivian")), rate)
    assert low * 1.3 < male
    assert male * 1.5 < high


async def test_empty_text_yields_nothing(engine: EspeakEngine) -> None:
    assert await collect(engine, text="  \n ") == []


async def test_markup_is_spoken_as_text_not_interpreted(engine: EspeakEngine) -> None:
    blocks = await collect(engine, text='<speak><break time="10s"/>[[h@l\'oU]]</speak> hello')
    # A 10 s SSML break would make this long; as plain text it is a few seconds at most.
    assert 0 < seconds(blocks) < 8


# -- speed --------------------------------------------------------------------------------


async def test_speed_changes_duration(engine: EspeakEngine) -> None:
    text = SENTENCE * 2
    normal = seconds(await collect(engine, text=text, speed=1.0))
    slow = seconds(await collect(engine, text=text, speed=0.25))
    fast = seconds(await collect(engine, text=text, speed=4.0))
    assert slow / normal == pytest.approx(4.0, rel=0.25)
    assert normal / fast == pytest.approx(4.0, rel=0.25)
    half = seconds(await collect(engine, text=text, speed=0.5))
    assert half / normal == pytest.approx(2.0, rel=0.25)


@pytest.mark.parametrize("speed", [0.1, 4.5])
async def test_speed_out_of_range_is_a_speech_error(engine: EspeakEngine, speed: float) -> None:
    with pytest.raises(SpeechError, match="speed"):
        await collect(engine, text="hello", speed=speed)


# -- streaming ----------------------------------------------------------------------------


async def test_first_block_arrives_while_synthesis_is_still_running(
    engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = threading.Event()
    real_run = espeak._LIBRARY.run

    def run(job: Any, rate: int) -> None:
        real_run(job, rate)
        finished.set()

    monkeypatch.setattr(espeak._LIBRARY, "run", run)
    # Slow speed: more audio and the tempo filter, so synthesis takes a while.
    stream = engine.synthesize(SpeechRequest(text=LONG_TEXT, speed=0.25))
    first = await anext(stream)
    done_at_first_block = finished.is_set()
    rest = [b async for b in stream]
    assert not done_at_first_block
    # The end marker is delivered just before run() returns; wait for the return.
    assert await asyncio.to_thread(finished.wait, 10)
    # Many small blocks rather than one big one, the first of them short.
    assert len(rest) > 100
    assert first.duration_us <= 200_000


async def test_blocks_arrive_in_many_pieces_at_normal_speed(engine: EspeakEngine) -> None:
    blocks = await collect(engine, text=LONG_TEXT)
    assert len(blocks) > 50
    assert max(b.duration_us for b in blocks) <= 100_000
    assert seconds(blocks) > 30


async def test_event_loop_stays_responsive(engine: EspeakEngine) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    seen: list[int] = []
    async for _ in engine.synthesize(SpeechRequest(text=LONG_TEXT, speed=0.25)):
        seen.append(ticks)
    stop.set()
    await task
    # The other task kept running while blocks streamed in, not only before/after.
    assert seen[-1] - seen[0] >= 10
    assert len(set(seen)) >= 10


# -- cancellation and concurrency ---------------------------------------------------------


async def test_closing_the_stream_early_then_next_request_works(engine: EspeakEngine) -> None:
    reference = seconds(await collect(engine, text=SENTENCE))
    stream = engine.synthesize(SpeechRequest(text=LONG_TEXT, speed=0.25))
    got = [await anext(stream), await anext(stream)]
    await stream.aclose()
    assert len(got) == 2
    again = await collect(engine, text=SENTENCE)
    assert seconds(again) == pytest.approx(reference, rel=0.02)


async def test_cancelling_the_consumer_then_next_request_works(engine: EspeakEngine) -> None:
    first_block = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.synthesize(SpeechRequest(text=LONG_TEXT, speed=0.25)):
            first_block.set()

    task = asyncio.create_task(consume())
    await first_block.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_audible(engine, await collect(engine, text=SAMPLE_TEXTS["German"], language="German"))


async def test_concurrent_requests_are_serialised_and_both_complete(engine: EspeakEngine) -> None:
    text_a, text_b = SENTENCE, SAMPLE_TEXTS["Spanish"]
    solo_a = seconds(await collect(engine, text=text_a, voice="serena"))
    solo_b = seconds(await collect(engine, text=text_b, voice="eric", language="Spanish"))
    both = await asyncio.gather(
        collect(engine, text=text_a, voice="serena"),
        collect(engine, text=text_b, voice="eric", language="Spanish"),
    )
    assert seconds(both[0]) == pytest.approx(solo_a, rel=0.02)
    assert seconds(both[1]) == pytest.approx(solo_b, rel=0.02)


async def test_cancel_while_queued_behind_another_request(engine: EspeakEngine) -> None:
    long_stream = engine.synthesize(SpeechRequest(text=LONG_TEXT))
    await anext(long_stream)  # the long request now owns the worker
    queued = asyncio.create_task(collect(engine, text=SENTENCE))
    await asyncio.sleep(0)
    queued.cancel()
    rest = [b async for b in long_stream]
    assert rest
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert_audible(engine, await collect(engine, text=SENTENCE))


# -- errors and lifecycle -----------------------------------------------------------------


async def test_unknown_voice_is_a_speech_error(engine: EspeakEngine) -> None:
    with pytest.raises(SpeechError, match="unknown voice"):
        await collect(engine, text="hello", voice="nobody")


async def test_library_failure_is_a_speech_error_and_engine_recovers(
    engine: EspeakEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(voice: str, language: str, text: str = "") -> EspeakVoice:
        return EspeakVoice("xx-nonexistent", "m3", 50, 50, "ryan")

    monkeypatch.setattr(espeak, "espeak_voice_for", missing)
    with pytest.raises(SpeechError, match="cannot select voice"):
        await collect(engine, text="hello")
    monkeypatch.undo()
    assert_audible(engine, await collect(engine, text=SENTENCE))


async def test_too_long_text_is_a_speech_error(engine: EspeakEngine) -> None:
    with pytest.raises(SpeechError, match="longer than"):
        await collect(engine, text="a " * 600)


async def test_closed_engine_refuses_requests() -> None:
    eng = EspeakEngine()
    await eng.aclose()
    await eng.aclose()  # idempotent
    assert eng.closed
    with pytest.raises(SpeechError, match="closed"):
        await collect(eng, text="hello")


async def test_closing_the_engine_under_a_consumer_does_not_hang() -> None:
    eng = EspeakEngine()
    stream = eng.synthesize(SpeechRequest(text=LONG_TEXT, speed=0.25))
    await anext(stream)
    await eng.aclose()
    # Either the rest was already synthesized, or the stream ends with an error.
    try:
        async for _ in stream:
            pass
    except SpeechError as exc:
        assert "cancelled" in str(exc)


async def test_engines_share_the_library_safely() -> None:
    one, two = EspeakEngine(), EspeakEngine()
    try:
        results = await asyncio.gather(
            collect(one, text=SENTENCE),
            collect(two, text=SAMPLE_TEXTS["Italian"], language="Italian"),
        )
        assert_audible(one, results[0])
        assert_audible(two, results[1])
        await one.aclose()
        assert_audible(two, await collect(two, text=SENTENCE))
    finally:
        await one.aclose()
        await two.aclose()
    # The last engine out terminated the library; a new one initialises it again.
    three = EspeakEngine()
    try:
        assert_audible(three, await collect(three, text=SENTENCE))
    finally:
        await three.aclose()
