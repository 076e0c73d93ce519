"""Loudness normalization of announcement audio (EBU R128 / ITU-R BS.1770).

Every speech segment and chime is brought to one integrated loudness (default
−16 LUFS) with its true peak at or below a ceiling (default −1 dBTP), so that
voices, engines and chimes play at one level.

The DSP is FFmpeg's, driven through PyAV filter graphs; nothing here
re-implements K-weighting, gating or limiting:

* **Integrated loudness**: the ``ebur128`` filter (BS.1770-4: K-weighting,
  400 ms blocks with 75 % overlap, −70 LUFS absolute and −10 LU relative gate).
  A mono signal counts as one channel with weight 1.0 (PA speakers play mono;
  it is not treated as dual mono).
* **True peak**: the signal is oversampled 4× with libswresample (as
  BS.1770-4 Annex 2 asks) and the largest absolute sample is taken.
  ``ebur128``'s own true-peak meter is not used: it ignores the last partial
  100 ms of the input and reports only three decimals of a linear value.
* **Limiting**: the ``alimiter`` look-ahead limiter (5 ms look-ahead, 50 ms
  release, latency compensated so that the output lines up sample for sample
  with the input).  It limits sample peaks, so it is made true-peak aware by
  measuring the oversampled peak of its output and lowering its limit by the
  overshoot until the true peak fits (two or three passes in practice); a tiny
  static trim catches anything left.  Limiting lowers the loudness a little,
  which is made up by raising the gain in front of the limiter (at most
  ``_MAX_MAKEUP_DB``) and limiting again.

Why not ``loudnorm``: its two-pass linear mode only stays linear when the gain
does not push the true peak past the ceiling, which is the normal case for
speech at −16 LUFS / −1 dBTP (speech peaks sit 15–20 dB above its loudness);
otherwise it silently switches to its dynamic mode, a 3 s-window AGC that
outputs 192 kHz and is meant for long programmes rather than 1–30 s segments.
Its measurements also only come out as JSON through FFmpeg's global log
callback, which is awkward to capture safely from several threads.

Segments shorter than one 400 ms gating block have no integrated loudness.
For those the loudness of the clip over its own length is used instead
(BS.1770 mean-square over the clip, i.e. one block that is exactly the clip):
the clip is padded with silence to one block, measured, and corrected by the
padding ratio.  ``LoudnessReport.estimated`` says when that happened.

Gain between segments (see ``LoudnessNormalizer``): each segment is measured
on its own, but the gain may only *rise* cautiously: by at most
``max_rise_db`` from one segment to the next, and for segments shorter than
``full_trust_s`` only part of the way, in proportion to their length (short
segments give noisy loudness readings).  The gain may always *fall* at once,
so a loud segment is never played above the target.  Silent segments keep the
previous gain.  Call ``reset`` (or use a new instance) per announcement.

Everything here is synchronous and CPU-bound: call it from a worker thread.
The FFmpeg filters run with the GIL released, so the event loop keeps going
meanwhile.  Typical cost for a 10 s segment at 24 kHz: about 25 ms when no
limiting is needed, about 100 ms for speech that needs a few dB of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

__all__ = ["LoudnessNormalizer", "LoudnessReport", "measure", "true_peak_dbtp_of"]

Floats = npt.NDArray[np.float64]

#: s16 full scale: sample / 32768 is the level relative to 0 dBFS.
_S16_SCALE = 32768.0
#: BS.1770 gating block length.
_BLOCK_S = 0.4
#: BS.1770 absolute gate; ``ebur128`` reports exactly this when nothing passes it.
_ABSOLUTE_GATE_LUFS = -70.0
#: True peak is read from the signal oversampled this many times (BS.1770-4 Annex 2).
_TRUE_PEAK_OVERSAMPLING = 4
#: Head-room kept below the true-peak ceiling for s16 rounding.
_TP_MARGIN_DB = 0.02
#: ``alimiter`` accepts limits down to 1/16 (−24 dBFS).
_MIN_LIMIT = 0.0625
_LIMITER_PASSES = 4
#: Extra lowering of the limiter setting per pass (0.04 dB) so passes converge from below.
_LIMIT_STEP_MARGIN = 0.995
#: Loudness lost to the limiter that is made up by extra gain, at most.
_MAX_MAKEUP_DB = 4.0
_MAKEUP_PASSES = 3
#: Make-up steps assume at least this much loudness per dB of extra gain.
_MIN_MAKEUP_SLOPE = 0.25
#: Loudness shortfall after limiting that is worth another pass.
_MAKEUP_TOLERANCE_LU = 0.2
_LIMITER_ATTACK_MS = 5.0
_LIMITER_RELEASE_MS = 50.0


@dataclass(frozen=True, slots=True)
class LoudnessReport:
    """Loudness of one piece of audio.

    ``integrated_lufs`` is the gated integrated loudness, ``-inf`` when no
    400 ms block is above the −70 LUFS absolute gate (silence).
    ``true_peak_dbtp`` is the oversampled peak, ``-inf`` for digital silence.
    ``estimated`` is true for clips shorter than one gating block, whose
    ``integrated_lufs`` is the loudness over the clip's own length instead.
    """

    integrated_lufs: float
    true_peak_dbtp: float
    estimated: bool = False


def _db(linear: float) -> float:
    return 20.0 * math.log10(linear) if linear > 0.0 else -math.inf


def _linear(db: float) -> float:
    return math.pow(10.0, db / 20.0)


def _check_rate(sample_rate_hz: int) -> None:
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")


def _pcm_to_floats(pcm: bytes) -> Floats:
    if len(pcm) % 2:
        raise ValueError(f"s16le PCM of odd length {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / _S16_SCALE


def _floats_to_pcm(x: Floats) -> bytes:
    scaled = np.clip(np.rint(x * _S16_SCALE), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def _frame(x: Floats, rate: int, *, single: bool = False) -> AudioFrame:
    """One mono frame of ``x``: float64 (``dbl``), or float32 (``flt``) if ``single``."""
    if single:
        frame = AudioFrame.from_ndarray(
            x.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
        )
    else:
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(x).reshape(1, -1), format="dbl", layout="mono"
        )
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return frame


def _run_filters(
    x: Floats, rate: int, filters: Sequence[tuple[str, str]], *, single: bool = False
) -> list[AudioFrame]:
    """Push ``x`` through a chain of FFmpeg audio filters; return every output frame.

    The input goes in as float64, or as float32 if ``single``.
    """
    graph = av.filter.Graph()
    nodes = [
        graph.add_abuffer(
            sample_rate=rate,
            format="flt" if single else "dbl",
            layout="mono",
            time_base=Fraction(1, rate),
        )
    ]
    nodes.extend(graph.add(name, args) for name, args in filters)
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes).configure()
    graph.push(_frame(x, rate, single=single))
    graph.push(None)
    frames: list[AudioFrame] = []
    while True:
        try:
            frame = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            break
        if not isinstance(frame, AudioFrame):  # pragma: no cover - audio graph
            raise TypeError("audio filter graph produced a non-audio frame")
        frames.append(frame)
    return frames


def _samples(frames: Sequence[AudioFrame], length: int) -> Floats:
    """Mono frames → float64 samples, trimmed or zero-padded to ``length``."""
    parts = [np.asarray(f.to_ndarray(), dtype=np.float64).reshape(-1) for f in frames]
    out = np.concatenate(parts) if parts else np.zeros(0)
    if out.size >= length:
        return out[:length]
    return np.concatenate([out, np.zeros(length - out.size)])


def _gated_loudness(x: Floats, rate: int) -> float | None:
    """``ebur128``'s integrated loudness; ``-inf`` if gated out; None if under one block."""
    value: str | None = None
    for frame in _run_filters(x, rate, [("ebur128", "metadata=1")]):
        value = frame.metadata.get("lavfi.r128.I", value)
    if value is None:
        return None
    lufs = float(value)
    return -math.inf if lufs <= _ABSOLUTE_GATE_LUFS else lufs


def _loudness(x: Floats, rate: int) -> tuple[float, bool]:
    """Integrated loudness and whether it is the short-clip estimate."""
    block = math.ceil(_BLOCK_S * rate)
    if x.size >= block:
        lufs = _gated_loudness(x, rate)
        if lufs is not None:
            return lufs, False
    if not np.any(x):
        return -math.inf, True
    # Shorter than one gating block: measure one block holding the clip and
    # silence, then take the silence out of the mean square.
    padded = np.concatenate([x, np.zeros(max(0, block - x.size))])
    lufs = _gated_loudness(padded, rate)
    if lufs is None or lufs == -math.inf:
        return -math.inf, True
    return lufs + 10.0 * math.log10(padded.size / x.size), True


def _true_peak(x: Floats, rate: int) -> float:
    """Largest absolute value of ``x`` oversampled 4× (linear)."""
    if x.size == 0:
        return 0.0
    peak = float(np.max(np.abs(x)))
    if peak == 0.0:
        return 0.0
    # float32 is plenty for a peak, and libswresample is several times faster
    # with it.  (A filter graph rather than av.AudioResampler: same libswresample
    # and same result, but about three times faster here.)
    frames = _run_filters(
        x, rate, [("aresample", str(_TRUE_PEAK_OVERSAMPLING * rate))], single=True
    )
    for frame in frames:
        peak = max(peak, float(np.max(np.abs(frame.to_ndarray()))))
    return peak


def true_peak_dbtp_of(x: Floats, sample_rate_hz: int) -> float:
    """True peak (4× oversampled) of float samples (1.0 = full scale), in dBTP.

    Takes floats so that decoded audio above full scale (Opus) is measured as it is.
    """
    _check_rate(sample_rate_hz)
    return _db(_true_peak(np.asarray(x, dtype=np.float64), sample_rate_hz))


def _measure(x: Floats, rate: int) -> LoudnessReport:
    lufs, estimated = _loudness(x, rate)
    return LoudnessReport(lufs, _db(_true_peak(x, rate)), estimated)


def measure(pcm: bytes, sample_rate_hz: int) -> LoudnessReport:
    """Integrated loudness and true peak of mono s16le ``pcm`` (see ``LoudnessReport``)."""
    _check_rate(sample_rate_hz)
    return _measure(_pcm_to_floats(pcm), sample_rate_hz)


def _limit(x: Floats, rate: int, limit: float) -> Floats:
    """``alimiter`` at a sample-peak ``limit`` (linear), same length and alignment."""
    args = (
        f"limit={max(limit, _MIN_LIMIT):.6f}:attack={_LIMITER_ATTACK_MS}"
        f":release={_LIMITER_RELEASE_MS}:level=0:latency=1"
    )
    return _samples(_run_filters(x, rate, [("alimiter", args)]), x.size)


def _true_peak_limit(x: Floats, rate: int, ceiling: float, limit: float) -> tuple[Floats, float]:
    """Limit ``x`` so that its true peak is at most ``ceiling`` (linear).

    ``limit`` is the limiter setting to start from; returns the output and the
    setting that produced it, a good start for the same audio at another gain.
    """
    y = _limit(x, rate, limit)
    peak = _true_peak(y, rate)
    for _ in range(_LIMITER_PASSES - 1):
        if peak <= ceiling or limit <= _MIN_LIMIT:
            break
        # The limiter holds sample peaks at ``limit``; what is left over is
        # inter-sample overshoot (0.1 dB on espeak-ng speech, up to 1.5 dB on
        # buzzy synthetic test signals), roughly in proportion, so lower the
        # limit by it and a little more.
        limit = max(_MIN_LIMIT, limit * ceiling / peak * _LIMIT_STEP_MARGIN)
        y = _limit(x, rate, limit)
        peak = _true_peak(y, rate)
    return (y if peak <= ceiling else y * (ceiling / peak)), limit


class LoudnessNormalizer:
    """Bring segments of one announcement to ``target_lufs`` with true peaks ≤ ``true_peak_dbtp``.

    ``normalize`` is called once per segment (a sentence of speech, a chime)
    in playing order; the instance remembers the gain of the previous segment
    so that it can keep the gain steady (the rules are in the module
    docstring).  Use ``reset`` or a new instance for the next announcement.

    Options:

    * ``max_gain_db``: never amplify by more than this (noise or a near-silent
      segment is not blown up to the target).
    * ``max_rise_db``: the gain rises by at most this from one segment to the next.
    * ``full_trust_s``: segments at least this long get the gain their own
      measurement asks for; shorter ones only part of the way up.
    * ``silence_lufs``: segments quieter than this count as silence and keep
      the previous gain (0 dB for the first segment).

    The instance is thread-safe (calls are serialized by a lock), but segment
    order matters, so drive one announcement from one worker thread.
    """

    def __init__(
        self,
        target_lufs: float = -16.0,
        true_peak_dbtp: float = -1.0,
        *,
        max_gain_db: float = 30.0,
        max_rise_db: float = 10.0,
        full_trust_s: float = 2.0,
        silence_lufs: float = -60.0,
    ) -> None:
        if not _ABSOLUTE_GATE_LUFS < target_lufs < 0.0:
            raise ValueError(f"target_lufs must be within -70..0, got {target_lufs}")
        if not _db(_MIN_LIMIT) <= true_peak_dbtp <= 0.0:
            raise ValueError(f"true_peak_dbtp must be within -24..0, got {true_peak_dbtp}")
        if max_rise_db < 0.0 or full_trust_s < 0.0:
            raise ValueError("max_rise_db and full_trust_s must not be negative")
        if silence_lufs >= target_lufs:
            raise ValueError("silence_lufs must be below target_lufs")
        self.target_lufs = target_lufs
        self.true_peak_dbtp = true_peak_dbtp
        self.max_gain_db = max_gain_db
        self.max_rise_db = max_rise_db
        self.full_trust_s = full_trust_s
        self.silence_lufs = silence_lufs
        self._ceiling = _linear(true_peak_dbtp - _TP_MARGIN_DB)
        self._gain_db: float | None = None
        self._lock = threading.Lock()

    @property
    def gain_db(self) -> float | None:
        """Gain given to the last non-silent segment (before limiting); None before one."""
        return self._gain_db

    def reset(self) -> None:
        """Forget the previous gain: the next segment starts a new announcement."""
        with self._lock:
            self._gain_db = None

    def measure(self, pcm: bytes, sample_rate_hz: int) -> LoudnessReport:
        """Same as the module-level ``measure``."""
        return measure(pcm, sample_rate_hz)

    def _next_gain(self, lufs: float, duration_s: float) -> float:
        previous = self._gain_db
        if lufs == -math.inf or lufs < self.silence_lufs:
            return 0.0 if previous is None else previous
        wanted = min(self.target_lufs - lufs, self.max_gain_db)
        if previous is None or wanted <= previous:
            gain = wanted
        else:
            trust = 1.0 if self.full_trust_s == 0.0 else min(1.0, duration_s / self.full_trust_s)
            gain = previous + min(trust * (wanted - previous), self.max_rise_db)
        self._gain_db = gain
        return gain

    def normalize(self, pcm: bytes, sample_rate_hz: int) -> bytes:
        """Return ``pcm`` (mono s16le) at the target loudness, same rate and length."""
        _check_rate(sample_rate_hz)
        x = _pcm_to_floats(pcm)
        if x.size == 0:
            return b""
        with self._lock:
            lufs, _estimated = _loudness(x, sample_rate_hz)
            gain_db = self._next_gain(lufs, x.size / sample_rate_hz)
            return _floats_to_pcm(self._apply(x, sample_rate_hz, gain_db, lufs))

    def _apply(self, x: Floats, rate: int, gain_db: float, lufs: float) -> Floats:
        y = x * _linear(gain_db)
        if _true_peak(y, rate) <= self._ceiling:
            return y
        expected_lufs = lufs + gain_db
        makeup_db = 0.0
        limit = self._ceiling
        previous: tuple[float, float] | None = None  # (makeup_db, loudness) of the last pass
        for attempt in range(_MAKEUP_PASSES + 1):
            y, limit = _true_peak_limit(
                x * _linear(gain_db + makeup_db), rate, self._ceiling, limit
            )
            if attempt == _MAKEUP_PASSES or not math.isfinite(expected_lufs):
                break
            got, _estimated = _loudness(y, rate)
            shortfall = expected_lufs - got
            if shortfall < _MAKEUP_TOLERANCE_LU or makeup_db >= _MAX_MAKEUP_DB:
                break
            # Limiting eats part of any extra gain: after the first pass, step
            # by the secant of loudness against make-up gain.
            slope = 1.0
            if previous is not None and makeup_db > previous[0]:
                slope = (got - previous[1]) / (makeup_db - previous[0])
                slope = min(1.0, max(_MIN_MAKEUP_SLOPE, slope))
            previous = (makeup_db, got)
            makeup_db = min(makeup_db + shortfall / slope, _MAX_MAKEUP_DB)
        return y
