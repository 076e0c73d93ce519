"""Level control for live audio (a page from a microphone): a slow AGC and a
true-peak limiter that work block by block, with 2 ms of delay.

Whole-file normalization (``loudness.LoudnessNormalizer``) needs the whole
segment before the first sample leaves; a live page cannot wait. Instead:

* **AGC**: the loudness of the talker is followed over a sliding window of
  about 3 s: the mean square of 20 ms blocks after BS.1770 K-weighting (its two
  biquads, run on the signal averaged down to about 12 kHz to keep the cost
  low), gated as BS.1770 gates them (400 ms blocks, -70 LUFS and -10 LU), and the
  gain holds while the talker pauses. The gain moves toward ``target - loudness`` at most
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
#: While a 20 ms block is quieter than this (K-weighted, LUFS) the gain holds.
_SILENCE_DB = -60.0
#: The K-weighting filters run at the rate divided by this (about 12 kHz).
_KW_RATE_HZ = 12000


def _biquads(rate: int) -> list[tuple[float, float, float, float, float]]:
    """BS.1770's K-weighting at ``rate``: a high shelf (+4 dB above ~1.7 kHz) and a
    high-pass at 38 Hz, as (b0, b1, b2, a1, a2) normalized by a0 (RBJ forms)."""
    out = []
    # High shelf.
    w0 = 2 * math.pi * 1681.974450955533 / rate
    a = 10 ** (3.999843853973347 / 40)
    alpha = math.sin(w0) / (2 * 0.7071752369554196)
    c, sa = math.cos(w0), 2 * math.sqrt(a) * alpha
    a0 = (a + 1) - (a - 1) * c + sa
    out.append(
        (
            a * ((a + 1) + (a - 1) * c + sa) / a0,
            -2 * a * ((a - 1) + (a + 1) * c) / a0,
            a * ((a + 1) + (a - 1) * c - sa) / a0,
            2 * ((a - 1) - (a + 1) * c) / a0,
            ((a + 1) - (a - 1) * c - sa) / a0,
        )
    )
    # High-pass.
    w0 = 2 * math.pi * 38.13547087602444 / rate
    alpha = math.sin(w0) / (2 * 0.5003270373238773)
    c = math.cos(w0)
    a0 = 1 + alpha
    out.append(((1 + c) / 2 / a0, -(1 + c) / a0, (1 + c) / 2 / a0, -2 * c / a0, (1 - alpha) / a0))
    return out


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
        self._decimate = max(1, sample_rate_hz // _KW_RATE_HZ)
        self._kw = _biquads(sample_rate_hz // self._decimate)
        self._kw_state = [[0.0, 0.0] for _ in self._kw]
        self._kw_carry = np.zeros(0, dtype=np.float64)
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

    def _noise_floor_db(self) -> float:
        """The quieter end of the window (its 10th percentile of 20 ms blocks): a block
        less than 10 dB above it is background, and does not move the gain (an open
        microphone with nobody speaking is not raised to the target)."""
        ms = np.array(self._blocks)
        floor = float(np.percentile(ms, 10)) if len(ms) else 0.0
        return -0.691 + _db(floor)

    def _loudness_db(self) -> float | None:
        """BS.1770 gated loudness of the window: 400 ms blocks (75 % overlap) made of
        the 20 ms mean squares, the -70 LUFS absolute and -10 LU relative gates."""
        if not self._blocks:
            return None
        ms = np.array(self._blocks)
        per = int(0.4 / _BLOCK_S)
        if len(ms) >= per:
            ms = np.lib.stride_tricks.sliding_window_view(ms, per)[:: per // 4].mean(axis=1)
        else:
            ms = np.array([ms.mean()])
        with np.errstate(divide="ignore"):
            lufs = -0.691 + 10.0 * np.log10(ms)
        kept = ms[lufs > -70.0]
        if not len(kept):
            return None
        relative = -0.691 + 10.0 * math.log10(float(kept.mean())) - 10.0
        kept = ms[(lufs > -70.0) & (lufs > relative)]
        return -0.691 + 10.0 * math.log10(float(kept.mean()))

    def _agc(self, x: Floats) -> Floats:
        """The block with the AGC gain applied (ramped from the previous gain)."""
        block = int(self.rate * _BLOCK_S)
        out = np.empty_like(x)
        start = 0
        while start < len(x):
            part = x[start : start + block]
            ms = self._k_weighted_ms(part)
            level = -0.691 + _db(ms)
            self._blocks.append(ms)
            before = self.gain_db
            loud = self._loudness_db()
            if loud is not None and level > _SILENCE_DB and level > self._noise_floor_db() + 10:
                wanted = self.target_lufs - loud
                dt = len(part) / self.rate
                step = wanted - self.gain_db
                step = min(step, self.rise_db_per_s * dt) if step > 0 else step
                step = max(step, -self.fall_db_per_s * dt)
                self.gain_db = min(self.max_gain_db, max(self.min_gain_db, self.gain_db + step))
            ramp = np.linspace(before, self.gain_db, len(part), endpoint=False)
            out[start : start + len(part)] = part * 10.0 ** (ramp / 20.0)
            start += len(part)
        return out

    def _k_weighted_ms(self, part: Floats) -> float:
        """The block's K-weighted mean square (its loudness is -0.691 + 10 log10)."""
        d = self._decimate
        x = np.concatenate((self._kw_carry, part / _S16))
        usable = len(x) // d * d
        self._kw_carry = x[usable:]
        y = x[:usable].reshape(-1, d).mean(axis=1).tolist() if usable else []
        for (b0, b1, b2, a1, a2), state in zip(self._kw, self._kw_state, strict=True):
            z1, z2 = state
            out = []
            for v in y:  # transposed direct form II
                o = b0 * v + z1
                z1 = b1 * v - a1 * o + z2
                z2 = b2 * v - a2 * o
                out.append(o)
            state[0], state[1] = z1, z2
            y = out
        return float(np.mean(np.square(y))) if y else 0.0

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
