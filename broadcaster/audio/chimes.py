"""Pre- and post-announcement chimes, and silence, as mono s16le PCM.

Built-in chimes are synthesized with numpy at any sample rate and normalized
to the announcement loudness target (``LoudnessNormalizer``), so a chime
plays at the level of the speech around it.  Each note is a struck-bell tone:
a few harmonics with exponential decay, a 5 ms raised-cosine attack and a
40 ms raised-cosine fade at its end, so nothing clicks (a chime starts and
ends on a zero sample).  Partials at or above 45 % of the sample rate are left
out so that nothing aliases at 8 kHz.

==============  ==============================================  ======
name            notes (each lasts until the next one starts)    length
==============  ==============================================  ======
``two-tone``    ding-dong, descending: E5 0.6 s, C5 0.9 s       1.5 s
``three-tone``  ascending, rail style: C5 0.45 s, E5 0.45 s,    1.8 s
                G5 0.9 s
``four-tone``   airport style, up then down: G4 0.4 s,          2.1 s
                C5 0.4 s, E5 0.4 s, C5 0.9 s
``alert``       steady 1 kHz tone for emergencies, 10 ms fades  1.0 s
==============  ==============================================  ======

A chime is exactly ``round(length * sample_rate_hz)`` samples long
(``chime_duration_s`` gives the length).

``load_chime_file`` reads a chime from any audio file PyAV can decode, refusing a
file larger than ``max_bytes`` before opening it and stopping as soon as the
decoded audio passes ``max_duration_s`` (so a long file never fills memory).
``resolve_chime_name`` finds a chime named by an API request inside the chime
folder: a bare file name, never a path, never through a symlink leading out.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from broadcaster.audio.loudness import LoudnessNormalizer

__all__ = [
    "CHIMES",
    "ChimeError",
    "chime_duration_s",
    "chime_pcm",
    "load_chime_file",
    "resolve_chime_name",
    "silence",
]

Floats = npt.NDArray[np.float64]


class ChimeError(ValueError):
    """A chime that cannot be produced: unknown name, missing or unreadable file."""


@dataclass(frozen=True, slots=True)
class _Note:
    freq_hz: float
    length_s: float


#: Equal-tempered pitches (A4 = 440 Hz).
_G4, _C5, _E5, _G5 = 392.00, 523.25, 659.26, 783.99

_NOTES: dict[str, tuple[_Note, ...]] = {
    "two-tone": (_Note(_E5, 0.6), _Note(_C5, 0.9)),
    "three-tone": (_Note(_C5, 0.45), _Note(_E5, 0.45), _Note(_G5, 0.9)),
    "four-tone": (_Note(_G4, 0.4), _Note(_C5, 0.4), _Note(_E5, 0.4), _Note(_C5, 0.9)),
}
_ALERT_HZ = 1000.0
_ALERT_S = 1.0
_ALERT_FADE_S = 0.010

#: Names of the built-in chimes.
CHIMES: tuple[str, ...] = (*_NOTES, "alert")

#: Bell partials: (multiple of the fundamental, amplitude, decay time constant in s).
_PARTIALS: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 0.45),
    (2.0, 0.35, 0.25),
    (3.0, 0.12, 0.15),
    (4.0, 0.06, 0.10),
)
_ATTACK_S = 0.005
_RELEASE_S = 0.040
_MAX_PARTIAL_FRACTION = 0.45


def _fades(n: int, rate: int, attack_s: float, release_s: float) -> Floats:
    """Raised-cosine fade-in and fade-out, exactly 0 on the first and last sample."""
    env = np.ones(n)
    for length, reverse in ((int(attack_s * rate), False), (int(release_s * rate), True)):
        length = min(length, n)
        if length < 2:
            continue
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, length))
        if reverse:
            env[n - length :] *= ramp[::-1]
        else:
            env[:length] *= ramp
    return env


def _note(note: _Note, n: int, rate: int) -> Floats:
    t = np.arange(n) / rate
    out = np.zeros(n)
    for multiple, amplitude, decay_s in _PARTIALS:
        freq = note.freq_hz * multiple
        if freq >= _MAX_PARTIAL_FRACTION * rate:
            continue
        out += amplitude * np.exp(-t / decay_s) * np.sin(2.0 * math.pi * freq * t)
    return out * _fades(n, rate, _ATTACK_S, _RELEASE_S)


def _synthesize(name: str, rate: int) -> Floats:
    if name == "alert":
        n = round(_ALERT_S * rate)
        t = np.arange(n) / rate
        tone = np.sin(2.0 * math.pi * _ALERT_HZ * t)
        return tone * _fades(n, rate, _ALERT_FADE_S, _ALERT_FADE_S)
    notes = _NOTES[name]
    # Note boundaries are rounded from the start times, so the whole chime
    # is exactly round(total_s * rate) samples long.
    ends = np.rint(np.cumsum([note.length_s for note in notes]) * rate).astype(int)
    starts = [0, *ends[:-1]]
    return np.concatenate(
        [
            _note(note, int(end - start), rate)
            for note, start, end in zip(notes, starts, ends, strict=True)
        ]
    )


def chime_duration_s(name: str) -> float:
    """Length of the built-in chime ``name`` in seconds."""
    if name == "alert":
        return _ALERT_S
    if name not in _NOTES:
        raise ChimeError(f"unknown chime {name!r}; built-in chimes: {', '.join(CHIMES)}")
    return math.fsum(note.length_s for note in _NOTES[name])


def _to_pcm(x: Floats) -> bytes:
    # Half scale: the normalizer sets the level anyway.
    samples: npt.NDArray[np.int16] = np.rint(x / np.max(np.abs(x)) * 16384.0).astype("<i2")
    return samples.tobytes()


def _check_rate(sample_rate_hz: int) -> None:
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")


@functools.lru_cache(maxsize=64)
def chime_pcm(
    name: str,
    sample_rate_hz: int,
    *,
    target_lufs: float = -16.0,
    true_peak_dbtp: float = -1.0,
) -> bytes:
    """The built-in chime ``name`` as mono s16le at ``sample_rate_hz``, normalized.

    Results are cached (they are immutable bytes), so asking again is free.
    """
    chime_duration_s(name)  # rejects unknown names
    _check_rate(sample_rate_hz)
    pcm = _to_pcm(_synthesize(name, sample_rate_hz))
    return LoudnessNormalizer(target_lufs, true_peak_dbtp).normalize(pcm, sample_rate_hz)


def silence(ms: float, sample_rate_hz: int) -> bytes:
    """``ms`` milliseconds of mono s16le silence (rounded to whole samples)."""
    _check_rate(sample_rate_hz)
    if ms < 0:
        raise ValueError(f"silence length must not be negative, got {ms} ms")
    return bytes(2 * round(ms * sample_rate_hz / 1000))


def _mono_s16(frame: AudioFrame) -> bytes:
    # Packed mono s16: one plane, possibly padded past the last sample.
    return bytes(frame.planes[0])[: frame.samples * 2]


_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def resolve_chime_name(folder: str | os.PathLike[str], name: str) -> Path:
    """The file ``name`` inside ``folder``, or ``ChimeError`` saying why not.

    ``name`` must be a bare file name (no separator, no ``..``); the file must be
    a regular file whose real path (symlinks followed) is still inside the real
    path of ``folder``.
    """
    if not _BARE_NAME.fullmatch(name) or ".." in name:
        raise ChimeError(f"{name[:40]!r} is not a plain file name")
    root = Path(folder).resolve()
    candidate = (root / name).resolve()
    if candidate.parent != root:
        raise ChimeError(f"{name!r} leads out of the chime folder")
    if not candidate.is_file():
        raise ChimeError(f"no chime file {name!r} in the chime folder")
    return candidate


def load_chime_file(
    path: str | os.PathLike[str],
    sample_rate_hz: int,
    *,
    target_lufs: float | None = None,
    true_peak_dbtp: float = -1.0,
    max_bytes: int | None = None,
    max_duration_s: float | None = None,
) -> bytes:
    """Decode an audio file (WAV, FLAC, MP3, Ogg...) to mono s16le at ``sample_rate_hz``.

    Channels are mixed down by averaging (libswresample's default downmix) and
    the audio is resampled; the result has exactly ``round(n * sample_rate_hz
    / file_rate)`` samples for ``n`` decoded samples.  With ``target_lufs``
    it is also loudness-normalized like the built-in chimes; by default it is
    returned as recorded.  A missing file, a file without audio or one PyAV
    cannot decode raises ``ChimeError`` naming the path.  Synchronous and
    CPU-bound: call it from a worker thread (or once at start-up).
    """
    _check_rate(sample_rate_hz)
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ChimeError(f"chime file {name!r} does not exist or is not a file")
    if max_bytes is not None and os.path.getsize(name) > max_bytes:
        raise ChimeError(
            f"chime file {name!r} is {os.path.getsize(name)} bytes; at most {max_bytes} are read"
        )
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate_hz)
    out = bytearray()
    in_samples = 0
    in_rate = 0
    try:
        with av.open(name, mode="r") as container:
            if not container.streams.audio:
                raise ChimeError(f"chime file {name!r} has no audio stream")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                in_samples += frame.samples
                in_rate = frame.sample_rate
                if max_duration_s is not None and in_samples > max_duration_s * in_rate:
                    raise ChimeError(f"chime file {name!r} is longer than {max_duration_s:g} s")
                for converted in resampler.resample(frame):
                    out += _mono_s16(converted)
            for converted in resampler.resample(None):
                out += _mono_s16(converted)
    except (av.error.FFmpegError, OSError) as exc:
        raise ChimeError(f"cannot decode chime file {name!r}: {exc}") from None
    if in_samples == 0 or in_rate <= 0:
        raise ChimeError(f"chime file {name!r} holds no audio")
    wanted = 2 * round(in_samples * sample_rate_hz / in_rate)
    pcm = bytes(out[:wanted]) + bytes(max(0, wanted - len(out)))
    if target_lufs is None:
        return pcm
    return LoudnessNormalizer(target_lufs, true_peak_dbtp).normalize(pcm, sample_rate_hz)
