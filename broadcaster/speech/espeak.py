"""The embedded default engine: espeak-ng loaded in-process through ctypes.

The shared library and its voice data ship inside the ``espeakng-loader``
wheel, so nothing has to be installed on the host and no subprocess is
started. espeak-ng keeps global state and is not thread-safe, so:

* every call into the library happens on the engine's single worker thread,
  while holding :data:`_LIBRARY`'s process-wide lock (two engines in one
  process share one library and must take turns too);
* the library runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with a short buffer, so
  ``espeak_Synth`` calls our callback every ~60 ms of audio while it works.
  The callback copies the samples and hands them to the event loop with
  ``call_soon_threadsafe``; PCM therefore streams while synthesis runs and the
  event loop never waits on the library.

Speed is split in two: espeak's own rate (words per minute, which sounds best)
covers what it can, and PyAV's ``atempo`` filter applies the rest, so the full
0.25–4x range is honoured.

The mapping from the production model's voices and languages to espeak voices
is made of pure functions (:func:`espeak_voice_for`, :func:`detect_language`,
:func:`speed_plan_for`, ...) so it can be tested without loading the library.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import threading
import unicodedata
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
import av.filter
import espeakng_loader
import numpy as np
from av.audio.frame import AudioFrame

from broadcaster.model import LANGUAGES, SPEED_MAX, SPEED_MIN, VOICES, PcmBlock, SpeechRequest
from broadcaster.speech.engine import SpeechError, SynthesisMeta

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Pure mapping: voices, languages, speed
# --------------------------------------------------------------------------------------

#: Production language name -> espeak-ng voice identifier (a file under espeak-ng-data/lang).
#:
#: English uses ``en-us`` rather than ``en-gb-x-rp``: espeak-ng marks both "mature",
#: and the production model's English presets sound American (Aiden is described as
#: an American voice), so en-us keeps the fallback engine closest to production.
#: French is ``fr``: that file *is* French (France) (its language tags are fr-fr and
#: fr), but ``espeak_SetVoiceByName("fr-fr")`` does not find it because the lookup
#: goes by name/file name, not by language tag.
#: Japanese is limited in espeak-ng: kana are read properly, but kanji have no
#: readings in its dictionary and are announced as "Chinese letter".
ESPEAK_LANGUAGES: Final[dict[str, str]] = {
    "English": "en-us",
    "Chinese": "cmn",
    "Japanese": "ja",
    "Korean": "ko",
    "German": "de",
    "French": "fr",
    "Russian": "ru",
    "Portuguese": "pt",
    "Spanish": "es",
    "Italian": "it",
}

#: The voice the production model would most naturally use for a language, for
#: ``voice="auto"``. Languages without a native preset get the default voice.
AUTO_VOICES: Final[dict[str, str]] = {
    "Chinese": "vivian",
    "Japanese": "ono_anna",
    "Korean": "sohee",
}
DEFAULT_AUTO_VOICE: Final = "ryan"


@dataclass(frozen=True, slots=True)
class VoiceStyle:
    """How one production voice is imitated: an espeak variant plus pitch settings.

    ``variant`` names a file under ``espeak-ng-data/voices/!v``; ``pitch`` and
    ``pitch_range`` are espeak's 0–100 parameters (50 is the variant's default).
    """

    variant: str
    pitch: int
    pitch_range: int


#: One style per production voice. Variants are chosen for gender/age and the pitch
#: settings spread the voices apart so that two announcements in the same language
#: with different voices are easy to tell apart.
VOICE_STYLES: Final[dict[str, VoiceStyle]] = {
    # Bright, edgy young Chinese woman: the widest female variant, high and lively.
    "vivian": VoiceStyle("f3", pitch=56, pitch_range=72),
    # Warm, gentle young woman: softer variant, a little lower and calmer.
    "serena": VoiceStyle("f2", pitch=38, pitch_range=40),
    # Seasoned older man, low and mellow: the "older" male variant pushed down.
    "uncle_fu": VoiceStyle("m1", pitch=28, pitch_range=38),
    # Young Beijing man, clear and natural.
    "dylan": VoiceStyle("m3", pitch=68, pitch_range=58),
    # Lively Sichuan man: strongly stressed variant with a wide range.
    "eric": VoiceStyle("m4", pitch=34, pitch_range=80),
    # Dynamic English man with strong rhythm.
    "ryan": VoiceStyle("m7", pitch=42, pitch_range=66),
    # Sunny young American man, clear midrange.
    "aiden": VoiceStyle("m6", pitch=60, pitch_range=46),
    # Playful, light Japanese woman: the highest setting of all.
    "ono_anna": VoiceStyle("f4", pitch=82, pitch_range=66),
    # Warm Korean woman.
    "sohee": VoiceStyle("f1", pitch=60, pitch_range=56),
}


@dataclass(frozen=True, slots=True)
class EspeakVoice:
    """Everything needed to select a voice in espeak-ng for one request."""

    language: str  # espeak voice identifier, e.g. "cmn"
    variant: str  # voice variant file, e.g. "f3"
    pitch: int  # espeakPITCH, 0..100
    pitch_range: int  # espeakRANGE, 0..100
    preset: str  # the production voice this imitates, e.g. "vivian"

    @property
    def name(self) -> str:
        """The string given to ``espeak_SetVoiceByName``, e.g. ``"cmn+f3"``."""
        return f"{self.language}+{self.variant}"


def _script_of(ch: str) -> str | None:
    """Coarse script class of one character, or None for everything we ignore."""
    code = ord(ch)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2FA1F
        or 0xF900 <= code <= 0xFAFF
    ):
        return "han"
    if 0x0400 <= code <= 0x052F:
        return "cyrillic"
    if ch.isalpha():
        return "other"
    return None


#: CJK characters carry roughly a syllable each while a Latin letter is a fraction
#: of one, so a few Han characters in a mostly-Latin sentence still decide the language.
_CJK_WEIGHT: Final = 3


def detect_language(text: str) -> str:
    """Guess a production language from the script the text is written in.

    Kana means Japanese (Japanese text also contains Han characters, so kana wins),
    Hangul Korean, Han Chinese, Cyrillic Russian; everything else, including
    Latin-script text in any language, is treated as English. The script with
    the most (weighted) letters decides, so an English sentence quoting one
    Russian word stays English.
    """
    counts = {"kana": 0, "hangul": 0, "han": 0, "cyrillic": 0, "other": 0}
    for ch in text:
        script = _script_of(ch)
        if script is not None:
            counts[script] += 1
    scores = {
        "Japanese": _CJK_WEIGHT * (counts["kana"] + counts["han"]) if counts["kana"] else 0,
        "Chinese": 0 if counts["kana"] else _CJK_WEIGHT * counts["han"],
        "Korean": _CJK_WEIGHT * counts["hangul"],
        "Russian": counts["cyrillic"],
        "English": counts["other"],
    }
    best = max(scores, key=lambda lang: scores[lang])
    return best if scores[best] > 0 else "English"


def _canonical(value: str, choices: tuple[str, ...], what: str) -> str:
    wanted = value.strip().casefold()
    for choice in choices:
        if choice.casefold() == wanted:
            return choice
    raise SpeechError(f"espeak-ng: unknown {what} {value!r} (expected one of {', '.join(choices)})")


def resolve_language(language: str, text: str) -> str:
    """Validate ``language`` (case-insensitively) and turn "Auto" into a concrete one."""
    canonical = _canonical(language, LANGUAGES, "language")
    return detect_language(text) if canonical == "Auto" else canonical


def resolve_voice(voice: str, language: str) -> str:
    """Validate ``voice`` (case-insensitively); "auto" picks one fitting ``language``."""
    if voice.strip().casefold() == "auto":
        return AUTO_VOICES.get(language, DEFAULT_AUTO_VOICE)
    return _canonical(voice, VOICES, "voice")


def espeak_voice_for(voice: str, language: str, text: str = "") -> EspeakVoice:
    """Map a production voice and language to an espeak-ng voice.

    ``text`` is only consulted when ``language`` is "Auto". Raises
    :class:`SpeechError` for unknown voices or languages.
    """
    concrete = resolve_language(language, text)
    preset = resolve_voice(voice, concrete)
    style = VOICE_STYLES[preset]
    return EspeakVoice(
        language=ESPEAK_LANGUAGES[concrete],
        variant=style.variant,
        pitch=style.pitch,
        pitch_range=style.pitch_range,
        preset=preset,
    )


#: espeak's default speaking rate; speed 1.0 means this many words per minute.
BASE_RATE_WPM: Final = 175
#: The rate range espeak documents for espeakRATE; beyond it quality drops quickly.
MIN_RATE_WPM: Final = 80
MAX_RATE_WPM: Final = 450
#: Residual tempo factors this close to 1 are inaudible and not worth a filter.
_TEMPO_EPSILON: Final = 0.01


@dataclass(frozen=True, slots=True)
class SpeedPlan:
    """How a requested speed is achieved: espeak's rate, then ``atempo`` for the rest."""

    rate_wpm: int
    tempo: float  # 1.0 means no atempo filter

    @property
    def effective_speed(self) -> float:
        return self.rate_wpm / BASE_RATE_WPM * self.tempo


def speed_plan_for(speed: float) -> SpeedPlan:
    """Split ``speed`` (0.25–4) into an espeak rate and a residual tempo factor.

    espeak's duration is close to inversely proportional to its rate (measured
    exponent 0.95–1.1 on sentence-length text), so the residual is simply
    ``speed / (rate / 175)``. Raises :class:`SpeechError` outside 0.25–4.
    """
    if not math.isfinite(speed) or not SPEED_MIN <= speed <= SPEED_MAX:
        raise SpeechError(f"espeak-ng: speed {speed!r} is outside {SPEED_MIN}–{SPEED_MAX}")
    rate = round(min(max(BASE_RATE_WPM * speed, MIN_RATE_WPM), MAX_RATE_WPM))
    tempo = speed * BASE_RATE_WPM / rate
    if abs(tempo - 1.0) < _TEMPO_EPSILON:
        tempo = 1.0
    return SpeedPlan(rate_wpm=rate, tempo=tempo)


#: Older FFmpeg builds accept 0.5–2.0 per atempo instance; staying inside that keeps
#: the filter portable, and chaining covers anything larger.
_ATEMPO_MIN: Final = 0.5
_ATEMPO_MAX: Final = 2.0


def atempo_factors(tempo: float) -> tuple[float, ...]:
    """Factors for a chain of ``atempo`` filters whose product is ``tempo``."""
    if not math.isfinite(tempo) or tempo <= 0:
        raise SpeechError(f"espeak-ng: invalid tempo factor {tempo!r}")
    factors: list[float] = []
    rest = tempo
    while rest > _ATEMPO_MAX:
        factors.append(_ATEMPO_MAX)
        rest /= _ATEMPO_MAX
    while rest < _ATEMPO_MIN:
        factors.append(_ATEMPO_MIN)
        rest /= _ATEMPO_MIN
    if abs(rest - 1.0) >= 1e-9 or not factors:
        factors.append(rest)
    return tuple(factors)


def clean_text(text: str) -> str:
    """Make text safe to hand to espeak as a C string of plain UTF-8.

    NUL would end the C string early; other control characters (except line
    breaks and tabs, which espeak treats as whitespace) can confuse its text
    decoder, so they become spaces.
    """
    out = []
    for ch in text:
        if ch in "\n\t\r":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SynthesisPlan:
    """A validated request, ready for the worker thread."""

    text: str
    voice: EspeakVoice
    speed: SpeedPlan


def plan_synthesis(request: SpeechRequest, max_text_chars: int) -> SynthesisPlan:
    """Validate ``request`` and decide voice and speed. Raises :class:`SpeechError`."""
    text = clean_text(request.text)
    if len(text) > max_text_chars:
        raise SpeechError(
            f"espeak-ng: text is {len(text)} characters, longer than the engine's "
            f"limit of {max_text_chars}; split it first"
        )
    voice = espeak_voice_for(request.voice, request.language, text)
    return SynthesisPlan(text=text, voice=voice, speed=speed_plan_for(request.speed))


# --------------------------------------------------------------------------------------
# The native library
# --------------------------------------------------------------------------------------

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # return an error instead of calling exit()
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 0x1
_ENDPAUSE: Final = 0x1000  # keep the sentence pause at the end, so segments don't run together
_EE_OK: Final = 0
_EE_NOT_FOUND: Final = 2
_PARAM_RATE: Final = 1
_PARAM_VOLUME: Final = 2
_PARAM_PITCH: Final = 3
_PARAM_RANGE: Final = 4
_PARAM_WORDGAP: Final = 7

#: Flags for espeak_Synth: plain UTF-8 text. espeakSSML and espeakPHONEMES are
#: deliberately absent, so markup and [[phonemes]] in user text are just text.
SYNTH_FLAGS: Final = _CHARS_UTF8 | _ENDPAUSE

#: Audio per callback. Short enough that the first block arrives almost at once,
#: long enough that the per-callback overhead (one loop wake-up) stays small.
BUFFER_MS: Final = 60

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Done:
    """Marks the end of one request's stream."""


_DONE: Final = _Done()

_Item = bytes | _Done | SpeechError


@dataclass(slots=True)
class _Job:
    plan: SynthesisPlan
    abort: threading.Event
    deliver: Callable[[_Item], None]
    tempo: _TempoFilter | None = None
    failure: BaseException | None = None


class _TempoFilter:
    """Streaming ``atempo`` through PyAV: push s16 mono blocks, get s16 mono blocks back."""

    def __init__(self, sample_rate_hz: int, tempo: float) -> None:
        self._rate = sample_rate_hz
        self._pts = 0
        self._graph = av.filter.Graph()
        nodes = [self._graph.add_abuffer(sample_rate=sample_rate_hz, format="s16", layout="mono")]
        nodes.extend(self._graph.add("atempo", f"{f:.6f}") for f in atempo_factors(tempo))
        # atempo handles s16 natively; aformat just guarantees what we hand on.
        nodes.append(
            self._graph.add(
                "aformat",
                sample_fmts="s16",
                channel_layouts="mono",
                sample_rates=str(sample_rate_hz),
            )
        )
        nodes.append(self._graph.add("abuffersink"))
        self._graph.link_nodes(*nodes)
        self._graph.configure()

    def push(self, pcm: bytes) -> list[bytes]:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._pts
        self._pts += samples.shape[1]
        self._graph.push(frame)
        return self._drain()

    def flush(self) -> list[bytes]:
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return out
            if not isinstance(frame, AudioFrame):  # pragma: no cover - audio-only graph
                raise SpeechError("espeak-ng: tempo filter produced a non-audio frame")
            data = frame.to_ndarray().astype("<i2", copy=False).tobytes()
            if data:
                out.append(data)


class _EspeakLibrary:
    """The process-wide espeak-ng library: one instance, shared by every engine.

    ``lock`` serialises all calls into the library. It is initialised when the
    first engine opens and terminated when the last one closes. The ctypes
    callback object lives as long as this singleton, so the library can never
    call a freed trampoline.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._dll: ctypes.CDLL | None = None
        self._users = 0
        self._sample_rate_hz = 0
        self._job: _Job | None = None
        self._callback = _SynthCallback(self._on_audio)

    # -- lifecycle (called on an engine's worker thread) --------------------------------

    def acquire(self) -> int:
        """Register one more engine, initialising the library if needed; returns its rate."""
        with self.lock:
            dll = self._load()
            if self._users == 0:
                try:
                    data_path = espeakng_loader.get_data_path().encode()
                except RuntimeError as exc:  # the wheel's voice data is missing
                    raise SpeechError(f"espeak-ng: {exc}") from exc
                rate = dll.espeak_Initialize(
                    _AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT
                )
                if rate <= 0:
                    raise SpeechError(f"espeak-ng: initialisation failed (code {rate})")
                dll.espeak_SetSynthCallback(self._callback)
                self._sample_rate_hz = rate
                version = dll.espeak_Info(None)
                log.info(
                    "espeak-ng %s initialised at %d Hz",
                    version.decode(errors="replace") if version else "?",
                    rate,
                )
            self._users += 1
            return self._sample_rate_hz

    def release(self) -> None:
        """Unregister one engine; the last one out terminates the library."""
        with self.lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0 and self._dll is not None:
                self._dll.espeak_Terminate()
                self._sample_rate_hz = 0

    def _load(self) -> ctypes.CDLL:
        if self._dll is not None:
            return self._dll
        try:
            dll = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise SpeechError(f"espeak-ng: cannot load the library: {exc}") from exc
        c_int, c_uint = ctypes.c_int, ctypes.c_uint
        dll.espeak_Initialize.argtypes = [c_int, c_int, ctypes.c_char_p, c_int]
        dll.espeak_Initialize.restype = c_int
        dll.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        dll.espeak_SetSynthCallback.restype = None
        dll.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        dll.espeak_SetVoiceByName.restype = c_int
        dll.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
        dll.espeak_SetParameter.restype = c_int
        dll.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size
            c_uint,  # position
            c_int,  # position_type
            c_uint,  # end_position
            c_uint,  # flags
            ctypes.POINTER(c_uint),  # unique_identifier
            ctypes.c_void_p,  # user_data
        ]
        dll.espeak_Synth.restype = c_int
        dll.espeak_Terminate.argtypes = []
        dll.espeak_Terminate.restype = c_int
        dll.espeak_Info.argtypes = [ctypes.c_void_p]
        dll.espeak_Info.restype = ctypes.c_char_p
        self._dll = dll
        return dll

    # -- synthesis (called on an engine's worker thread) --------------------------------

    def run(self, job: _Job, sample_rate_hz: int) -> None:
        """Synthesize one job, streaming through ``job.deliver``. Never raises."""
        try:
            with self.lock:
                self._run_locked(job, sample_rate_hz)
        except SpeechError as exc:
            job.deliver(exc)
        except Exception as exc:  # a bug or native failure must still end the stream
            log.exception("espeak-ng synthesis failed")
            job.deliver(SpeechError(f"espeak-ng: synthesis failed: {exc}"))
        else:
            if job.abort.is_set():
                # Only a consumer that is still listening (the engine was closed under
                # it) sees this; one that closed its iterator has gone already.
                job.deliver(SpeechError("espeak-ng: synthesis was cancelled", retryable=True))
            else:
                job.deliver(_DONE)

    def _run_locked(self, job: _Job, sample_rate_hz: int) -> None:
        if job.abort.is_set():
            return  # cancelled while queued behind another request
        dll = self._dll
        if dll is None or self._users == 0:
            raise SpeechError("espeak-ng: the library is not initialised (engine closed?)")
        plan = job.plan
        voice = plan.voice
        code = dll.espeak_SetVoiceByName(voice.name.encode())
        if code != _EE_OK:
            reason = "not found" if code == _EE_NOT_FOUND else f"error {code}"
            raise SpeechError(f"espeak-ng: cannot select voice {voice.name!r}: {reason}")
        # Parameters survive voice changes and earlier requests, so set each one we
        # use every time rather than trusting what the previous request left behind.
        # Punctuation and capitals announcement stay at their defaults (off): nothing
        # here changes them, and this build reports -1 when they are set even though
        # the value is taken.
        for param, value in (
            (_PARAM_RATE, plan.speed.rate_wpm),
            (_PARAM_VOLUME, 100),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, 0),
        ):
            code = dll.espeak_SetParameter(param, value, 0)
            if code != _EE_OK:
                raise SpeechError(f"espeak-ng: cannot set parameter {param} to {value}")
        if plan.speed.tempo != 1.0:
            try:
                job.tempo = _TempoFilter(sample_rate_hz, plan.speed.tempo)
            except av.FFmpegError as exc:
                raise SpeechError(f"espeak-ng: cannot build the tempo filter: {exc}") from exc
        text = plan.text.encode("utf-8") + b"\0"
        self._job = job
        try:
            code = dll.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, SYNTH_FLAGS, None, None)
        finally:
            self._job = None
        if job.failure is not None:
            raise SpeechError(f"espeak-ng: synthesis failed: {job.failure}") from job.failure
        if code != _EE_OK:
            raise SpeechError(f"espeak-ng: espeak_Synth returned error {code}", retryable=True)
        if job.tempo is not None and not job.abort.is_set():
            for block in job.tempo.flush():
                job.deliver(block)

    def _on_audio(
        self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None
    ) -> int:
        """The synth callback: copy samples out and say whether to go on (0) or stop (1).

        Runs on the worker thread inside ``espeak_Synth``. It must never raise: an
        exception cannot cross the C frames, so failures are stored on the job and
        synthesis is stopped instead.
        """
        job = self._job
        if job is None or job.abort.is_set():
            return 1
        if not wav or count <= 0:
            return 0  # end-of-synthesis notification; nothing to copy
        try:
            pcm = ctypes.string_at(wav, count * 2)
            if job.tempo is None:
                job.deliver(pcm)
            else:
                for block in job.tempo.push(pcm):
                    job.deliver(block)
        except BaseException as exc:
            job.failure = exc
            return 1
        return 1 if job.abort.is_set() else 0


_LIBRARY: Final = _EspeakLibrary()


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


class EspeakEngine:
    """espeak-ng as a :class:`~broadcaster.speech.engine.SpeechEngine`.

    Construct it at start-up: the constructor loads and initialises the library
    on the engine's worker thread and waits for that (a few milliseconds), so a
    broken installation fails immediately with :class:`SpeechError`.

    Requests are synthesized one at a time on the single worker thread; a second
    ``synthesize()`` waits (without blocking the event loop) until the first has
    finished or been cancelled.
    """

    name = "espeak-ng"
    #: One worker thread does all synthesis, so asking for several segments at once
    #: gains nothing.
    concurrency = 1

    def __init__(self, *, max_text_chars: int = 1000) -> None:
        self.max_text_chars = max_text_chars
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        try:
            self.sample_rate_hz: int = self._executor.submit(_LIBRARY.acquire).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._closed = False
        self._active: set[threading.Event] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def synthesize(
        self, request: SpeechRequest, meta: SynthesisMeta | None = None
    ) -> AsyncGenerator[PcmBlock, None]:
        """Stream PCM for ``request`` at :attr:`sample_rate_hz` while espeak works.

        Blocks travel from the worker thread through a per-request
        ``asyncio.Queue`` that is deliberately unbounded: espeak runs hundreds of
        times faster than real time, so it usually finishes a request long before
        a real-time consumer has played it, and blocking the worker instead would
        hold up every other request. The queue is bounded in practice by one
        request's text (at most ``max_text_chars``): 1000 characters of English
        are about a minute of audio, 2.5 MB of PCM at 22 kHz; CJK text carries
        about five times more audio per character, and speed 0.25 multiplies
        either by four, so the worst case is some tens of MB. The queue is dropped
        as soon as the iterator is closed.

        Closing the iterator early (or cancelling the consumer) makes the
        synthesis callback return "abort" at its next call, within one buffer
        (~60 ms of audio, well under a millisecond of work).
        """
        if self._closed:
            raise SpeechError("espeak-ng: engine is closed")
        plan = plan_synthesis(request, self.max_text_chars)
        if not plan.text.strip():
            return

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        abort = threading.Event()

        def deliver(item: _Item) -> None:
            # Runs on the worker thread. If the loop has gone away nobody will ever
            # read this stream, so stop synthesizing it.
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                abort.set()

        job = _Job(plan=plan, abort=abort, deliver=deliver)
        self._active.add(abort)
        try:
            try:
                self._executor.submit(_LIBRARY.run, job, self.sample_rate_hz)
            except RuntimeError as exc:  # executor shut down by a concurrent aclose()
                raise SpeechError("espeak-ng: engine is closed") from exc
            while True:
                item = await queue.get()
                if isinstance(item, bytes):
                    yield PcmBlock(samples=item, sample_rate_hz=self.sample_rate_hz)
                elif isinstance(item, SpeechError):
                    raise item
                else:
                    return
        finally:
            abort.set()
            self._active.discard(abort)

    async def aclose(self) -> None:
        """Stop running requests, release the library and let the worker thread end."""
        if self._closed:
            return
        self._closed = True
        for abort in list(self._active):
            abort.set()
        # Queued behind any running job, which stops at its next callback.
        await asyncio.wrap_future(self._executor.submit(_LIBRARY.release))
        self._executor.shutdown(wait=False)
