"""A streaming true-peak limiter for one stream format, ahead of its encoder.

The loudness normalizer keeps each segment's true peak under the ceiling at the
speech engine's rate. Resampling to a stream format's rate and encoding it can
lift peaks again (Opus reconstructs peaks up to about 2 dB above its input's;
band-limiting to 8 kHz and μ-law quantisation add fractions of a dB), so each
format gets this limiter at its own rate, set below the ceiling by what its
codec adds (``transcode.limiter_ceiling_dbtp``).

How it works, on float samples in blocks of any size:

* **Detection** is true-peak: besides each sample, three points between it and
  the next are interpolated (4× oversampling with a windowed-sinc kernel of
  ``_HALF_TAPS`` samples either side, as BS.1770-4 Annex 2 measures), and the
  gain each sample needs is ``limit / peak`` (at most 1).
* **Gain**: the smallest need over the look-ahead window ahead of a sample and
  the hold window behind it, then averaged over the look-ahead window. Every
  value averaged covers the sample, so the gain at a sample never exceeds what
  that sample needs: the limit holds exactly (up to interpolation error), and
  the gain moves in ramps of ``lookahead_ms`` rather than jumps.
* **Latency**: none on the timeline. Output sample *i* is input sample *i*
  times its gain; it comes out once the input ``lookahead + kernel`` samples
  after it is known, and :meth:`flush` returns the tail (the future is silence).

Pure numpy, O(n) per sample block (running minima by the van Herk/Gil-Werman
method). Not thread-safe; one instance per stream format and announcement.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

_OVERSAMPLING = 4
_HALF_TAPS = 16


def _kernels() -> list[Floats]:
    """Interpolation kernels for the points k/4 (k = 1, 2, 3) after a sample."""
    m = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1, dtype=np.float64)  # offsets of inputs
    out = []
    for k in range(1, _OVERSAMPLING):
        t = m - k / _OVERSAMPLING
        window = 0.5 + 0.5 * np.cos(np.pi * t / (_HALF_TAPS + 1))
        out.append(np.sinc(t) * window)
    return out


_KERNELS = _kernels()


def running_min(x: Floats, before: int, after: int) -> Floats:
    """``out[i] = min(x[i - before : i + after + 1])`` (clamped at the ends), in O(n)."""
    n = x.size
    w = before + after + 1
    if n == 0 or w == 1:
        return x.copy()
    padded = np.concatenate([np.full(before, np.inf), x, np.full(after + w, np.inf)])
    blocks = -(-padded.size // w)
    padded = np.concatenate([padded, np.full(blocks * w - padded.size, np.inf)])
    shaped = padded.reshape(blocks, w)
    prefix = np.minimum.accumulate(shaped, axis=1).reshape(-1)
    suffix = np.minimum.accumulate(shaped[:, ::-1], axis=1)[:, ::-1].reshape(-1)
    idx = np.arange(n)  # window of out[i] starts at padded index i
    return np.minimum(suffix[idx], prefix[idx + w - 1])


class TruePeakLimiter:
    """Keep the true peak of a mono stream at or below ``ceiling_dbtp``."""

    def __init__(
        self,
        sample_rate_hz: int,
        ceiling_dbtp: float,
        *,
        lookahead_ms: float = 2.0,
        hold_ms: float = 20.0,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self.limit = math.pow(10.0, ceiling_dbtp / 20.0)
        self._ahead = max(1, round(lookahead_ms * sample_rate_hz / 1000))
        self._hold = max(0, round(hold_ms * sample_rate_hz / 1000))
        #: Input not yet output, preceded by the context the next outputs need.
        self._buf: Floats = np.zeros(0)
        self._first = 0  # input index of self._buf[0]
        self._out = 0  # input index of the next output sample
        self._fed = 0  # input samples received
        #: Needs of the samples just before the buffer's start are only known through
        #: the buffer: keep this much context behind the next output.
        self._context = self._hold + 2 * self._ahead + 2 * _HALF_TAPS

    def push(self, x: Floats) -> Floats:
        """Add samples; return the limited samples now complete (possibly none)."""
        self._buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        self._fed += x.size
        ready = self._fed - (self._ahead + _HALF_TAPS)
        return self._emit(ready, final=False)

    def flush(self) -> Floats:
        """End of input: the rest, as if silence followed."""
        return self._emit(self._fed, final=True)

    def _emit(self, upto: int, *, final: bool) -> Floats:
        if upto <= self._out:
            return np.zeros(0)
        tail = self._ahead + _HALF_TAPS + 1
        x = np.concatenate([self._buf, np.zeros(tail)]) if final else self._buf
        gain = self._gain(x)
        lo, hi = self._out - self._first, upto - self._first
        y = x[lo:hi] * gain[lo:hi]
        self._out = upto
        keep_from = max(0, self._out - self._context - self._first)
        self._buf = self._buf[keep_from:]
        self._first += keep_from
        return y

    def _gain(self, x: Floats) -> Floats:
        """Gain per sample of ``x`` (valid where enough context surrounds it)."""
        peak = np.abs(x)
        # Interpolated points between x[i] and x[i+1]; beyond the known input, 0.
        for kernel in _KERNELS:
            # full convolution, then align so that between[i] is the point after x[i]
            conv = np.convolve(x, kernel[::-1], mode="full")
            between = np.abs(conv[_HALF_TAPS : _HALF_TAPS + x.size])
            peak = np.maximum(peak, between)
            # the point after x[i-1] lies next to x[i] too
            peak[1:] = np.maximum(peak[1:], between[:-1])
        need = np.minimum(1.0, self.limit / np.maximum(peak, 1e-12))
        held = running_min(need, self._hold, self._ahead - 1)
        # average over the look-ahead window ending at each sample
        csum = np.concatenate([[0.0], np.cumsum(held)])
        a = self._ahead
        idx = np.arange(x.size)
        start = np.maximum(0, idx - a + 1)
        gain: Floats = (csum[idx + 1] - csum[start]) / (idx + 1 - start)
        return gain
