"""Built-in chimes, chime files and silence."""

from __future__ import annotations

import itertools
import re
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from broadcaster.audio.chimes import (
    CHIMES,
    ChimeError,
    chime_duration_s,
    chime_pcm,
    load_chime_file,
    silence,
)
from broadcaster.audio.loudness import measure

RATES = [8000, 16000, 22050, 24000, 48000]


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768


def dominant_hz(x: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spectrum))])


def test_names() -> None:
    assert CHIMES == ("two-tone", "three-tone", "four-tone", "alert")
    assert [chime_duration_s(name) for name in CHIMES] == pytest.approx([1.5, 1.8, 2.1, 1.0])


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", CHIMES)
def test_chime_length_level_and_no_clicks(name: str, rate: int) -> None:
    pcm = chime_pcm(name, rate)
    x = samples(pcm)
    assert x.size == round(chime_duration_s(name) * rate)
    # Starts and ends on silence, and gets there smoothly.
    assert x[0] == 0.0
    assert x[-1] == 0.0
    edge = max(2, rate // 1000)  # first and last millisecond
    peak = np.max(np.abs(x))
    assert np.max(np.abs(x[:edge])) < 0.1 * peak
    assert np.max(np.abs(x[-edge:])) < 0.1 * peak
    # No step at the edges bigger than half of what the tone itself makes.
    steps = np.abs(np.diff(x))
    assert np.max(steps[:edge]) < 0.5 * np.max(steps)
    assert np.max(steps[-edge:]) < 0.5 * np.max(steps)
    report = measure(pcm, rate)
    assert report.integrated_lufs == pytest.approx(-16.0, abs=0.5)
    assert report.true_peak_dbtp <= -1.0


def test_chime_pitches() -> None:
    rate = 24000
    two = samples(chime_pcm("two-tone", rate))
    assert dominant_hz(two[: int(0.6 * rate)], rate) == pytest.approx(659.26, abs=3)
    assert dominant_hz(two[int(0.6 * rate) :], rate) == pytest.approx(523.25, abs=3)
    three = samples(chime_pcm("three-tone", rate))
    starts = [0.0, 0.45, 0.9, 1.8]
    pitches = [
        dominant_hz(three[int(a * rate) : int(b * rate)], rate)
        for a, b in itertools.pairwise(starts)
    ]
    assert pitches == pytest.approx([523.25, 659.26, 783.99], abs=3)
    four = samples(chime_pcm("four-tone", rate))
    starts = [0.0, 0.4, 0.8, 1.2, 2.1]
    pitches = [
        dominant_hz(four[int(a * rate) : int(b * rate)], rate)
        for a, b in itertools.pairwise(starts)
    ]
    assert pitches == pytest.approx([392.0, 523.25, 659.26, 523.25], abs=3)
    assert dominant_hz(samples(chime_pcm("alert", rate)), rate) == pytest.approx(1000, abs=2)


def test_chime_other_target_and_cache() -> None:
    pcm = chime_pcm("alert", 16000, target_lufs=-23.0, true_peak_dbtp=-3.0)
    assert measure(pcm, 16000).integrated_lufs == pytest.approx(-23.0, abs=0.5)
    assert chime_pcm("alert", 16000, target_lufs=-23.0, true_peak_dbtp=-3.0) is pcm


def test_unknown_chime() -> None:
    with pytest.raises(ChimeError, match="gong"):
        chime_pcm("gong", 16000)
    with pytest.raises(ValueError):
        chime_pcm("alert", 0)


def test_silence() -> None:
    assert silence(500, 16000) == bytes(2 * 8000)
    assert silence(0, 24000) == b""
    assert len(silence(1, 22050)) == 2 * 22  # rounded to whole samples
    assert len(silence(10.5, 8000)) == 2 * 84
    with pytest.raises(ValueError):
        silence(-1, 16000)


def _write_wav(path: Path, data: npt.NDArray[np.int16], rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.astype("<i2").tobytes())


def test_load_stereo_wav_as_mono_16k(tmp_path: Path) -> None:
    rate = 44100
    n = int(rate * 1.2)
    t = np.arange(n) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 440 * t)
    interleaved = np.rint(np.stack([left, right], axis=1).reshape(-1) * 32767).astype(np.int16)
    path = tmp_path / "chime.wav"
    _write_wav(path, interleaved, rate, channels=2)

    x = samples(load_chime_file(path, 16000))

    assert x.size == round(n * 16000 / rate)
    assert dominant_hz(x, 16000) == pytest.approx(440, abs=2)
    # Channels are averaged: (0.4 + 0.2) / 2.
    middle = x[1000:-1000]
    assert np.max(np.abs(middle)) == pytest.approx(0.3, abs=0.01)


def test_load_with_normalization(tmp_path: Path) -> None:
    rate = 22050
    t = np.arange(rate) / rate
    tone = np.rint(0.05 * np.sin(2 * np.pi * 600 * t) * np.hanning(t.size) * 32767)
    path = tmp_path / "quiet.wav"
    _write_wav(path, tone.astype(np.int16), rate, channels=1)
    pcm = load_chime_file(str(path), 24000, target_lufs=-16.0)
    assert len(pcm) == 2 * 24000
    assert measure(pcm, 24000).integrated_lufs == pytest.approx(-16.0, abs=0.5)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(ChimeError, match=r"nope\.wav"):
        load_chime_file(path, 16000)
    with pytest.raises(ChimeError, match=re.escape(tmp_path.name)):
        load_chime_file(tmp_path, 16000)  # a directory


def test_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "chime.wav"
    path.write_text("this is not a RIFF file, just some text\n" * 20)
    with pytest.raises(ChimeError, match=r"chime\.wav"):
        load_chime_file(path, 16000)


def test_empty_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    _write_wav(path, np.zeros(0, dtype=np.int16), 16000, channels=1)
    with pytest.raises(ChimeError, match=r"empty\.wav"):
        load_chime_file(path, 16000)


# --- chime files named by API requests: the folder and the limits -------------------------


def _plain_wav(path, seconds, rate=8000):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x10\x00" * int(seconds * rate))
    return path


def test_resolve_chime_name_finds_a_file_in_the_folder(tmp_path):
    from broadcaster.audio.chimes import resolve_chime_name

    _plain_wav(tmp_path / "ding.wav", 0.1)
    assert resolve_chime_name(tmp_path, "ding.wav") == (tmp_path / "ding.wav").resolve()


@pytest.mark.parametrize(
    "name", ["../x.wav", "/etc/passwd", "a/b.wav", "..", ".hidden", "", "x\x00.wav", "a" * 200]
)
def test_resolve_chime_name_refuses_paths(tmp_path, name):
    from broadcaster.audio.chimes import ChimeError, resolve_chime_name

    with pytest.raises(ChimeError):
        resolve_chime_name(tmp_path, name)


def test_resolve_chime_name_refuses_a_symlink_out_and_a_folder(tmp_path):
    from broadcaster.audio.chimes import ChimeError, resolve_chime_name

    folder = tmp_path / "chimes"
    folder.mkdir()
    outside = _plain_wav(tmp_path / "secret.wav", 0.1)
    (folder / "out.wav").symlink_to(outside)
    (folder / "sub").mkdir()
    with pytest.raises(ChimeError, match="leads out"):
        resolve_chime_name(folder, "out.wav")
    with pytest.raises(ChimeError, match="no chime file"):
        resolve_chime_name(folder, "sub")
    # a symlink that stays inside is fine
    _plain_wav(folder / "real.wav", 0.1)
    (folder / "alias.wav").symlink_to(folder / "real.wav")
    assert resolve_chime_name(folder, "alias.wav") == (folder / "real.wav").resolve()


def test_load_chime_file_refuses_a_big_file_before_decoding(tmp_path):
    from broadcaster.audio.chimes import ChimeError, load_chime_file

    path = tmp_path / "big.wav"
    path.write_bytes(b"\x00" * 5000)  # not even audio: refused on its size alone
    with pytest.raises(ChimeError, match="5000 bytes; at most 4096"):
        load_chime_file(path, 8000, max_bytes=4096)


def test_load_chime_file_stops_decoding_past_the_duration_limit(tmp_path):
    from broadcaster.audio.chimes import ChimeError, load_chime_file

    path = _plain_wav(tmp_path / "long.wav", 3.0)
    with pytest.raises(ChimeError, match="longer than 2 s"):
        load_chime_file(path, 8000, max_duration_s=2.0)
    assert len(load_chime_file(path, 8000, max_duration_s=3.5)) == 2 * 24000
