"""Turn an announcement's speech PCM into fixed-length encoded chunks per stream format.

The pipeline for one format is::

    s16le bytes @ source rate --AudioResampler--> s16 mono @ format rate
        --AudioFifo--> frames of exactly ``fmt.samples_per_frame`` samples
        --encoder CodecContext--> one ``EncodedFrame`` per frame

Everything here is synchronous, CPU-bound and keeps codec state between calls,
so an instance must be driven from a single worker thread (not the event loop,
where encoding would stall every other announcement and socket).  Nothing in
this module is thread-safe.

Timeline contract, identical for every codec: chunk ``i`` has
``offset_us == i * frame_ms * 1000`` and decodes (see ``audio.decode``) to
exactly ``samples_per_frame`` samples that are the announcement's audio from
``offset_us`` to ``offset_us + duration_us``.  For Opus that takes some care,
see ``Transcoder`` below.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

from broadcaster.audio.limiter import TruePeakLimiter
from broadcaster.model import Codec, EncodedFrame, StreamFormat

#: libopus accepts 6 kbit/s to 510 kbit/s per channel.
OPUS_BITRATE_RANGE_BPS = (6_000, 510_000)

_ENCODER_NAMES: dict[Codec, str] = {
    Codec.PCM_S16LE: "pcm_s16le",
    Codec.PCM_MULAW: "pcm_mulaw",
    Codec.OPUS: "libopus",
}


Samples = npt.NDArray[np.int16]

#: How far below the true-peak ceiling each codec's limiter sits, in dB: what the
#: codec can add to the true peak of what it is given. Opus (32 kbit/s, voip)
#: reconstructs peaks up to ~2.3 dB above its input's true peak in bench/true_peak.py,
#: and 3.0 dB was seen once in CI on speech normalized to the ceiling, hence 4 dB;
#: μ-law quantisation adds up to ~0.4 dB at the top of its range; PCM only the
#: limiter's interpolation error and s16 rounding. Measured over speech and chimes
#: by bench/true_peak.py,
#: held by tests/unit/test_true_peak_after_decode.py.
ENCODER_HEADROOM_DB: dict[Codec, float] = {
    Codec.OPUS: 4.0,
    Codec.PCM_S16LE: 0.15,
    Codec.PCM_MULAW: 0.5,
}
#: Extra headroom at 8 kHz and below (the limiter's interpolation is least exact there).
_LOW_RATE_HEADROOM_DB = 0.2
_LOW_RATE_HZ = 8000


def _s16_frame(samples: Samples, rate_hz: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate_hz
    # Match what the resampler emits (time base 1/rate) so that frames of
    # either origin look alike to the FIFO and the encoder.
    frame.time_base = Fraction(1, rate_hz)
    return frame


def _opus_preskip(extradata: bytes | None) -> int:
    """Read the pre-skip field of the OpusHead header libopus puts in extradata.

    Read rather than hard-coded because it depends on the libopus version and
    the ``application`` setting (312 samples for ``voip``, 120 for ``lowdelay``).
    """
    if extradata is None or len(extradata) < 12 or not extradata.startswith(b"OpusHead"):
        raise RuntimeError("libopus encoder did not provide an OpusHead header")
    return int.from_bytes(extradata[10:12], "little")


class _Resampler:
    """Source PCM → s16 mono at one target rate, with an exactly defined length.

    After ``flush`` the total output is ``ceil(n_in * rate_out / rate_in)``
    samples.  libswresample gets within a sample of that by itself; pinning it
    exactly makes the chunk count a pure function of the input length, which
    is what callers and tests reason with.
    """

    def __init__(self, source_rate_hz: int, rate_hz: int) -> None:
        self.source_rate_hz = source_rate_hz
        self.rate_hz = rate_hz
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
        self._in_samples = 0
        self._out_samples = 0

    @property
    def total_samples(self) -> int:
        """Output length owed for the input so far (the final length after flush)."""
        # Ceiling division in integers: no float rounding over hours of audio.
        return -(-self._in_samples * self.rate_hz // self.source_rate_hz)

    def _capped(self, frames: list[av.AudioFrame]) -> list[av.AudioFrame]:
        limit = self.total_samples
        out: list[av.AudioFrame] = []
        for frame in frames:
            room = limit - self._out_samples
            if room <= 0:
                break
            if frame.samples > room:
                frame = _s16_frame(
                    frame.to_ndarray()[0, :room].astype(np.int16, copy=False), self.rate_hz
                )
            self._out_samples += frame.samples
            out.append(frame)
        return out

    def push(self, samples: Samples) -> list[av.AudioFrame]:
        if samples.size == 0:
            return []
        self._in_samples += samples.size
        return self._capped(self._resampler.resample(_s16_frame(samples, self.source_rate_hz)))

    def flush(self) -> list[av.AudioFrame]:
        # resample(None) drains the filter's look-ahead; the resampler is
        # unusable afterwards.
        out = self._capped(self._resampler.resample(None))
        missing = self.total_samples - self._out_samples
        if missing > 0:
            self._out_samples += missing
            out.append(_s16_frame(np.zeros(missing, dtype=np.int16), self.rate_hz))
        return out


def encoder_headroom_db(formats: Iterable[StreamFormat]) -> float:
    """The largest headroom any of ``formats`` needs (0 for none).

    Speech and chimes are normalized this far below the true-peak ceiling, with
    make-up gain keeping their loudness, so that the per-format limiters have
    little left to do: every format then plays at one loudness, Opus included.
    """
    return max((limiter_headroom_db(f) for f in formats), default=0.0)


def limiter_headroom_db(fmt: StreamFormat) -> float:
    """How far below the true-peak ceiling ``fmt``'s limiter sits, in dB."""
    headroom = ENCODER_HEADROOM_DB[fmt.codec]
    if fmt.sample_rate_hz <= _LOW_RATE_HZ and fmt.codec is Codec.PCM_S16LE:
        headroom += _LOW_RATE_HEADROOM_DB
    return headroom


def limiter_ceiling_dbtp(fmt: StreamFormat, true_peak_dbtp: float) -> float:
    """Where ``fmt``'s limiter holds the true peak so that its *decoded* true peak
    stays at or below ``true_peak_dbtp``."""
    return true_peak_dbtp - limiter_headroom_db(fmt)


class _PeakLimiter:
    """:class:`~broadcaster.audio.limiter.TruePeakLimiter` on s16 mono frames.

    Output lines up sample for sample with the input (no delay on the timeline);
    :meth:`flush` returns the tail, so as many samples come out as went in.
    """

    def __init__(self, rate_hz: int, ceiling_dbtp: float) -> None:
        self._rate = rate_hz
        self._limiter = TruePeakLimiter(rate_hz, ceiling_dbtp)

    def _frames(self, y: npt.NDArray[np.float64]) -> list[av.AudioFrame]:
        if y.size == 0:
            return []
        samples = np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)
        return [_s16_frame(samples, self._rate)]

    def push(self, frames: Iterable[av.AudioFrame]) -> list[av.AudioFrame]:
        parts = [f.to_ndarray().reshape(-1)[: f.samples] for f in frames]
        if not parts:
            return []
        x = np.concatenate(parts).astype(np.float64) / 32768.0
        return self._frames(self._limiter.push(x))

    def flush(self) -> list[av.AudioFrame]:
        return self._frames(self._limiter.flush())


class _FrameEncoder:
    """Resampled audio → fixed-size encoded chunks with sample-exact offsets."""

    def __init__(
        self, fmt: StreamFormat, opus_bitrate_bps: int, true_peak_dbtp: float | None = None
    ) -> None:
        self.fmt = fmt
        name = _ENCODER_NAMES[fmt.codec]
        if name not in av.codecs_available:
            raise RuntimeError(f"this FFmpeg build has no {name} encoder")
        ctx = av.CodecContext.create(name, "w")
        if not isinstance(ctx, AudioCodecContext):  # pragma: no cover - names are all audio
            raise TypeError(f"{name} is not an audio codec")
        ctx.sample_rate = fmt.sample_rate_hz
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.time_base = Fraction(1, fmt.sample_rate_hz)
        self._skip = 0
        if fmt.codec is Codec.OPUS:
            ctx.bit_rate = opus_bitrate_bps
            ctx.options = {
                # "voip" favours intelligibility of speech (SILK/hybrid modes).
                "application": "voip",
                "frame_duration": str(fmt.frame_ms),
            }
        ctx.open()
        if fmt.codec is Codec.OPUS:
            self._skip = _opus_preskip(ctx.extradata)
        self.preskip = self._skip
        self._ctx = ctx
        self._fifo = av.AudioFifo()
        self._fed = 0  # samples handed to the encoder, silence padding included
        self._emitted = 0  # chunks returned so far
        self._limiter = (
            _PeakLimiter(fmt.sample_rate_hz, limiter_ceiling_dbtp(fmt, true_peak_dbtp))
            if true_peak_dbtp is not None
            else None
        )

    def _chunk(self, payload: bytes) -> EncodedFrame:
        # Offsets come from sample counts so that rounding never accumulates.
        spf, rate = self.fmt.samples_per_frame, self.fmt.sample_rate_hz
        start = self._emitted * spf * 1_000_000 // rate
        end = (self._emitted + 1) * spf * 1_000_000 // rate
        self._emitted += 1
        return EncodedFrame(payload=payload, offset_us=start, duration_us=end - start)

    def _encode_ready(self) -> list[EncodedFrame]:
        spf = self.fmt.samples_per_frame
        out: list[EncodedFrame] = []
        while self._fifo.samples >= spf:
            frame = self._fifo.read(spf)
            if frame is None:  # pragma: no cover - guarded by the loop condition
                break
            frame.pts = self._fed
            frame.time_base = self._ctx.time_base
            self._fed += spf
            out.extend(self._chunk(bytes(packet)) for packet in self._ctx.encode(frame))
        return out

    def push(self, frames: Iterable[av.AudioFrame]) -> list[EncodedFrame]:
        if self._limiter is not None:
            frames = self._limiter.push(frames)
        return self._push(frames)

    def _push(self, frames: Iterable[av.AudioFrame]) -> list[EncodedFrame]:
        for frame in frames:
            self._fifo.write(frame)
            if self._skip:
                # Opus: drop the first ``preskip`` samples of the audio *before*
                # encoding; see Transcoder's docstring for why.
                dropped = min(self._skip, self._fifo.samples)
                self._fifo.read(dropped)
                self._skip -= dropped
        return self._encode_ready()

    def flush(self, frames: Iterable[av.AudioFrame], total_samples: int) -> list[EncodedFrame]:
        """Encode what is left; ``total_samples`` is the final length of the timeline."""
        out = self.push(frames)
        if self._limiter is not None:
            out.extend(self._push(self._limiter.flush()))
        spf = self.fmt.samples_per_frame
        n_frames = -(-total_samples // spf)
        # Pad with silence up to whole frames.  For Opus the dropped pre-skip
        # is made up here too, so n_frames * spf samples always reach the encoder.
        pad = n_frames * spf - self._fed - self._fifo.samples
        if pad > 0:
            self._fifo.write(_s16_frame(np.zeros(pad, dtype=np.int16), self.fmt.sample_rate_hz))
        out.extend(self._encode_ready())
        # Drain codecs that hold packets back.  libopus answers with one extra
        # packet covering its look-ahead, which lies past the end of our
        # timeline, so anything beyond n_frames is dropped.
        for packet in self._ctx.encode(None):
            if self._emitted >= n_frames:
                break
            out.append(self._chunk(bytes(packet)))
        if self._emitted != n_frames:
            raise RuntimeError(
                f"{self.fmt.key}: encoder produced {self._emitted} chunks, expected {n_frames}"
            )
        return out


class _PcmInput:
    """Bytes → int16 samples, carrying a byte that splits a sample to the next push."""

    def __init__(self) -> None:
        self._carry = b""

    def samples(self, pcm: bytes) -> Samples:
        data = self._carry + pcm if self._carry else pcm
        whole = len(data) & ~1
        self._carry = bytes(data[whole:])
        return np.frombuffer(data, dtype="<i2", count=whole // 2).astype(np.int16, copy=False)


def _check_args(source_rate_hz: int, opus_bitrate_bps: int) -> None:
    if source_rate_hz <= 0:
        raise ValueError(f"source_rate_hz must be positive, got {source_rate_hz}")
    low, high = OPUS_BITRATE_RANGE_BPS
    if not low <= opus_bitrate_bps <= high:
        raise ValueError(f"opus_bitrate_bps must be within {low}..{high}, got {opus_bitrate_bps}")


class Transcoder:
    """Incrementally encode one announcement's mono s16le PCM into one stream format.

    ``push`` accepts pieces of any size (a piece may even end in the middle of
    a sample; the odd byte waits for the next piece) and returns every chunk
    that is complete so far; ``flush`` returns the rest.  Each chunk holds
    exactly ``fmt.samples_per_frame`` samples (``fmt.frame_ms`` of audio) and
    ``offset_us`` of chunk ``i`` is exactly ``i * frame_ms * 1000``.  For an
    input of ``n`` source samples there are ``ceil(n / source_rate_hz /
    frame_seconds)`` chunks in all.

    Latency: the resampler holds back a few samples of look-ahead (fewer than
    a millisecond) until more input or ``flush`` arrives, and Opus additionally
    needs ``preskip`` samples (6.5 ms) beyond the end of a frame before it can
    be emitted, so the first chunk comes out slightly later than ``frame_ms``
    into the input.

    Opus pre-skip: libopus output lags its input by ``preskip`` samples (312
    at 48 kHz).  Rather than shift the Opus timeline against the PCM formats,
    the first ``preskip`` samples of the audio are dropped before encoding, so
    decoding chunk ``i`` without any pre-skip handling yields the audio at
    ``offset_us`` just like PCM does and endpoints on different codecs stay in
    step.  The price is that the first 6.5 ms of each announcement are replaced
    by the decoder's fade-in (speech output starts with silence anyway).

    True peak: with ``true_peak_dbtp`` every format gets a look-ahead limiter at its
    own rate, ahead of its encoder, set below that ceiling by what the codec and
    the rate can overshoot (``limiter_ceiling_dbtp``), so the audio an endpoint
    *decodes* keeps the ceiling (Opus reconstructs peaks above its input's). It
    delays nothing on the timeline. None: no limiter (the audio is encoded as given).

    Not thread-safe; call it from one worker thread, never on the event loop.
    An instance is finished after ``flush``.
    """

    def __init__(
        self,
        fmt: StreamFormat,
        *,
        source_rate_hz: int,
        opus_bitrate_bps: int = 32000,
        true_peak_dbtp: float | None = None,
    ) -> None:
        _check_args(source_rate_hz, opus_bitrate_bps)
        self.fmt = fmt
        self.source_rate_hz = source_rate_hz
        self._input = _PcmInput()
        self._resampler = _Resampler(source_rate_hz, fmt.sample_rate_hz)
        self._encoder = _FrameEncoder(fmt, opus_bitrate_bps, true_peak_dbtp)
        self._flushed = False

    @property
    def preskip_samples(self) -> int:
        """Samples the codec delays its output by (0 for PCM), already compensated."""
        return self._encoder.preskip

    def push(self, pcm: bytes) -> list[EncodedFrame]:
        """Add mono s16le PCM at ``source_rate_hz``; return the chunks completed by it."""
        if self._flushed:
            raise RuntimeError("Transcoder.push() after flush()")
        return self._encoder.push(self._resampler.push(self._input.samples(pcm)))

    def flush(self) -> list[EncodedFrame]:
        """End of input: return the remaining chunks.

        The last chunk is padded with silence to a whole frame, so the chunks
        together cover the whole input and up to one frame more.  A dangling
        odd byte (half a sample) is discarded.
        """
        if self._flushed:
            raise RuntimeError("Transcoder.flush() called twice")
        self._flushed = True
        frames = self._resampler.flush()
        return self._encoder.flush(frames, self._resampler.total_samples)


class MultiTranscoder:
    """Encode one announcement into several stream formats at once.

    Produces byte-for-byte what separate ``Transcoder`` instances would, but
    resamples only once per distinct sample rate.  Results are keyed by
    ``fmt.key``; every key appears in every result, possibly with an empty
    list.  Two formats with the same key must be identical (the key is what
    endpoints subscribe to, so it cannot stand for two chunk lengths).

    ``true_peak_dbtp`` as for ``Transcoder``. Same threading rules as ``Transcoder``.
    """

    def __init__(
        self,
        formats: Iterable[StreamFormat],
        source_rate_hz: int,
        *,
        opus_bitrate_bps: int = 32000,
        true_peak_dbtp: float | None = None,
    ) -> None:
        _check_args(source_rate_hz, opus_bitrate_bps)
        self.source_rate_hz = source_rate_hz
        self.formats: dict[str, StreamFormat] = {}
        for fmt in formats:
            seen = self.formats.setdefault(fmt.key, fmt)
            if seen != fmt:
                raise ValueError(f"conflicting formats for {fmt.key}: {seen} and {fmt}")
        if not self.formats:
            raise ValueError("MultiTranscoder needs at least one format")
        self._input = _PcmInput()
        self._resamplers = {
            rate: _Resampler(source_rate_hz, rate)
            for rate in sorted({f.sample_rate_hz for f in self.formats.values()})
        }
        self._encoders = {
            key: _FrameEncoder(fmt, opus_bitrate_bps, true_peak_dbtp)
            for key, fmt in self.formats.items()
        }
        self._flushed = False

    def push(self, pcm: bytes) -> dict[str, list[EncodedFrame]]:
        """Add mono s16le PCM at ``source_rate_hz``; return new chunks per format key."""
        if self._flushed:
            raise RuntimeError("MultiTranscoder.push() after flush()")
        samples = self._input.samples(pcm)
        by_rate = {rate: r.push(samples) for rate, r in self._resamplers.items()}
        return {
            key: enc.push(by_rate[enc.fmt.sample_rate_hz]) for key, enc in self._encoders.items()
        }

    def flush(self) -> dict[str, list[EncodedFrame]]:
        """End of input: the remaining chunks per format key, last ones silence-padded."""
        if self._flushed:
            raise RuntimeError("MultiTranscoder.flush() called twice")
        self._flushed = True
        by_rate = {rate: (r.flush(), r.total_samples) for rate, r in self._resamplers.items()}
        out: dict[str, list[EncodedFrame]] = {}
        for key, enc in self._encoders.items():
            frames, total = by_rate[enc.fmt.sample_rate_hz]
            out[key] = enc.flush(frames, total)
        return out
