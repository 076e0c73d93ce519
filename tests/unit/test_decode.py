"""FrameDecoder and write_wav."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from broadcaster.audio.decode import FrameDecoder, write_wav
from broadcaster.audio.transcode import Transcoder
from broadcaster.model import Codec, StreamFormat


def tone(n: int, rate_hz: int, freq_hz: float = 440, amplitude: float = 10000) -> bytes:
    t = np.arange(n) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


def test_pcm_is_passed_through() -> None:
    dec = FrameDecoder(StreamFormat(Codec.PCM_S16LE, 16000))
    payload = tone(320, 16000)
    assert dec.decode(payload) == payload


def test_pcm_odd_payload_is_rejected() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(StreamFormat(Codec.PCM_S16LE, 8000)).decode(b"\x00\x01\x02")


def test_mulaw_decodes_one_sample_per_byte_within_quantisation() -> None:
    fmt = StreamFormat(Codec.PCM_MULAW, 8000)
    pcm = tone(8000, 8000, freq_hz=250)
    tc = Transcoder(fmt, source_rate_hz=8000)
    frames = tc.push(pcm) + tc.flush()
    dec = FrameDecoder(fmt)
    for frame in frames:
        assert len(dec.decode(frame.payload)) == 2 * fmt.samples_per_frame
    out = np.frombuffer(b"".join(dec.decode(f.payload) for f in frames), "<i2").astype(float)
    ref = np.frombuffer(pcm, "<i2").astype(float)
    # G.711 μ-law keeps about 3 % relative precision (plus a small absolute step).
    assert np.all(np.abs(out - ref) <= 0.035 * np.abs(ref) + 16)


def test_mulaw_known_codes() -> None:
    dec = FrameDecoder(StreamFormat(Codec.PCM_MULAW, 8000))
    # 0xFF and 0x7F are the two zero codes, 0x80 / 0x00 the extremes.
    values = np.frombuffer(dec.decode(bytes([0xFF, 0x7F, 0x80, 0x00])), "<i2")
    assert list(values[:2]) == [0, 0]
    assert values[2] == 32124
    assert values[3] == -32124


def test_every_opus_packet_decodes_to_960_samples_including_the_first() -> None:
    fmt = StreamFormat(Codec.OPUS, 48000)
    tc = Transcoder(fmt, source_rate_hz=24000)
    frames = tc.push(tone(24000, 24000)) + tc.flush()
    assert len(frames) == 50
    dec = FrameDecoder(fmt)
    sizes = [len(dec.decode(f.payload)) // 2 for f in frames]
    assert sizes == [960] * 50


def test_opus_late_joiner_decodes_too() -> None:
    """An endpoint that starts mid-announcement gets full packets and the right pitch."""
    fmt = StreamFormat(Codec.OPUS, 48000)
    tc = Transcoder(fmt, source_rate_hz=48000)
    frames = tc.push(tone(48000, 48000, freq_hz=1000)) + tc.flush()
    dec = FrameDecoder(fmt)
    out = np.frombuffer(b"".join(dec.decode(f.payload) for f in frames[20:]), "<i2")
    assert out.size == 30 * 960
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert np.argmax(spectrum) * 48000 / out.size == pytest.approx(1000, abs=10)


def test_write_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(1234, 16000)
    path = tmp_path / "out.wav"
    write_wav(path, pcm, 16000)
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 16000
        assert wav.getnframes() == 1234
        assert wav.readframes(1234) == pcm


def test_write_wav_rejects_half_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_wav(tmp_path / "bad.wav", b"\x00", 8000)
