"""Decode received chunks back to PCM: for the reference endpoint client and tests.

Each chunk decodes on its own to exactly ``fmt.samples_per_frame`` samples,
mono s16le at ``fmt.sample_rate_hz``, so an endpoint can place it at the
chunk's ``offset_us`` without any further bookkeeping.

Opus pre-skip: an Ogg/Opus file tells its decoder (in the OpusHead header) to
discard the encoder's first ``pre-skip`` samples.  Our chunks travel without
that header, and FFmpeg's Opus decoders apply no pre-skip without it, so every
packet, the first included, decodes to 960 samples.  That is what we want:
``audio.transcode`` already compensated for the encoder delay on the sending
side, so the decoded audio lines up with ``offset_us`` as it is.  An endpoint
that joins mid-announcement needs nothing special either.
"""

from __future__ import annotations

import os
import wave

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from broadcaster.model import Codec, StreamFormat


def _decoder_name(codec: Codec) -> str:
    if codec is Codec.PCM_MULAW:
        return "pcm_mulaw"
    # Prefer the libopus decoder: it hands out s16 directly, where FFmpeg's own
    # decoder gives float planes that would need converting.
    return "libopus" if "libopus" in av.codecs_available else "opus"


class FrameDecoder:
    """Decode one stream format's chunks, one payload at a time.

    Keeps codec state between calls (Opus predicts from the previous packet),
    so feed the chunks of one announcement in order and use a new instance per
    announcement.  Not thread-safe.
    """

    def __init__(self, fmt: StreamFormat) -> None:
        self.fmt = fmt
        self._ctx: AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        if fmt.codec is Codec.PCM_S16LE:
            return
        name = _decoder_name(fmt.codec)
        ctx = av.CodecContext.create(name, "r")
        if not isinstance(ctx, AudioCodecContext):  # pragma: no cover - names are all audio
            raise TypeError(f"{name} is not an audio codec")
        # Raw chunks carry no container header, so the decoder must be told
        # what it is getting.
        ctx.sample_rate = fmt.sample_rate_hz
        ctx.layout = "mono"
        ctx.open()
        self._ctx = ctx

    def decode(self, payload: bytes) -> bytes:
        """Return the chunk's audio as mono s16le PCM at ``fmt.sample_rate_hz``."""
        if self._ctx is None:
            if len(payload) % 2:
                raise ValueError(f"pcm_s16le payload of odd length {len(payload)}")
            return bytes(payload)
        frames = self._ctx.decode(av.Packet(payload))
        return b"".join(self._to_s16(frame) for frame in frames)

    def _to_s16(self, frame: AudioFrame) -> bytes:
        if (
            frame.format.name != "s16"
            or frame.layout.nb_channels != 1
            or frame.sample_rate != self.fmt.sample_rate_hz
        ):
            # Only a format conversion in practice (float Opus output); no
            # rate change means libswresample adds no delay here.
            if self._resampler is None:
                self._resampler = av.AudioResampler(
                    format="s16", layout="mono", rate=self.fmt.sample_rate_hz
                )
            return b"".join(self._to_s16(f) for f in self._resampler.resample(frame))
        # to_ndarray respects frame.samples; the plane buffer may be padded.
        return frame.to_ndarray().astype("<i2", copy=False).tobytes()


def decode_to_floats(fmt: StreamFormat, payloads: list[bytes]) -> npt.NDArray[np.float64]:
    """Decode one stream's chunks, in order, to float samples (1.0 = full scale).

    Unlike :class:`FrameDecoder` nothing is clipped: Opus output above full scale
    comes out as it is, which is what a float decoder (WebCodecs) plays. For
    measuring what endpoints hear (the true-peak promise); CPU-bound.
    """
    if fmt.codec is Codec.PCM_S16LE:
        pcm = b"".join(payloads)
        return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    # FFmpeg's own Opus decoder gives float planes; pcm_mulaw gives s16.
    name = "opus" if fmt.codec is Codec.OPUS else "pcm_mulaw"
    ctx = av.CodecContext.create(name, "r")
    if not isinstance(ctx, AudioCodecContext):  # pragma: no cover - names are all audio
        raise TypeError(f"{name} is not an audio codec")
    ctx.sample_rate = fmt.sample_rate_hz
    ctx.layout = "mono"
    ctx.open()
    parts: list[npt.NDArray[np.float64]] = []
    for payload in payloads:
        for frame in ctx.decode(av.Packet(payload)):
            x = np.asarray(frame.to_ndarray(), dtype=np.float64).reshape(-1)[: frame.samples]
            parts.append(x / 32768.0 if frame.format.name.startswith("s16") else x)
    return np.concatenate(parts) if parts else np.zeros(0)


def write_wav(path: str | os.PathLike[str], pcm: bytes, sample_rate_hz: int) -> None:
    """Write mono s16le ``pcm`` to a WAV file."""
    if len(pcm) % 2:
        raise ValueError(f"PCM of odd length {len(pcm)}")
    with wave.open(os.fspath(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(pcm)


class AudioFileError(ValueError):
    """Bytes that PyAV cannot read as an audio file."""


def parse_pcm_wav(data: bytes) -> tuple[bytes, int] | None:
    """``(pcm, rate)`` of a mono 16-bit PCM WAV by reading its chunks (one copy, no
    decoder); None for any other file (compressed, stereo, other sample width), which
    :func:`decode_audio_file` handles."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    view = memoryview(data)
    pos = 12
    rate: int | None = None
    while pos + 8 <= len(data):
        cid = bytes(view[pos : pos + 4])
        size = int.from_bytes(view[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            if size < 16:
                return None
            fmt_tag = int.from_bytes(view[body : body + 2], "little")
            channels = int.from_bytes(view[body + 2 : body + 4], "little")
            rate = int.from_bytes(view[body + 4 : body + 8], "little")
            bits = int.from_bytes(view[body + 14 : body + 16], "little")
            if fmt_tag != 1 or channels != 1 or bits != 16 or rate <= 0:
                return None
        elif cid == b"data":
            if rate is None:
                return None
            end = min(len(data), body + size) if size != 0xFFFFFFFF else len(data)
            end -= (end - body) % 2
            return bytes(view[body:end]), rate
        pos = body + size + (size & 1)
    return None


def decode_audio_file(data: bytes) -> tuple[bytes, int]:
    """Decode a whole audio file (WAV, FLAC, MP3, Ogg...) to mono s16le PCM.

    Returns ``(pcm, sample_rate_hz)`` at the file's own rate; stereo is mixed
    down. Synchronous and CPU-bound: call it from a worker thread.
    """
    import io

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFileError("no audio stream in the file")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            if not rate:
                raise AudioFileError("the audio stream has no sample rate")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            out = bytearray()
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    out += _plane_bytes(converted)
            for converted in resampler.resample(None):
                out += _plane_bytes(converted)
    except av.error.FFmpegError as exc:
        raise AudioFileError(f"cannot decode audio: {exc}") from None
    return bytes(out), int(rate)


def _plane_bytes(frame: AudioFrame) -> bytes:
    # Packed mono s16: one plane, possibly padded past the last sample.
    return bytes(frame.planes[0])[: frame.samples * 2]
