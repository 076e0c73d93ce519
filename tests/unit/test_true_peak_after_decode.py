"""The true-peak promise (README: <= -1 dBTP) holds in what endpoints *decode*.

Speech from espeak-ng in several voices and languages, and every built-in chime,
are normalized as the announcer does at several loudness targets and ceilings,
encoded in every format the server offers and decoded again to float (Opus
output above full scale is not clipped, as in a WebCodecs decoder). The true
peak (4x oversampled) of each decoded stream stays at or below the ceiling.
Figures: bench/true_peak.py.
"""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.audio.chimes import CHIMES, chime_pcm
from broadcaster.audio.decode import decode_to_floats
from broadcaster.audio.loudness import LoudnessNormalizer, true_peak_dbtp_of
from broadcaster.audio.transcode import MultiTranscoder, encoder_headroom_db
from broadcaster.config import StreamingConfig
from broadcaster.model import SpeechRequest, StreamFormat
from broadcaster.speech.espeak import EspeakEngine

FORMATS = StreamingConfig().stream_formats()  # everything the server offers by default
TEXTS = [
    ("The 10:15 to Cambridge will depart from platform 2.", "ryan", "English"),
    ("Attention please! Stand clear of the closing doors.", "vivian", "English"),
    ("Der Zug nach Berlin fährt heute von Gleis sieben ab.", "uncle_fu", "German"),
    ("Sssshhh. Fifty-five, six-six-six. Zzzz.", "aiden", "English"),
]
TARGETS = [(-16.0, -1.0), (-10.0, -1.0), (-14.0, -2.0)]


@pytest.fixture(scope="module")
def speech() -> tuple[list[bytes], int]:
    async def make() -> tuple[list[bytes], int]:
        engine = EspeakEngine()
        try:
            out = []
            for text, voice, language in TEXTS:
                req = SpeechRequest(text=text, voice=voice, language=language)
                out.append(b"".join([b.samples async for b in engine.synthesize(req)]))
            return out, engine.sample_rate_hz
        finally:
            await engine.aclose()

    return asyncio.run(make())


def decoded_peaks(pcm: bytes, rate: int, ceiling: float) -> dict[str, float]:
    multi = MultiTranscoder(FORMATS, source_rate_hz=rate, true_peak_dbtp=ceiling)
    chunks = {k: list(v) for k, v in multi.push(pcm).items()}
    for k, v in multi.flush().items():
        chunks[k].extend(v)
    return {
        f.key: true_peak_dbtp_of(
            decode_to_floats(f, [c.payload for c in chunks[f.key]]), f.sample_rate_hz
        )
        for f in FORMATS
    }


def test_every_format_is_offered_and_opus_needs_the_most_headroom() -> None:
    assert {f.codec.value for f in FORMATS} == {"opus", "pcm_s16le", "pcm_mulaw"}
    assert encoder_headroom_db(FORMATS) == encoder_headroom_db([StreamFormat.parse("opus/48000")])


@pytest.mark.parametrize(("target", "ceiling"), TARGETS)
def test_decoded_true_peak_stays_under_the_ceiling_in_every_format(
    speech: tuple[list[bytes], int], target: float, ceiling: float
) -> None:
    sources, rate = speech
    source_ceiling = ceiling - encoder_headroom_db(FORMATS)  # as the service normalizes
    pieces = [LoudnessNormalizer(target, source_ceiling).normalize(p, rate) for p in sources]
    pieces += [
        chime_pcm(name, rate, target_lufs=target, true_peak_dbtp=source_ceiling) for name in CHIMES
    ]
    for pcm in pieces:
        peaks = decoded_peaks(pcm, rate, ceiling)
        assert all(p <= ceiling for p in peaks.values()), peaks


def test_the_per_format_limiters_hold_the_ceiling_on_their_own(
    speech: tuple[list[bytes], int],
) -> None:
    """Even audio normalized to the ceiling itself (no room left for the codecs) is
    brought under it by each format's limiter: Opus alone used to decode at up to
    +0.2 dBTP from such input, 8 kHz PCM and mu-law at -0.3."""
    sources, rate = speech
    for pcm in sources:
        loud = LoudnessNormalizer(-12.0, -1.0).normalize(pcm, rate)
        peaks = decoded_peaks(loud, rate, -1.0)
        assert all(p <= -1.0 for p in peaks.values()), peaks
