"""How much faster than real time does transcoding run, per stream format?

Feeds 60 s of a speech-like 22.05 kHz signal (a gliding tone with a noisy,
syllable-rate envelope) in 100 ms pieces, as a TTS engine would deliver it,
and reports audio seconds per second of wall and CPU time, single-threaded.

    python bench/transcode.py [--seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run as a plain script from a checkout: the package need not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broadcaster.audio.transcode import MultiTranscoder, Transcoder
from broadcaster.model import CODEC_RATES_HZ, StreamFormat

SOURCE_RATE_HZ = 22050
PIECE_MS = 100


def speech_like(seconds: float, rate_hz: int, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    # A pitch gliding between 100 and 300 Hz, with a few harmonics like a voice.
    pitch = 200 + 100 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate_hz
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    # About four syllables a second, with pauses, plus breath noise.
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 2
    signal = envelope * (0.6 * voiced + 0.1 * rng.standard_normal(t.size))
    pcm: bytes = (signal / np.max(np.abs(signal)) * 20000).astype("<i2").tobytes()
    return pcm


def pieces(pcm: bytes, rate_hz: int) -> list[bytes]:
    step = rate_hz * PIECE_MS // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def measure(run: Callable[[], None], repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run()
        best_wall = min(best_wall, time.perf_counter() - wall0)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    audio = pieces(speech_like(args.seconds, SOURCE_RATE_HZ), SOURCE_RATE_HZ)
    formats = [
        StreamFormat(codec=codec, sample_rate_hz=rate, frame_ms=20)
        for codec, rates in CODEC_RATES_HZ.items()
        for rate in rates
    ]

    def single(fmt: StreamFormat) -> None:
        tc = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ)
        for piece in audio:
            tc.push(piece)
        tc.flush()

    def multi() -> None:
        mt = MultiTranscoder(formats, SOURCE_RATE_HZ)
        for piece in audio:
            mt.push(piece)
        mt.flush()

    print(
        f"{args.seconds:g} s of {SOURCE_RATE_HZ} Hz speech-like PCM in {PIECE_MS} ms pieces, "
        f"best of {args.repeat}, 20 ms frames"
    )
    print(f"{'format':<22}{'wall s':>9}{'cpu s':>9}{'x realtime':>12}{'x rt (cpu)':>12}")
    rows: list[tuple[str, Callable[[], None]]] = [
        (fmt.key, functools.partial(single, fmt)) for fmt in formats
    ]
    rows.append((f"multi ({len(formats)} formats)", multi))
    for name, run in rows:
        wall, cpu = measure(run, args.repeat)
        print(
            f"{name:<22}{wall:>9.3f}{cpu:>9.3f}"
            f"{args.seconds / wall:>12.0f}{args.seconds / max(cpu, 1e-9):>12.0f}"
        )


if __name__ == "__main__":
    main()
