"""Transcoder / MultiTranscoder: chunk counts, sizes, exact offsets, round trips, determinism."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from broadcaster.audio.decode import FrameDecoder
from broadcaster.audio.transcode import MultiTranscoder, Transcoder
from broadcaster.model import Codec, EncodedFrame, StreamFormat

SOURCE_RATE_HZ = 22050

FORMATS = [
    *(
        StreamFormat(Codec.PCM_S16LE, rate, frame_ms=ms)
        for rate in (8000, 16000, 24000, 48000)
        for ms in (20, 100)
    ),
    StreamFormat(Codec.PCM_MULAW, 8000),
    StreamFormat(Codec.PCM_MULAW, 8000, frame_ms=100),
    StreamFormat(Codec.OPUS, 48000),
]


def _id(fmt: StreamFormat) -> str:
    return f"{fmt.key}@{fmt.frame_ms}ms"


def sine(freq_hz: float, n_samples: int, rate_hz: int, amplitude: float = 12000) -> bytes:
    t = np.arange(n_samples) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def random_pieces(data: bytes, rng: np.random.Generator, max_len: int) -> list[bytes]:
    """Split at random byte positions, so pieces may end in the middle of a sample."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = int(rng.integers(1, max_len + 1))
        out.append(data[pos : pos + step])
        pos += step
    return out


def transcode(
    fmt: StreamFormat, pieces: list[bytes], source_rate_hz: int = SOURCE_RATE_HZ
) -> list[EncodedFrame]:
    tc = Transcoder(fmt, source_rate_hz=source_rate_hz)
    frames: list[EncodedFrame] = []
    for piece in pieces:
        frames.extend(tc.push(piece))
    frames.extend(tc.flush())
    return frames


def decode_all(fmt: StreamFormat, frames: list[EncodedFrame]) -> np.ndarray:
    dec = FrameDecoder(fmt)
    return np.frombuffer(b"".join(dec.decode(f.payload) for f in frames), dtype="<i2")


def expected_frames(n_source: int, fmt: StreamFormat, source_rate_hz: int = SOURCE_RATE_HZ) -> int:
    return math.ceil(Fraction(n_source, source_rate_hz) / Fraction(fmt.frame_ms, 1000))


def dominant_hz(pcm: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * rate_hz / pcm.size)


def assert_contiguous(frames: list[EncodedFrame], fmt: StreamFormat) -> None:
    assert frames[0].offset_us == 0
    for i, frame in enumerate(frames):
        assert frame.duration_us == fmt.frame_ms * 1000
        assert frame.offset_us == i * fmt.frame_ms * 1000
    for a, b in itertools.pairwise(frames):
        assert b.offset_us == a.offset_us + a.duration_us


def payload_size(fmt: StreamFormat) -> int | None:
    if fmt.codec is Codec.PCM_S16LE:
        return 2 * fmt.samples_per_frame
    if fmt.codec is Codec.PCM_MULAW:
        return fmt.samples_per_frame
    return None  # Opus is variable-rate


N_SHORT = int(SOURCE_RATE_HZ * 1.37)
SHORT = sine(440, N_SHORT, SOURCE_RATE_HZ)


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_chunks_count_size_and_offsets(fmt: StreamFormat) -> None:
    frames = transcode(fmt, random_pieces(SHORT, np.random.default_rng(1), 5000))
    assert len(frames) == expected_frames(N_SHORT, fmt)
    size = payload_size(fmt)
    for frame in frames:
        assert frame.payload
        if size is not None:
            assert len(frame.payload) == size
    assert_contiguous(frames, fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_round_trip_duration_and_pitch(fmt: StreamFormat) -> None:
    frames = transcode(fmt, random_pieces(SHORT, np.random.default_rng(2), 3000))
    pcm = decode_all(fmt, frames)
    assert pcm.size == len(frames) * fmt.samples_per_frame
    input_at_rate = N_SHORT * fmt.sample_rate_hz / SOURCE_RATE_HZ
    assert input_at_rate <= pcm.size < input_at_rate + fmt.samples_per_frame
    assert dominant_hz(pcm, fmt.sample_rate_hz) == pytest.approx(440, abs=10)
    # The level survives too (codec loss is small for a pure tone).
    rms = np.sqrt(np.mean(pcm[: int(input_at_rate)].astype(np.float64) ** 2))
    assert rms == pytest.approx(12000 / math.sqrt(2), rel=0.15)


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_ten_minutes_do_not_drift(fmt: StreamFormat) -> None:
    n = SOURCE_RATE_HZ * 600 + 123
    pcm = sine(440, n, SOURCE_RATE_HZ, amplitude=3000)
    step = SOURCE_RATE_HZ * 2 * 137 // 100  # 1.37 s pieces, not a multiple of any frame
    frames = transcode(fmt, [pcm[i : i + step] for i in range(0, len(pcm), step)])
    assert len(frames) == expected_frames(n, fmt)
    assert frames[-1].offset_us == (len(frames) - 1) * fmt.frame_ms * 1000
    assert_contiguous(frames, fmt)


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_split_does_not_change_output(fmt: StreamFormat) -> None:
    data = SHORT[: 2 * 7001]
    whole = transcode(fmt, [data])
    tiny = transcode(fmt, random_pieces(data, np.random.default_rng(3), 7))
    large = transcode(fmt, random_pieces(data, np.random.default_rng(4), 4000))
    assert tiny == whole
    assert large == whole


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_chunks_are_released_as_soon_as_complete(fmt: StreamFormat) -> None:
    tc = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ)
    seconds = 1
    early = tc.push(SHORT[: 2 * SOURCE_RATE_HZ * seconds])
    # All but the frame(s) still waiting on resampler/codec look-ahead.
    assert len(early) >= seconds * 1000 // fmt.frame_ms - 1
    assert len(early) + len(tc.flush()) == expected_frames(SOURCE_RATE_HZ * seconds, fmt)


@pytest.mark.parametrize(
    "fmt",
    [StreamFormat(Codec.PCM_S16LE, 16000), StreamFormat(Codec.PCM_MULAW, 8000, frame_ms=100)],
    ids=_id,
)
def test_last_chunk_is_padded_with_silence(fmt: StreamFormat) -> None:
    frames = transcode(fmt, [SHORT])
    pcm = decode_all(fmt, frames)
    tail = pcm[math.ceil(N_SHORT * fmt.sample_rate_hz / SOURCE_RATE_HZ) + 2 :]
    assert tail.size > 0
    # μ-law has no exact zero, its smallest step decodes to ±8.
    assert np.abs(tail).max() <= 8


def test_source_rate_equal_to_output_rate_is_bit_exact() -> None:
    fmt = StreamFormat(Codec.PCM_S16LE, 16000)
    data = sine(300, 16000 + 5, 16000)
    frames = transcode(fmt, random_pieces(data, np.random.default_rng(5), 999), 16000)
    out = b"".join(f.payload for f in frames)
    assert out[: len(data)] == data
    assert out[len(data) :] == bytes(len(out) - len(data))


def test_opus_is_aligned_with_the_timeline() -> None:
    """Opus pre-skip is compensated: decoded audio sits where the offsets say."""
    fmt = StreamFormat(Codec.OPUS, 48000)
    rng = np.random.default_rng(6)
    n = 48000
    # Noise limited to the telephone band: speech-like for the codec and
    # unambiguous under cross-correlation (a pure tone would repeat every period).
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / 48000)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    data = (np.fft.irfft(spectrum, n) * 15000).astype("<i2")
    frames = transcode(fmt, [data.tobytes()], 48000)
    assert len(frames) == 50
    out = decode_all(fmt, frames).astype(np.float64)
    ref = data.astype(np.float64)
    window = slice(4800, 43200)
    lags = range(-400, 401)
    scores = [np.dot(out[window.start + lag : window.stop + lag], ref[window]) for lag in lags]
    # Uncompensated, the lag would be the whole pre-skip (312 samples).  What is
    # left is a few samples of phase from libopus' SILK/hybrid modes, which
    # vary with the signal.
    assert abs(lags[int(np.argmax(scores))]) <= 8


def test_opus_reports_preskip() -> None:
    assert Transcoder(StreamFormat(Codec.OPUS, 48000), source_rate_hz=24000).preskip_samples > 0
    pcm = Transcoder(StreamFormat(Codec.PCM_S16LE, 8000), source_rate_hz=24000)
    assert pcm.preskip_samples == 0


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_empty_input_gives_no_chunks(fmt: StreamFormat) -> None:
    tc = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ)
    assert tc.push(b"") == []
    assert tc.flush() == []


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_one_sample_gives_one_chunk(fmt: StreamFormat) -> None:
    frames = transcode(fmt, [b"\x10\x00"])
    assert len(frames) == 1
    assert frames[0].offset_us == 0


def test_dangling_half_sample_is_dropped() -> None:
    fmt = StreamFormat(Codec.PCM_S16LE, 8000)
    assert transcode(fmt, [SHORT[:4000] + b"\x01"]) == transcode(fmt, [SHORT[:4000]])


def test_push_or_flush_after_flush_raises() -> None:
    tc = Transcoder(StreamFormat(Codec.PCM_S16LE, 8000), source_rate_hz=SOURCE_RATE_HZ)
    tc.flush()
    with pytest.raises(RuntimeError):
        tc.push(b"\x00\x00")
    with pytest.raises(RuntimeError):
        tc.flush()


@pytest.mark.parametrize(
    ("source_rate_hz", "bitrate"), [(0, 32000), (-8000, 32000), (22050, 1000), (22050, 10**6)]
)
def test_bad_arguments(source_rate_hz: int, bitrate: int) -> None:
    fmt = StreamFormat(Codec.OPUS, 48000)
    with pytest.raises(ValueError):
        Transcoder(fmt, source_rate_hz=source_rate_hz, opus_bitrate_bps=bitrate)
    with pytest.raises(ValueError):
        MultiTranscoder([fmt], source_rate_hz, opus_bitrate_bps=bitrate)


def test_opus_bitrate_is_applied() -> None:
    fmt = StreamFormat(Codec.OPUS, 48000)
    pieces = [SHORT]
    low = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ, opus_bitrate_bps=12000)
    high = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ, opus_bitrate_bps=96000)

    def size(tc: Transcoder) -> int:
        frames = [f for p in pieces for f in tc.push(p)] + tc.flush()
        return sum(len(f.payload) for f in frames)

    assert size(high) > 2 * size(low)


MULTI_FORMATS = [
    StreamFormat(Codec.PCM_S16LE, 8000),
    StreamFormat(Codec.PCM_S16LE, 16000, frame_ms=100),
    StreamFormat(Codec.PCM_S16LE, 24000),
    StreamFormat(Codec.PCM_S16LE, 48000),
    StreamFormat(Codec.PCM_MULAW, 8000),
    StreamFormat(Codec.OPUS, 48000),
]


def test_multi_matches_separate_transcoders() -> None:
    pieces = random_pieces(SHORT, np.random.default_rng(8), 3000)
    mt = MultiTranscoder(MULTI_FORMATS, SOURCE_RATE_HZ)
    got: dict[str, list[EncodedFrame]] = {fmt.key: [] for fmt in MULTI_FORMATS}
    for piece in pieces:
        out = mt.push(piece)
        assert set(out) == set(got)
        for key, frames in out.items():
            got[key].extend(frames)
    for key, frames in mt.flush().items():
        got[key].extend(frames)
    for fmt in MULTI_FORMATS:
        assert got[fmt.key] == transcode(fmt, pieces), fmt.key


def test_multi_merges_duplicates_and_rejects_conflicts() -> None:
    fmt = StreamFormat(Codec.PCM_S16LE, 8000)
    mt = MultiTranscoder([fmt, fmt], SOURCE_RATE_HZ)
    assert list(mt.formats) == [fmt.key]
    with pytest.raises(ValueError, match="conflicting"):
        MultiTranscoder([fmt, StreamFormat(Codec.PCM_S16LE, 8000, frame_ms=100)], SOURCE_RATE_HZ)
    with pytest.raises(ValueError):
        MultiTranscoder([], SOURCE_RATE_HZ)


def test_multi_push_after_flush_raises() -> None:
    mt = MultiTranscoder(MULTI_FORMATS, SOURCE_RATE_HZ)
    mt.push(SHORT[:1000])
    mt.flush()
    with pytest.raises(RuntimeError):
        mt.push(b"")


@pytest.mark.parametrize("fmt", FORMATS, ids=_id)
def test_the_true_peak_limiter_moves_nothing_on_the_timeline(fmt: StreamFormat) -> None:
    """With a ceiling the chunks are the same in number and offsets, and audio that
    is already under the format's limit comes out unchanged, byte for byte."""
    quiet = sine(440, SOURCE_RATE_HZ * 3 // 4, SOURCE_RATE_HZ, amplitude=3000)
    pieces = random_pieces(quiet, np.random.default_rng(5), 3000)
    plain = transcode(fmt, pieces)
    tc = Transcoder(fmt, source_rate_hz=SOURCE_RATE_HZ, true_peak_dbtp=-1.0)
    limited = [f for p in pieces for f in tc.push(p)] + tc.flush()
    assert [(f.offset_us, f.duration_us) for f in limited] == [
        (f.offset_us, f.duration_us) for f in plain
    ]
    assert [f.payload for f in limited] == [f.payload for f in plain]
