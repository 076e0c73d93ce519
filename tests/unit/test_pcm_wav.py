"""The WAV fast path of Runware results gives exactly what PyAV gives, or steps aside."""

from __future__ import annotations

import io
import wave

import numpy as np

from broadcaster.audio.decode import decode_audio_file, parse_pcm_wav
from broadcaster.speech.runware.engine import decode_speech_audio


def wav(channels: int = 1, width: int = 2, rate: int = 24000, extra_chunk: bool = False) -> bytes:
    n = rate // 10
    samples = (np.sin(np.arange(n * channels) / 7) * 9000).astype("<i2")
    if width == 1:
        samples = (samples // 256 + 128).astype("u1")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    data = buf.getvalue()
    if extra_chunk:  # a JUNK chunk (odd size, padded) between fmt and data
        fmt_end = 12 + 8 + 16
        extra = b"JUNK" + (3).to_bytes(4, "little") + b"abc\x00"
        data = data[:fmt_end] + extra + data[fmt_end:]
        data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:]
    return data


def test_mono_16_bit_is_read_from_the_data_chunk_like_pyav():
    for extra in (False, True):
        data = wav(extra_chunk=extra)
        fast = parse_pcm_wav(data)
        assert fast is not None
        assert fast == decode_audio_file(data)
        assert decode_speech_audio(data) == fast


def test_other_files_go_through_pyav():
    assert parse_pcm_wav(wav(channels=2)) is None
    assert parse_pcm_wav(wav(width=1)) is None
    assert parse_pcm_wav(b"ID3not a wav at all") is None
    stereo = wav(channels=2)
    assert decode_speech_audio(stereo) == decode_audio_file(stereo)
