"""Decoded true peak per stream format: what an endpoint actually plays.

Synthesizes a few texts with espeak-ng in several voices, normalizes them as the
announcer does (speech and chimes, at several loudness targets), encodes them in
every format the server offers and decodes them again to float (so Opus peaks
above full scale are not clipped). Prints the highest true peak (4x oversampled)
per format. The README promises <= -1 dBTP for every format.

    .venv/bin/python bench/true_peak.py          # as the service encodes now
    .venv/bin/python bench/true_peak.py --raw    # without headroom and limiters
"""

from __future__ import annotations

import asyncio
import math
import sys
import time

import numpy as np

from broadcaster.audio.chimes import CHIMES, chime_pcm
from broadcaster.audio.decode import decode_to_floats
from broadcaster.audio.loudness import LoudnessNormalizer, true_peak_dbtp_of
from broadcaster.audio.transcode import MultiTranscoder, encoder_headroom_db
from broadcaster.model import SpeechRequest, StreamFormat
from broadcaster.speech.espeak import EspeakEngine

FORMATS = [
    StreamFormat.parse(k)
    for k in (
        "opus/48000",
        "pcm_s16le/48000",
        "pcm_s16le/24000",
        "pcm_s16le/16000",
        "pcm_s16le/8000",
        "pcm_mulaw/8000",
    )
]
TEXTS = [
    ("The 10:15 to Cambridge will depart from platform 2.", "ryan", "English"),
    ("Attention please! Stand clear of the closing doors.", "vivian", "English"),
    ("Der Zug nach Berlin fährt heute von Gleis sieben ab.", "uncle_fu", "German"),
    ("Mind the gap between the train and the platform edge.", "ono_anna", "English"),
    ("Le train à destination de Paris partira voie quatre.", "eric", "French"),
]
#: --raw: as before the fix: normalized to the ceiling itself, no limiter per format.
RAW = "--raw" in sys.argv
TARGETS = [(-16.0, -1.0), (-12.0, -1.0), (-23.0, -1.0), (-14.0, -2.0), (-10.0, -1.0)]


async def speech(engine: EspeakEngine, text: str, voice: str, language: str) -> bytes:
    req = SpeechRequest(text=text, voice=voice, language=language)
    return b"".join([b.samples async for b in engine.synthesize(req)])


def decoded_peaks(pcm: bytes, rate: int, ceiling: float | None) -> dict[str, float]:
    multi = MultiTranscoder(FORMATS, source_rate_hz=rate, true_peak_dbtp=ceiling)
    frames = {k: list(v) for k, v in multi.push(pcm).items()}
    for k, v in multi.flush().items():
        frames[k].extend(v)
    out = {}
    for fmt in FORMATS:
        x = decode_to_floats(fmt, [f.payload for f in frames[fmt.key]])
        out[fmt.key] = true_peak_dbtp_of(x, fmt.sample_rate_hz)
    return out


async def main() -> int:
    engine = EspeakEngine()
    rate = engine.sample_rate_hz
    worst: dict[str, float] = {f.key: -math.inf for f in FORMATS}
    worst_ceiling_gap: dict[str, float] = {f.key: -math.inf for f in FORMATS}
    started = time.perf_counter()
    sources = [await speech(engine, *t) for t in TEXTS]
    await engine.aclose()
    for target, ceiling in TARGETS:
        # as the service does: speech and chimes normalized below the ceiling by the
        # largest headroom of the formats offered, then a limiter per format
        source = ceiling if RAW else ceiling - encoder_headroom_db(FORMATS)
        pieces = []
        for pcm in sources:
            pieces.append(LoudnessNormalizer(target, source).normalize(pcm, rate))
        for name in CHIMES:
            pieces.append(chime_pcm(name, rate, target_lufs=target, true_peak_dbtp=source))
        for pcm in pieces:
            for key, peak in decoded_peaks(pcm, rate, None if RAW else ceiling).items():
                worst[key] = max(worst[key], peak)
                worst_ceiling_gap[key] = max(worst_ceiling_gap[key], peak - ceiling)
    print(f"{len(TEXTS)} texts + {len(CHIMES)} chimes x {len(TARGETS)} targets")
    print(f"{'format':18} {'max dBTP':>9} {'max over ceiling':>17}")
    for key in worst:
        print(f"{key:18} {worst[key]:9.2f} {worst_ceiling_gap[key]:17.2f}")
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0 if all(g <= 0.0 for g in worst_ceiling_gap.values()) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(asyncio.run(main()))
