"""Loudness normalization: levels, true peak, gain between segments, edge cases.

Levels are read with the module's own ``measure`` (FFmpeg's ``ebur128``
filter) and cross-checked with FFmpeg's ``loudnorm`` analysis, a separate
BS.1770 implementation (a port of libebur128, measuring after resampling to
192 kHz), run through ``av.filter.loudnorm.stats`` on a WAV in memory.
"""

from __future__ import annotations

import io
import json
import math
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.filter.loudnorm import stats as loudnorm_stats

from broadcaster.audio.loudness import LoudnessNormalizer, LoudnessReport, measure

Floats = npt.NDArray[np.float64]

TARGET = -16.0
CEILING = -1.0


# -- test signals -------------------------------------------------------------


def _syllables(rate: int, seconds: float, rng: np.random.Generator, ramp_s: float) -> Floats:
    """Envelope of syllable-like bursts (120–350 ms) with pauses (40–200 ms)."""
    n = int(rate * seconds)
    env = np.zeros(n)
    pos = int(rate * 0.05)
    while pos < n:
        length = int(rate * rng.uniform(0.12, 0.35))
        ramp = max(2, min(int(rate * ramp_s), length // 2))
        burst = np.ones(length) * rng.uniform(0.7, 1.0)
        fade = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
        burst[:ramp] *= fade
        burst[-ramp:] *= fade[::-1]
        end = min(n, pos + length)
        env[pos:end] = burst[: end - pos]
        pos += length + int(rate * rng.uniform(0.04, 0.2))
    return env


def modulated_tone(rate: int, seconds: float, seed: int = 0) -> Floats:
    """Voiced-speech stand-in: a gliding 3-harmonic tone in syllable bursts."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 160.0 + 40.0 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    return voice * _syllables(rate, seconds, rng, ramp_s=0.02)


def noise_bursts(rate: int, seconds: float, seed: int = 0) -> Floats:
    """Unvoiced-speech stand-in: gently low-passed white noise in syllable bursts."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    noise = np.convolve(rng.standard_normal(n), np.ones(3) / 3, mode="same")
    return noise * _syllables(rate, seconds, rng, ramp_s=0.01)


def peaky_speech(rate: int, seconds: float, seed: int = 0) -> Floats:
    """Speech with realistic crest: buzzy pulse-train vowels plus noise, Hann syllables.

    Its true peak sits about 19 dB above its loudness, so at −16 LUFS it
    needs about 4 dB of limiting to stay under −1 dBTP.
    """
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    harmonics = [k for k in range(1, 30) if k * 180 < 0.45 * rate]
    voice = sum(np.sin(k * phase) / k for k in harmonics)
    env = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rate * rng.uniform(0.12, 0.3))
        end = min(n, pos + length)
        env[pos:end] = (np.hanning(length) * rng.uniform(0.3, 1.0))[: end - pos]
        pos += length + int(rate * rng.uniform(0.03, 0.15))
    sig = (0.5 * np.asarray(voice) + 0.3 * rng.standard_normal(n) * (env > 0.6)) * env
    return np.asarray(sig / np.max(np.abs(sig)), dtype=np.float64)


def to_pcm(x: Floats) -> bytes:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()


def samples(pcm: bytes) -> Floats:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768


def at_level(x: Floats, rate: int, lufs: float) -> bytes:
    """Scale ``x`` to ``lufs`` (clipping at full scale, rescaling until it fits)."""
    pcm = to_pcm(x)
    for _ in range(6):
        got = measure(pcm, rate).integrated_lufs
        if abs(got - lufs) < 0.05:
            break
        x = np.clip(x * 10 ** ((lufs - got) / 20), -1.0, 1.0)
        pcm = to_pcm(x)
    assert measure(pcm, rate).integrated_lufs == pytest.approx(lufs, abs=0.1)
    return pcm


def loudnorm_measure(pcm: bytes, rate: int) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) from FFmpeg's loudnorm analysis pass."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    buf.seek(0)
    with av.open(buf) as container:
        result = json.loads(loudnorm_stats("i=-16:tp=-1:lra=11", container.streams.audio[0]))
    return float(result["input_i"]), float(result["input_tp"])


# -- measurement ----------------------------------------------------------------


def test_measure_sine_matches_bs1770_reference() -> None:
    # BS.1770: a 997 Hz sine at 0 dBFS peak reads -3.01 LUFS; its true peak is its amplitude.
    rate = 48000
    t = np.arange(rate * 5) / rate
    amplitude = 10 ** (-20 / 20)
    report = measure(to_pcm(amplitude * np.sin(2 * np.pi * 997 * t)), rate)
    assert report == LoudnessReport(report.integrated_lufs, report.true_peak_dbtp, False)
    assert report.integrated_lufs == pytest.approx(-23.01, abs=0.05)
    assert report.true_peak_dbtp == pytest.approx(-20.0, abs=0.05)


def test_true_peak_sees_inter_sample_peaks() -> None:
    # A quarter-rate sine sampled 45 degrees off its crests: every sample is at
    # 0.707 of the amplitude, the true peak 3 dB higher.  (Faded in and out:
    # an abrupt start rings above the amplitude in the reconstruction.)
    rate = 24000
    t = np.arange(rate * 2) / rate
    fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, rate // 20))
    x = 0.9 * np.sin(2 * np.pi * (rate / 4) * t + np.pi / 4)
    x[: fade.size] *= fade
    x[-fade.size :] *= fade[::-1]
    pcm = to_pcm(x)
    assert 20 * math.log10(np.max(np.abs(samples(pcm)))) == pytest.approx(-3.93, abs=0.05)
    assert measure(pcm, rate).true_peak_dbtp == pytest.approx(20 * math.log10(0.9), abs=0.1)


def test_measure_silence() -> None:
    report = measure(bytes(2 * 24000), 24000)
    assert report.integrated_lufs == -math.inf
    assert report.true_peak_dbtp == -math.inf


def test_short_clip_uses_loudness_over_its_own_length() -> None:
    rate = 24000
    t = np.arange(int(rate * 0.25)) / rate
    tone = 0.1 * np.sin(2 * np.pi * 997 * t)
    short = measure(to_pcm(tone), rate)
    assert short.estimated
    assert short.integrated_lufs == pytest.approx(-23.01, abs=0.1)
    long_tone = 0.1 * np.sin(2 * np.pi * 997 * np.arange(rate * 3) / rate)
    assert not measure(to_pcm(long_tone), rate).estimated


def test_measure_agrees_with_loudnorm_analysis() -> None:
    rate = 24000
    pcm = to_pcm(0.3 * peaky_speech(rate, 8, seed=3))
    ours = measure(pcm, rate)
    their_i, their_tp = loudnorm_measure(pcm, rate)
    assert ours.integrated_lufs == pytest.approx(their_i, abs=0.3)
    assert ours.true_peak_dbtp == pytest.approx(their_tp, abs=0.3)


# -- normalization to the target --------------------------------------------------------


@pytest.mark.parametrize("rate", [22050, 24000])
@pytest.mark.parametrize("level", [-30.0, -6.0])
@pytest.mark.parametrize("signal", [modulated_tone, noise_bursts], ids=["tone", "noise"])
def test_speech_like_levels_come_out_at_target(
    signal: Callable[..., Floats], level: float, rate: int
) -> None:
    pcm = at_level(signal(rate, 6.0, seed=1), rate, level)
    out = LoudnessNormalizer(TARGET, CEILING).normalize(pcm, rate)

    assert len(out) == len(pcm)
    report = measure(out, rate)
    assert report.integrated_lufs == pytest.approx(TARGET, abs=1.0)
    assert report.true_peak_dbtp <= CEILING
    # Independent check of the same output.
    their_i, their_tp = loudnorm_measure(out, rate)
    assert their_i == pytest.approx(TARGET, abs=1.0)
    assert their_i == pytest.approx(report.integrated_lufs, abs=0.3)
    assert their_tp <= CEILING + 0.1  # loudnorm prints two decimals of its own meter


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_peaky_speech_is_limited_to_the_ceiling_at_target_loudness(rate: int) -> None:
    pcm = at_level(0.9 * peaky_speech(rate, 6.0, seed=2), rate, -20.0)
    # Raised by 4 dB it would peak at least 1.5 dB over the ceiling.
    assert measure(pcm, rate).true_peak_dbtp + 4.0 > CEILING + 1.5

    out = LoudnessNormalizer(TARGET, CEILING).normalize(pcm, rate)

    report = measure(out, rate)
    assert report.true_peak_dbtp <= CEILING
    assert report.integrated_lufs == pytest.approx(TARGET, abs=0.5)
    their_i, their_tp = loudnorm_measure(out, rate)
    assert their_i == pytest.approx(TARGET, abs=1.0)
    assert their_tp <= CEILING + 0.1


def test_limiter_keeps_timing() -> None:
    # Gain and latency-compensated limiting: the output is the input scaled,
    # sample for sample, apart from the limited peaks.
    rate = 24000
    pcm = at_level(peaky_speech(rate, 4.0, seed=4), rate, -12.0)
    out = samples(LoudnessNormalizer(TARGET, CEILING).normalize(pcm, rate))
    x = samples(pcm)
    lags = range(-8, 9)
    correlation = [float(np.dot(np.roll(x, lag), out)) for lag in lags]
    assert lags[int(np.argmax(correlation))] == 0


def test_other_targets() -> None:
    rate = 16000
    pcm = at_level(modulated_tone(rate, 5.0), rate, -30.0)
    out = LoudnessNormalizer(-23.0, -2.0).normalize(pcm, rate)
    report = measure(out, rate)
    assert report.integrated_lufs == pytest.approx(-23.0, abs=0.5)
    assert report.true_peak_dbtp <= -2.0


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 48000])
@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.0, 2.71])
def test_length_and_rate_preserved(rate: int, seconds: float) -> None:
    pcm = to_pcm(0.5 * peaky_speech(rate, seconds, seed=5))
    out = LoudnessNormalizer().normalize(pcm, rate)
    assert len(out) == len(pcm)
    assert measure(out, rate).true_peak_dbtp <= CEILING


def test_short_segment_alone_is_normalized() -> None:
    rate = 24000
    t = np.arange(int(rate * 0.3)) / rate
    pcm = to_pcm(0.02 * np.sin(2 * np.pi * 440 * t) * np.hanning(t.size))
    out = LoudnessNormalizer().normalize(pcm, rate)
    report = measure(out, rate)
    assert report.estimated
    assert report.integrated_lufs == pytest.approx(TARGET, abs=0.5)


# -- silence and bad input -----------------------------------------------------------


def test_silence_stays_silence() -> None:
    normalizer = LoudnessNormalizer()
    quiet = bytes(2 * 24000)
    assert normalizer.normalize(quiet, 24000) == quiet
    assert normalizer.gain_db is None
    # Also between speech segments, where it keeps the speech's gain.
    normalizer.normalize(at_level(modulated_tone(24000, 3.0), 24000, -30.0), 24000)
    gain = normalizer.gain_db
    assert normalizer.normalize(quiet, 24000) == quiet
    assert normalizer.normalize(bytes(2 * 100), 24000) == bytes(2 * 100)
    assert normalizer.gain_db == gain


def test_empty_and_bad_input() -> None:
    normalizer = LoudnessNormalizer()
    assert normalizer.normalize(b"", 24000) == b""
    with pytest.raises(ValueError, match="odd length"):
        normalizer.normalize(b"\x00\x00\x00", 24000)
    with pytest.raises(ValueError, match="sample_rate_hz"):
        normalizer.normalize(bytes(100), 0)
    with pytest.raises(ValueError, match="odd length"):
        measure(b"\x01", 24000)
    with pytest.raises(ValueError, match="target_lufs"):
        LoudnessNormalizer(target_lufs=3.0)
    with pytest.raises(ValueError, match="true_peak_dbtp"):
        LoudnessNormalizer(true_peak_dbtp=1.0)


# -- gain between consecutive segments ------------------------------------------------


def test_consecutive_segments_of_different_levels_end_up_alike() -> None:
    rate = 24000
    normalizer = LoudnessNormalizer()
    levels = [-30.0, -22.0, -8.0, -14.0, -20.0]
    outs = [
        measure(
            normalizer.normalize(at_level(modulated_tone(rate, 3.0, seed=i), rate, lvl), rate),
            rate,
        ).integrated_lufs
        for i, lvl in enumerate(levels)
    ]
    assert outs == pytest.approx([TARGET] * len(levels), abs=1.0)
    assert max(outs) - min(outs) < 1.0


def test_gain_falls_at_once_but_rises_by_at_most_max_rise() -> None:
    rate = 24000
    normalizer = LoudnessNormalizer(max_rise_db=10.0)
    loud = at_level(modulated_tone(rate, 3.0), rate, -6.0)
    quiet = at_level(modulated_tone(rate, 3.0, seed=1), rate, -36.0)

    normalizer.normalize(quiet, rate)
    assert normalizer.gain_db == pytest.approx(20.0, abs=0.1)
    out = normalizer.normalize(loud, rate)  # falls by 30 dB at once
    assert normalizer.gain_db == pytest.approx(-10.0, abs=0.1)
    assert measure(out, rate).integrated_lufs == pytest.approx(TARGET, abs=0.3)

    out = normalizer.normalize(quiet, rate)  # wants +20 dB, gets -10 + 10
    assert normalizer.gain_db == pytest.approx(0.0, abs=0.1)
    assert measure(out, rate).integrated_lufs == pytest.approx(-36.0, abs=0.3)
    normalizer.normalize(quiet, rate)
    assert normalizer.gain_db == pytest.approx(10.0, abs=0.1)

    normalizer.reset()  # a new announcement starts from scratch
    out = normalizer.normalize(quiet, rate)
    assert measure(out, rate).integrated_lufs == pytest.approx(TARGET, abs=0.3)


def test_short_segments_move_the_gain_up_only_part_of_the_way() -> None:
    rate = 24000
    normalizer = LoudnessNormalizer(full_trust_s=2.0)
    normalizer.normalize(at_level(modulated_tone(rate, 3.0), rate, -16.0), rate)
    assert normalizer.gain_db == pytest.approx(0.0, abs=0.1)
    # 0.5 s at -22 LUFS wants +6 dB; trusted a quarter: +1.5 dB.
    t = np.arange(rate // 2) / rate
    short = to_pcm(0.05 * np.sin(2 * np.pi * 300 * t) * np.hanning(t.size))
    wanted = TARGET - measure(short, rate).integrated_lufs
    normalizer.normalize(short, rate)
    assert normalizer.gain_db == pytest.approx(wanted * 0.25, abs=0.1)


def test_instances_work_in_parallel_threads() -> None:
    rate = 22050
    segments = [at_level(noise_bursts(rate, 2.0, seed=s), rate, -25.0 + s) for s in range(4)]
    expected = [LoudnessNormalizer().normalize(seg, rate) for seg in segments]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda seg: LoudnessNormalizer().normalize(seg, rate), segments))
    assert got == expected
