"""Level control for live audio (a page from a microphone): a slow AGC and a
true-peak limiter that work block by block, with 2 ms of delay.

Whole-file normalization (``loudness.LoudnessNormalizer``) needs the whole
segment before the first sample leaves; a live page cannot wait. Instead:

* **AGC**: the loudness of the talker is followed over a sliding window of
  about 3 s (the mean square of 20 ms blocks after a mild first-order pre-emphasis,
  a cheap stand-in for BS.1770 K-weighting, gated: blocks 40 dB below the
  window's level and near-silent blocks are left out so pauses do not pump the
  gain up). The gain moves toward ``target - loudness`` at most
  ``rise_db_per_s`` up and ``fall_db_per_s`` down, within ``[min_gain_db,
  max_gain_db]``. The loudness lands near the target (a test measures it with
  the BS.1770 meter of ``loudness.measure``); it is not exact.
* **Limiter**: the true peak of the gained signal is estimated by 4x
  oversampling (a windowed-sinc interpolator) and the gain is lowered, 1 ms
  sub-block by sub-block, with one sub-block of look-ahead and a 50 ms release,
  so the output's true peak stays at or below ``true_peak_dbtp`` (with a
  ``margin_db`` for the estimate; the guarantee is what a test measures).

Sans-I/O and synchronous (numpy): call :meth:`LiveLeveler.process` from a
worker thread. Input and output are mono s16le PCM; the output lags the input
by :attr:`LiveLeveler.delay_samples` and :meth:`flush` hands out the rest.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

_S16 = 32768.0
_OVERSAMPLE = 4
_TAPS_PER_PHASE = 16
_WINDOW_S = 3.0
_BLOCK_S = 0.02
#: Blocks quieter than this (pre-emphasized mean square, dBFS) are not speech.
_SILENCE_DB = -55.0
_RELATIVE_GATE_DB = 40.0
#: Pre-emphasis ``x[n] - a x[n-1]`` (a mild high-pass in place of K-weighting), and
#: what its gated mean square reads under the BS.1770 loudness of speech (measured
#: on espeak speech with ``loudness.measure``: 1.7 to 2.1 dB).
_EMPHASIS = 0.3
_LUFS_OFFSET_DB = 1.9


def _db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 else -math.inf


def _interpolator() -> Floats:
    """A 4x windowed-sinc interpolation filter (64 taps, Kaiser window)."""
    n = _OVERSAMPLE * _TAPS_PER_PHASE
    t = (np.arange(n) - (n - 1) / 2) / _OVERSAMPLE
    h: Floats = np.sinc(t) * np.kaiser(n, 8.0)
    # Each phase sums to ~1 so a DC level passes unchanged.
    out: Floats = h * (_OVERSAMPLE / float(h.sum()))
    return out


class LiveLeveler:
    """AGC plus true-peak limiter for one live page (use a new one per page)."""

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        target_lufs: float = -16.0,
        true_peak_dbtp: float = -1.0,
        margin_db: float = 0.5,
        initial_gain_db: float = 0.0,
        min_gain_db: float = -20.0,
        max_gain_db: float = 24.0,
        rise_db_per_s: float = 10.0,
        fall_db_per_s: float = 40.0,
        release_ms: float = 50.0,
    ) -> None:
        self.rate = sample_rate_hz
        self.target_lufs = target_lufs
        self.ceiling = 10.0 ** ((true_peak_dbtp - margin_db) / 20.0)
        self.gain_db = initial_gain_db
        self.min_gain_db, self.max_gain_db = min_gain_db, max_gain_db
        self.rise_db_per_s, self.fall_db_per_s = rise_db_per_s, fall_db_per_s
        self.sub = max(1, sample_rate_hz // 1000)  # 1 ms sub-blocks
        self._release = math.exp(-self.sub / (sample_rate_hz * release_ms / 1000.0))
        self._h = _interpolator()
        self._hist = np.zeros(_TAPS_PER_PHASE, dtype=np.float64)
        self._prev_x = 0.0
        self._blocks: deque[float] = deque(maxlen=int(_WINDOW_S / _BLOCK_S))
        self._pending = np.zeros(0, dtype=np.float64)  # gained, not yet limited
        self._pending_peaks = np.zeros(0, dtype=np.float64)
        self._pending_req: list[float] = []
        self._lim_gain = 1.0
        self._prev_lim = 1.0
        #: The largest reduction the limiter applied so far (dB, >= 0).
        self.max_reduction_db = 0.0

    @property
    def delay_samples(self) -> int:
        return 2 * self.sub

    # --- AGC ------------------------------------------------------------------------------

    def _loudness_db(self) -> float | None:
        if not self._blocks:
            return None
        levels = np.array(self._blocks)
        top = float(levels.max())
        kept = levels[levels >= top - _RELATIVE_GATE_DB]
        return _db(float(np.mean(10.0 ** (kept / 10.0))))

    def _agc(self, x: Floats) -> Floats:
        """The block with the AGC gain applied (ramped from the previous gain)."""
        block = int(self.rate * _BLOCK_S)
        out = np.empty_like(x)
        start = 0
        while start < len(x):
            part = x[start : start + block]
            emph = part - _EMPHASIS * np.concatenate(([self._prev_x], part[:-1]))
            self._prev_x = float(part[-1])
            level = _db(float(np.mean((emph / _S16) ** 2)) + 1e-20)
            if level > _SILENCE_DB:
                self._blocks.append(level)
            before = self.gain_db
            loud = self._loudness_db()
            if loud is not None and level > _SILENCE_DB:
                wanted = self.target_lufs - (loud + _LUFS_OFFSET_DB)
                dt = len(part) / self.rate
                step = wanted - self.gain_db
                step = min(step, self.rise_db_per_s * dt) if step > 0 else step
                step = max(step, -self.fall_db_per_s * dt)
                self.gain_db = min(self.max_gain_db, max(self.min_gain_db, self.gain_db + step))
            ramp = np.linspace(before, self.gain_db, len(part), endpoint=False)
            out[start : start + len(part)] = part * 10.0 ** (ramp / 20.0)
            start += len(part)
        return out

    # --- limiter --------------------------------------------------------------------------

    def _true_peaks(self, y: Floats) -> Floats:
        """Per input sample: the largest oversampled magnitude around it."""
        ext = np.concatenate((self._hist, y))
        self._hist = ext[-_TAPS_PER_PHASE:]
        up = np.zeros(len(ext) * _OVERSAMPLE)
        up[::_OVERSAMPLE] = ext
        over = np.convolve(up, self._h, mode="same")
        mags = np.abs(over).reshape(-1, _OVERSAMPLE).max(axis=1)
        # The filter is centred: sample i of ext sits at over[4i]; keep y's part, and
        # also take the sample itself (never under-read a plain peak).
        peaks: Floats = np.maximum(mags[_TAPS_PER_PHASE:], np.abs(y))
        # Look one sample either side (the interpolated peak lies between samples).
        peaks = np.maximum(peaks, np.concatenate((peaks[1:], peaks[-1:])))
        return np.maximum(peaks, np.concatenate((peaks[:1], peaks[:-1])))

    def _limit(self, y: Floats, final: bool) -> Floats:
        """Limit the gained signal; returns what is ready (one sub-block is held back)."""
        peaks = self._true_peaks(y) if len(y) else np.zeros(0)
        sub = self.sub
        self._pending = np.concatenate((self._pending, y))
        self._pending_peaks = np.concatenate((self._pending_peaks, peaks))
        n_full = len(self._pending) // sub
        reqs = []
        for i in range(n_full):
            pk = float(self._pending_peaks[i * sub : (i + 1) * sub].max()) / _S16
            reqs.append(1.0 if pk <= self.ceiling else self.ceiling / pk)
        if final and len(self._pending) % sub:
            pk = float(self._pending_peaks[n_full * sub :].max()) / _S16
            reqs.append(1.0 if pk <= self.ceiling else self.ceiling / pk)
        all_req = self._pending_req + reqs[len(self._pending_req) :]
        # Sub-block k's gain: the smallest need of k-1, k, k+1 (look-ahead of one),
        # released smoothly upward; the samples in between are interpolated.
        ready = len(all_req) if final else len(all_req) - 1
        out = []
        for k in range(max(0, ready)):
            need = min(all_req[max(0, k - 1) : k + 2])
            g = min(need, 1.0 - (1.0 - self._lim_gain) * self._release)
            seg = self._pending[k * sub : (k + 1) * sub]
            ramp = np.linspace(self._prev_lim, g, len(seg) + 1)[1:] if len(seg) else seg
            # Both ends of the ramp are within this sub-block's and its neighbours' need.
            ramp = np.minimum(ramp, need)
            out.append(seg * ramp)
            self._prev_lim = self._lim_gain = g
            if g < 1.0:
                self.max_reduction_db = max(self.max_reduction_db, -20.0 * math.log10(g))
        used = max(0, ready)
        self._pending = self._pending[used * sub :]
        self._pending_peaks = self._pending_peaks[used * sub :]
        self._pending_req = all_req[used:]
        return np.concatenate(out) if out else np.zeros(0)

    # --- public ---------------------------------------------------------------------------

    def process(self, pcm: bytes) -> bytes:
        """Level one block of mono s16le; returns the audio ready so far (delayed)."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        return _to_s16(self._limit(self._agc(x) if len(x) else x, final=False))

    def flush(self) -> bytes:
        """The audio still held back (end of the page)."""
        return _to_s16(self._limit(np.zeros(0), final=True))


def _to_s16(y: Floats) -> bytes:
    return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())
