"""The ``audioInference`` task for Qwen3-TTS 1.7B CustomVoice, validated locally.

Every rule of the parameter reference
(``/work/shared/seed/qwen3-tts-1.7b-customvoice-runware-api.txt``) is checked
here, so an invalid request fails with a :class:`TaskValidationError` naming the
field (as a dotted wire path, e.g. ``speech.speed``) before anything reaches the
network. Field names are exactly the wire names (camelCase).

Numbers and booleans are strict: ``"5"``, ``5.0`` or ``True`` are not accepted
where the API wants an integer, and strings are not accepted for numbers, so what
is validated is what is sent.

:meth:`AudioInferenceTask.to_wire` sends the fields that were given plus the ones
the API requires (``taskType``, ``taskUUID``, ``model``, ``speech.text``,
``speech.voice``). Fields left at their default are omitted because the API applies
the very same default; ``to_wire(include_defaults=True)`` spells them out.

Also here: the small non-inference task payloads (authentication, ping,
getResponse), result parsing, inline-audio decoding and :func:`max_new_tokens_for`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broadcaster.model import LANGUAGES, SPEED_MAX, SPEED_MIN, VOICES
from broadcaster.speech.runware.errors import ErrorCategory, RunwareError, error_from_item

MODEL_ID: Final = "alibaba:qwen@3-tts-1.7b-customvoice"
TEXT_MAX_CHARS: Final = 2000
#: ``speech.voice`` values: the nine presets, plus ``auto`` (the API picks one).
VOICE_CHOICES: Final[tuple[str, ...]] = (*VOICES, "auto")
TTL_MIN_SECONDS: Final = 60
NUMBER_RESULTS_MAX: Final = 4
BITRATE_MIN_KBPS: Final = 8


class OutputType(enum.StrEnum):
    URL = "URL"
    BASE64_DATA = "base64Data"
    BASE64 = "base64Data"  # alias of BASE64_DATA
    DATA_URI = "dataURI"


class OutputFormat(enum.StrEnum):
    MP3 = "MP3"
    WAV = "WAV"
    FLAC = "FLAC"
    OGG = "OGG"


class DeliveryMethod(enum.StrEnum):
    SYNC = "sync"
    ASYNC = "async"


# --- audioSettings tables (seed document), sample rate Hz -> (min, max) kbps ----------

_MP3_LIMITS: Final[Mapping[int, tuple[int, int]]] = {
    8000: (8, 64),
    11025: (8, 64),
    12000: (8, 64),
    16000: (8, 160),
    22050: (8, 160),
    24000: (8, 160),
    32000: (32, 320),
    44100: (32, 320),
    48000: (32, 320),
}
_OGG_MONO_LIMITS: Final[Mapping[int, tuple[int, int]]] = {
    8000: (8, 40),
    12000: (16, 48),
    16000: (16, 96),
    24000: (16, 80),
    48000: (32, 224),
}
_OGG_STEREO_LIMITS: Final[Mapping[int, tuple[int, int]]] = {
    8000: (16, 80),
    12000: (16, 96),
    16000: (24, 192),
    24000: (32, 160),
    48000: (48, 256),
}
#: Formats that take ``audioSettings`` (the lossy ones).
LOSSY_FORMATS: Final = frozenset({OutputFormat.MP3, OutputFormat.OGG})


def bitrate_limits(fmt: OutputFormat, channels: int) -> Mapping[int, tuple[int, int]]:
    """Sample rate (Hz) -> (min, max) bitrate in kbps for ``fmt`` at ``channels``.

    MP3 has one table for mono and stereo; OGG (Vorbis) one per channel count.
    Raises ``ValueError`` for a lossless format, which takes no ``audioSettings``.
    """
    if fmt is OutputFormat.MP3:
        return _MP3_LIMITS
    if fmt is OutputFormat.OGG:
        return _OGG_MONO_LIMITS if channels == 1 else _OGG_STEREO_LIMITS
    raise ValueError(f"{fmt.value} takes no audioSettings")


# --- validation errors ---------------------------------------------------------------


class TaskValidationError(ValueError):
    """A task breaks a rule of the API. ``field`` is the first bad field's wire path
    (``"speech.speed"``, ``"audioSettings.bitrate"``, ``"ttl"``); ``problems`` lists
    every ``(field, message)`` pydantic found."""

    def __init__(self, field: str, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.problems = problems if problems is not None else [(field, message)]


class _FieldProblem(ValueError):
    """Raised inside validators to name a field other than the one being validated
    (cross-field rules); ``field`` is relative to the model that raises it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _from_pydantic(exc: ValidationError) -> TaskValidationError:
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldProblem):
            path += ctx_error.field.split(".")
            message = ctx_error.message
        elif err["type"] == "extra_forbidden":
            message = "unknown field (not a parameter of this model's audioInference task)"
        elif err["type"] == "missing":
            message = "required"
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if "input" in err and err["type"] != "value_error":
                message += f" (got {_short(err['input'])})"
        problems.append((".".join(path) or "(task)", message))
    field, message = problems[0]
    return TaskValidationError(field, message, problems)


# --- models --------------------------------------------------------------------------

_UUID4_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE
)


def _check_uuid4(value: str, what: str = "taskUUID") -> str:
    if not _UUID4_RE.fullmatch(value):
        raise ValueError(
            f"{what} must be a UUID version 4 in canonical form "
            f"(xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx), got {_short(value)}"
        )
    return value.lower()


def _check_http_uri(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError(f"must be an absolute http:// or https:// URI, got {_short(value)}")
    return value


def new_task_uuid() -> str:
    """A fresh UUID v4 string, as every task needs."""
    return str(uuid.uuid4())


class _WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSettings(_WireModel):
    """Encoding of lossy output (MP3/OGG). Both ``sampleRate`` and ``bitrate`` are
    required here: the valid bitrates depend on the sample rate, so the pair can only
    be checked when both are known."""

    sampleRate: int = Field(strict=True)
    bitrate: int = Field(strict=True, ge=BITRATE_MIN_KBPS, description="kbps")
    channels: int = Field(default=2, strict=True)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {v}")
        return v


class Speech(_WireModel):
    text: str = Field(strict=True)
    voice: str = Field(default="auto", strict=True)
    language: str = Field(default="Auto", strict=True)
    speed: float = Field(default=1.0, strict=True)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        if len(v) > TEXT_MAX_CHARS:
            raise ValueError(
                f"text is {len(v)} characters; at most {TEXT_MAX_CHARS} are accepted "
                "(split it into segments first)"
            )
        return v

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        if v not in VOICE_CHOICES:
            raise ValueError(f"unknown voice {v!r}; one of {', '.join(VOICE_CHOICES)}")
        return v

    @field_validator("language")
    @classmethod
    def _language(cls, v: str) -> str:
        if v not in LANGUAGES:
            raise ValueError(f"unknown language {v!r}; one of {', '.join(LANGUAGES)}")
        return v

    @field_validator("speed")
    @classmethod
    def _speed(cls, v: float) -> float:
        if not math.isfinite(v) or not SPEED_MIN <= v <= SPEED_MAX:
            raise ValueError(f"speed must be between {SPEED_MIN} and {SPEED_MAX:g}, got {v!r}")
        hundredths = round(v * 100)
        if abs(v * 100 - hundredths) > 1e-6:
            raise ValueError(f"speed goes in steps of 0.01, got {v!r}")
        return hundredths / 100


class Settings(_WireModel):
    maxNewTokens: int = Field(strict=True, ge=1)


class AudioInferenceTask(_WireModel):
    """One ``audioInference`` task for :data:`MODEL_ID`. Immutable once validated."""

    taskType: Literal["audioInference"] = "audioInference"
    taskUUID: str = Field(default_factory=new_task_uuid, strict=True)
    model: str = Field(default=MODEL_ID, strict=True)
    positivePrompt: str | None = Field(default=None, strict=True, min_length=1)
    speech: Speech
    settings: Settings | None = None
    outputType: OutputType = OutputType.URL
    outputFormat: OutputFormat = OutputFormat.MP3
    audioSettings: AudioSettings | None = None
    webhookURL: str | None = Field(default=None, strict=True)
    deliveryMethod: DeliveryMethod = DeliveryMethod.SYNC
    uploadEndpoint: str | None = Field(default=None, strict=True)
    ttl: int | None = Field(default=None, strict=True, ge=TTL_MIN_SECONDS)
    includeCost: bool = Field(default=False, strict=True)
    numberResults: int = Field(default=1, strict=True, ge=1, le=NUMBER_RESULTS_MAX)

    @field_validator("taskUUID")
    @classmethod
    def _task_uuid(cls, v: str) -> str:
        return _check_uuid4(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v != MODEL_ID:
            raise ValueError(f"model must be {MODEL_ID!r}, got {v!r}")
        return v

    @field_validator("positivePrompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("positivePrompt is blank (leave it out for no style prompt)")
        return v

    @field_validator("webhookURL", "uploadEndpoint")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_http_uri(v)

    @model_validator(mode="after")
    def _cross_field(self) -> AudioInferenceTask:
        if self.ttl is not None and self.outputType is not OutputType.URL:
            raise _FieldProblem(
                "ttl",
                f"ttl only applies to outputType URL (outputType is {self.outputType.value})",
            )
        if self.audioSettings is not None:
            _check_audio_settings(self.outputFormat, self.audioSettings)
        return self

    def to_wire(self, *, include_defaults: bool = False) -> dict[str, Any]:
        """The task as sent: wire names, ``None`` left out, and (unless
        ``include_defaults``) fields that were never set left out too."""
        body = self.model_dump(mode="json", exclude_none=True, exclude_unset=not include_defaults)
        wire: dict[str, Any] = {
            "taskType": self.taskType,
            "taskUUID": self.taskUUID,
            "model": self.model,
        }
        wire.update(body)
        wire["speech"] = {"text": self.speech.text, "voice": self.speech.voice, **body["speech"]}
        return wire


def _check_audio_settings(fmt: OutputFormat, s: AudioSettings) -> None:
    if fmt not in LOSSY_FORMATS:
        raise _FieldProblem(
            "audioSettings",
            f"audioSettings must not be given with outputFormat {fmt.value}: "
            "only MP3 and OGG take encoding settings",
        )
    limits = bitrate_limits(fmt, s.channels)
    what = "MP3" if fmt is OutputFormat.MP3 else f"OGG {'mono' if s.channels == 1 else 'stereo'}"
    if s.sampleRate not in limits:
        allowed = ", ".join(str(r) for r in sorted(limits))
        raise _FieldProblem(
            "audioSettings.sampleRate",
            f"{what} supports sample rates {allowed} Hz, got {s.sampleRate}",
        )
    low, high = limits[s.sampleRate]
    if not low <= s.bitrate <= high:
        raise _FieldProblem(
            "audioSettings.bitrate",
            f"{what} at {s.sampleRate} Hz takes {low}–{high} kbps, got {s.bitrate}",
        )


def validate_task(data: Mapping[str, Any]) -> AudioInferenceTask:
    """Validate a task given as a wire-shaped mapping; raises :class:`TaskValidationError`."""
    try:
        return AudioInferenceTask.model_validate(dict(data))
    except ValidationError as exc:
        raise _from_pydantic(exc) from None


def build_task(**fields: Any) -> AudioInferenceTask:
    """``build_task(speech={"text": ...}, outputFormat="WAV", ...)``: same as
    :func:`validate_task` with keyword arguments."""
    return validate_task(fields)


# --- other task payloads ---------------------------------------------------------------


def authentication_task(api_key: str, session_uuid: str | None = None) -> dict[str, Any]:
    """The first message on a WebSocket; ``session_uuid`` (the previous
    ``connectionSessionUUID``) resumes a session so buffered results are replayed."""
    if not api_key or not api_key.strip():
        raise ValueError("api_key is empty")
    task: dict[str, Any] = {"taskType": "authentication", "apiKey": api_key}
    if session_uuid is not None:
        task["connectionSessionUUID"] = session_uuid
    return task


def ping_task() -> dict[str, Any]:
    """Application-level keep-alive; the server answers ``{"taskType":"ping","pong":true}``."""
    return {"taskType": "ping", "ping": True}


def get_response_task(task_uuid: str) -> dict[str, Any]:
    """Poll the results of an ``async`` task."""
    return {"taskType": "getResponse", "taskUUID": _check_uuid4(task_uuid)}


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioResult:
    """One result item (one generation) of an audioInference task or a poll."""

    task_uuid: str
    audio_uuid: str | None = None
    audio_url: str | None = None
    audio_base64: str | None = None
    audio_data_uri: str | None = None
    cost: float | None = None
    seed: int | None = None
    status: str | None = None
    result_index: int | None = None

    @property
    def has_audio(self) -> bool:
        return any((self.audio_url, self.audio_base64, self.audio_data_uri))

    @property
    def is_processing(self) -> bool:
        return self.status == "processing"


def _malformed(message: str, task_uuid: str | None = None) -> RunwareError:
    return RunwareError(
        ErrorCategory.SERVER_ERROR, message, code="malformedResult", task_uuid=task_uuid
    )


def _item_str(item: Mapping[str, Any], key: str, task_uuid: str | None) -> str | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _malformed(f"{key} is {type(value).__name__}, expected a string", task_uuid)
    return value


def _item_int(item: Mapping[str, Any], key: str, task_uuid: str | None) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(f"{key} is {type(value).__name__}, expected an integer", task_uuid)
    return value


def parse_audio_result(item: Mapping[str, Any]) -> AudioResult:
    """Read one ``data`` item (sync result, webhook body or getResponse item).

    Unknown keys are ignored. An item with ``status: "error"`` raises the
    :class:`RunwareError` it describes; an item with none of ``audioURL``,
    ``audioBase64Data``, ``audioDataURI`` raises one too (category server_error, code
    ``malformedResult``) unless its status is ``processing``.
    """
    raw_uuid = item.get("taskUUID")
    task_uuid = raw_uuid if isinstance(raw_uuid, str) and raw_uuid else None
    status = _item_str(item, "status", task_uuid)
    if status == "error" or isinstance(item.get("error"), Mapping):
        raise error_from_item(item)
    if task_uuid is None:
        raise _malformed(f"result item without a taskUUID (keys: {sorted(item)})")
    cost = item.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
        raise _malformed(f"cost is {type(cost).__name__}, expected a number", task_uuid)
    result = AudioResult(
        task_uuid=task_uuid,
        audio_uuid=_item_str(item, "audioUUID", task_uuid),
        audio_url=_item_str(item, "audioURL", task_uuid),
        audio_base64=_item_str(item, "audioBase64Data", task_uuid),
        audio_data_uri=_item_str(item, "audioDataURI", task_uuid),
        cost=None if cost is None else float(cost),
        seed=_item_int(item, "seed", task_uuid),
        status=status,
        result_index=_item_int(item, "resultIndex", task_uuid),
    )
    if not result.has_audio and not result.is_processing:
        raise _malformed(
            f"result item has no audioURL, audioBase64Data or audioDataURI (status {status!r})",
            task_uuid,
        )
    return result


_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _b64decode(text: str, what: str, task_uuid: str) -> bytes:
    if text and len(text) % 4 == 0:
        # Fast path (megabytes of WAV): validate=True already refuses anything outside
        # the alphabet, so the copy and the regex scan below are only for odd inputs.
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    compact = "".join(text.split())
    if not _B64_RE.fullmatch(compact):
        raise _malformed(f"{what} is not base64", task_uuid)
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not valid base64", task_uuid) from None
    if not data:
        raise _malformed(f"{what} is empty", task_uuid)
    return data


def decode_inline_audio(result: AudioResult) -> bytes | None:
    """The audio bytes of a ``base64Data`` or ``dataURI`` result; ``None`` for a URL
    result (fetch ``audio_url`` instead). Raises :class:`RunwareError` (server_error,
    ``malformedResult``) if the payload is not base64 or not a base64 data URI."""
    if result.audio_base64 is not None:
        return _b64decode(result.audio_base64, "audioBase64Data", result.task_uuid)
    if result.audio_data_uri is not None:
        uri = result.audio_data_uri
        header, sep, payload = uri.partition(",")
        if not header.lower().startswith("data:") or not sep:
            raise _malformed(f"audioDataURI is not a data: URI ({_short(uri)})", result.task_uuid)
        params = [p.strip().lower() for p in header[5:].split(";")]
        if params[-1] != "base64":
            raise _malformed(
                f"audioDataURI is not base64-encoded ({_short(header)})", result.task_uuid
            )
        return _b64decode(payload, "audioDataURI", result.task_uuid)
    return None


_EXTENSIONS: Final[Mapping[OutputFormat, str]] = {
    OutputFormat.MP3: ".mp3",
    OutputFormat.WAV: ".wav",
    OutputFormat.FLAC: ".flac",
    OutputFormat.OGG: ".ogg",
}


def audio_extension(fmt: OutputFormat) -> str:
    """File name extension, with its dot: ``".mp3"``, ``".wav"``, ``".flac"``, ``".ogg"``."""
    return _EXTENSIONS[OutputFormat(fmt)]


# --- maxNewTokens sizing -----------------------------------------------------------------

#: Qwen3-TTS-12Hz's speech codec emits 12.5 frames per second of audio, and the talker
#: generates one frame per step, so ``maxNewTokens`` is a cap on audio length:
#: 2048 tokens ≈ 164 s.
CODEC_TOKENS_PER_SECOND: Final = 12.5
#: Seconds per character at speed 1, deliberately slow (worst cases, not averages).
#: CJK: one syllable per character, ~0.35 s even when read slowly (< 3 chars/s).
SECONDS_PER_CJK_CHAR: Final = 0.35
#: Digits are read out as whole words ("7" -> "seven"): same budget as a CJK syllable.
SECONDS_PER_DIGIT: Final = 0.35
#: Latin (and other alphabetic) text: ~11 chars/s; calm English runs at 14–16.
SECONDS_PER_OTHER_CHAR: Final = 0.09
NEW_TOKENS_HEADROOM: Final = 1.5
NEW_TOKENS_EXTRA: Final = 50
NEW_TOKENS_MIN: Final = 64
NEW_TOKENS_MAX: Final = 4096

_CJK_RANGES: Final = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul Compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana Phonetic Extensions
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul Syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK Extensions B..
)


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def estimate_speech_seconds(text: str, speed: float = 1.0) -> float:
    """A generous (upper-end) estimate of how long ``text`` takes to speak.

    Runs of whitespace count as one character. ``speed`` above 1 does not shorten the
    estimate: Runware documents ``speed`` as *playback* speed, so it may well be applied
    to the audio after generation, in which case the model generates as many tokens as
    at speed 1. Speeds below 1 lengthen it (in case speed is applied by the model).
    """
    if not SPEED_MIN <= speed <= SPEED_MAX:
        raise ValueError(f"speed must be between {SPEED_MIN} and {SPEED_MAX:g}, got {speed!r}")
    seconds = 0.0
    previous_space = False
    for ch in text:
        if ch.isspace():
            if not previous_space:
                seconds += SECONDS_PER_OTHER_CHAR
            previous_space = True
            continue
        previous_space = False
        if _is_cjk(ch):
            seconds += SECONDS_PER_CJK_CHAR
        elif ch.isdigit():
            seconds += SECONDS_PER_DIGIT
        else:
            seconds += SECONDS_PER_OTHER_CHAR
    return seconds / min(speed, 1.0)


def max_new_tokens_for(text: str, speed: float = 1.0) -> int:
    """``settings.maxNewTokens`` for one segment.

    The cap must never cut speech short, yet should not be far above need: when the
    model fails to stop ("risk of hangs"), generation runs until the cap. So: a
    generous duration estimate (:func:`estimate_speech_seconds`) × 12.5 tokens/s,
    × 1.5 headroom, + 50 tokens (leading/trailing silence, end of stream), clamped to
    [64, 4096]. 4096 tokens ≈ 5.5 minutes, beyond any 2000-character segment spoken at
    speed ≥ 1. The seed's ~500–1100 character English examples come out at
    910–1890, inside the 2048 the seed itself uses.
    """
    seconds = estimate_speech_seconds(text, speed)
    tokens = math.ceil(seconds * CODEC_TOKENS_PER_SECOND * NEW_TOKENS_HEADROOM) + NEW_TOKENS_EXTRA
    return max(NEW_TOKENS_MIN, min(NEW_TOKENS_MAX, tokens))
