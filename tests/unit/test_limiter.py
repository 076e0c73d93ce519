"""The streaming true-peak limiter ahead of each format's encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest

from broadcaster.audio.limiter import TruePeakLimiter, running_min
from broadcaster.audio.loudness import true_peak_dbtp_of

RATE = 8000


def run(limiter: TruePeakLimiter, x: np.ndarray, pieces: list[int]) -> np.ndarray:
    out, pos = [], 0
    for n in pieces:
        out.append(limiter.push(x[pos : pos + n]))
        pos += n
    out.append(limiter.push(x[pos:]))
    out.append(limiter.flush())
    return np.concatenate(out)


def test_running_min_matches_the_definition() -> None:
    rng = np.random.default_rng(1)
    x = rng.random(97)
    for before, after in [(0, 0), (3, 0), (0, 4), (5, 2), (40, 70)]:
        got = running_min(x, before, after)
        want = [x[max(0, i - before) : i + after + 1].min() for i in range(x.size)]
        assert np.array_equal(got, np.array(want))


def test_quiet_audio_passes_unchanged_and_on_time() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.3, 0.3, 5000)
    y = run(TruePeakLimiter(RATE, -1.0), x, [1, 333, 7, 1200])
    assert y.size == x.size  # no delay, nothing lost at the end
    assert np.array_equal(y, x)


def test_inter_sample_peaks_are_held_under_the_ceiling() -> None:
    # A quarter-rate sine sampled 45 degrees off its crests: every sample is at 0.707 of
    # the true peak, which is at full scale, so a sample-peak limiter would see nothing.
    n = np.arange(4000)
    x = np.sin(2 * np.pi * n / 4 + np.pi / 4) * np.where((n > 1000) & (n < 3000), 1.0, 0.2)
    assert np.abs(x).max() < 0.71 and true_peak_dbtp_of(x, RATE) > -0.1
    y = run(TruePeakLimiter(RATE, -3.0), x, [500, 501, 1999])
    assert y.size == x.size
    assert true_peak_dbtp_of(y, RATE) <= -3.0 + 0.05
    # the quiet parts around the burst are untouched (the gain recovers after the hold)
    assert np.allclose(y[:900], x[:900]) and np.allclose(y[3200:], x[3200:])


@pytest.mark.parametrize("pieces", [[1] * 50, [4000], [17, 250, 3, 999]])
def test_the_result_does_not_depend_on_how_the_input_is_cut(pieces: list[int]) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, 4000)
    whole = run(TruePeakLimiter(RATE, -1.0), x, [])
    assert np.allclose(run(TruePeakLimiter(RATE, -1.0), x, pieces), whole, atol=1e-12)
    assert true_peak_dbtp_of(whole, RATE) <= -1.0 + 0.05
    assert math.isclose(TruePeakLimiter(RATE, -1.0).limit, 10 ** (-1 / 20))
