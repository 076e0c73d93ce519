"""A local, strict fake of Runware's API for ``alibaba:qwen@3-tts-1.7b-customvoice``.

It speaks the documented protocol (see ``shared/reference/runware-protocol.md``)
on 127.0.0.1 so tests never reach the network, and it makes *real* speech with
the embedded espeak-ng engine, encoded with PyAV into the requested format.

Usage::

    async with FakeRunware(api_key="test-key") as fake:
        fake.ws_url    # ws://127.0.0.1:PORT/v1   (WebSocket API)
        fake.rest_url  # http://127.0.0.1:PORT/v1 (REST API, POST)
        fake.base_url  # http://127.0.0.1:PORT    (audio URLs live under /audio/)

Protocol choices a client implementer must know (the places where the docs
leave room, and what this fake does):

* Frames from the server are JSON objects: ``{"data": [item]}`` or
  ``{"errors": [error]}``. The WebSocket fake sends **one item per frame**.
* Error items: ``{"taskType", "taskUUID", "code", "message", "parameter"}``;
  ``taskUUID`` is missing when the task had none (or a fault was injected with
  ``with_task_uuid=False``); ``parameter`` is present for validation errors.
* WS sync (``deliveryMethod`` absent or ``"sync"``): nothing is sent on
  acceptance; each result arrives as its own ``{"data":[item]}`` frame
  (``numberResults`` frames per task), or a task failure as ``{"errors":[...]}``.
* Async: the submission is answered at once with
  ``{"data":[{"taskType":"audioInference","taskUUID":U,"status":"processing"}]}``;
  results are **never pushed** afterwards. Poll with
  ``[{"taskType":"getResponse","taskUUID":U}]``; the answer is a ``data`` frame
  whose items have ``taskType: "audioInference"`` and ``status``:
  ``processing`` (one item, ``progress`` 0–99), ``success`` (one item per result,
  with the result fields and ``progress: 100``) or ``error`` (one item with
  ``error: {code, message[, parameter]}``). Unknown task → ``errors`` with code
  ``taskNotFound`` (HTTP 404 on REST).
* Resume: authenticating with a known ``connectionSessionUUID`` (within
  ``buffer_s`` of the session losing its socket) returns the **same** UUID in
  the auth reply, and then every frame that could not be delivered while no
  socket was attached is replayed **exactly as it would have been sent**, in
  order, right after the auth reply. Frames older than ``buffer_s`` are dropped.
  Unknown or expired UUIDs silently get a new session (a different UUID).
* ``duplicateTaskUUID`` is returned for a taskUUID whose task is still
  processing (stalled tasks process forever): retry with a *fresh* taskUUID.
* ``speech.voice`` is required and case-sensitive (lower-case presets or
  ``auto``); ``speech.language`` is case-sensitive Title-case; ``speech.speed``
  must be a multiple of 0.01 in 0.25–4; ``outputFormat``/``outputType``/
  ``deliveryMethod`` are case-sensitive.
* ``audioSettings`` (MP3/OGG only) defaults: ``sampleRate`` 24000, ``channels``
  2, ``bitrate`` 64 kbps clamped into the table's range. The native FFmpeg
  Vorbis encoder only encodes stereo and has no bitrate control, so OGG files
  are always 2-channel (mono is upmixed) and ``bitrate`` is validated only.
* WAV and FLAC are 24 kHz mono s16, like the native model's output.
* URLs expire after ``ttl`` seconds (default ``default_url_ttl_s``), then 404.
* The connection is closed (code 1000) after ``idle_timeout_s`` without any
  JSON frame in either direction; protocol-level WebSocket pings do not count.
* Webhooks get one POST per successful result item (no retries, failures are
  not posted). ``uploadEndpoint`` gets one PUT of the raw file per result; a
  failed upload fails the task with ``uploadFailed``. Only loopback hosts are
  contacted; others are recorded as ``blocked`` (and fail the upload).
* Messages larger than 1 MiB are normal (base64 WAV): clients must raise the
  ``websockets`` default ``max_size``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import io
import json
import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import av
import numpy as np
from aiohttp import web
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from yarl import URL

from broadcaster.model import LANGUAGES, SPEED_MAX, SPEED_MIN, VOICES, SpeechRequest
from broadcaster.speech.espeak import EspeakEngine

log = logging.getLogger(__name__)

MODEL_ID: Final = "alibaba:qwen@3-tts-1.7b-customvoice"
MAX_TEXT_CHARS: Final = 2000
NATIVE_RATE_HZ: Final = 24000
MAX_NEW_TOKENS: Final = 262_144

TASK_KEYS: Final = frozenset(
    {
        "taskType",
        "taskUUID",
        "model",
        "positivePrompt",
        "speech",
        "settings",
        "webhookURL",
        "includeCost",
        "numberResults",
        "uploadEndpoint",
        "ttl",
        "outputType",
        "outputFormat",
        "deliveryMethod",
        "audioSettings",
    }
)
SPEECH_KEYS: Final = frozenset({"text", "voice", "language", "speed"})
SETTINGS_KEYS: Final = frozenset({"maxNewTokens"})
AUDIO_SETTINGS_KEYS: Final = frozenset({"sampleRate", "bitrate", "channels"})
OUTPUT_TYPES: Final = ("URL", "base64Data", "dataURI")
OUTPUT_FORMATS: Final = ("MP3", "WAV", "FLAC", "OGG")
DELIVERY_METHODS: Final = ("sync", "async")

#: sampleRate -> (min kbps, max kbps); the same for mono and stereo.
MP3_BITRATES: Final[dict[int, tuple[int, int]]] = {
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
#: channels -> sampleRate -> (min kbps, max kbps)
OGG_BITRATES: Final[dict[int, dict[int, tuple[int, int]]]] = {
    1: {8000: (8, 40), 12000: (16, 48), 16000: (16, 96), 24000: (16, 80), 48000: (32, 224)},
    2: {8000: (16, 80), 12000: (16, 96), 16000: (24, 192), 24000: (32, 160), 48000: (48, 256)},
}
DEFAULT_SAMPLE_RATE: Final = 24000
DEFAULT_CHANNELS: Final = 2
DEFAULT_BITRATE_KBPS: Final = 64


@dataclass(frozen=True, slots=True)
class AudioFormat:
    container: str
    codec: str
    ext: str
    mime: str


FORMATS: Final[dict[str, AudioFormat]] = {
    "WAV": AudioFormat("wav", "pcm_s16le", "wav", "audio/wav"),
    "FLAC": AudioFormat("flac", "flac", "flac", "audio/flac"),
    "MP3": AudioFormat("mp3", "libmp3lame", "mp3", "audio/mpeg"),
    "OGG": AudioFormat("ogg", "vorbis", "ogg", "audio/ogg"),
}

_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def http_status_for(code: str) -> int:
    """The HTTP status the REST fake uses for an error code."""
    low = code.lower()
    if code == "taskNotFound" or low.endswith("notfound"):
        return 404
    if "apikey" in low or code in ("unauthorized", "authenticationFailed"):
        return 401
    if code in ("paymentRequired", "quotaExceeded") or any(
        word in low for word in ("credits", "quota", "balance")
    ):
        return 402
    if code in ("forbidden", "permissionDenied"):
        return 403
    if "ratelimit" in low or code == "queueFull":
        return 429
    if "timeout" in low:
        return 504
    if code in ("serviceUnavailable", "noAvailableServer", "modelUnavailable"):
        return 503
    if low.startswith(
        ("invalid", "missing", "unsupported", "unknown", "duplicate", "conflict", "value")
    ):
        return 400
    return 500


class TaskError(Exception):
    """One error item. Raised by validation; carried by failed tasks."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        task_type: str | None = "audioInference",
        task_uuid: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.parameter = parameter
        self.task_type = task_type
        self.task_uuid = task_uuid
        self.http_status = http_status if http_status is not None else http_status_for(code)

    def item(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.task_type is not None:
            out["taskType"] = self.task_type
        if self.task_uuid is not None:
            out["taskUUID"] = self.task_uuid
        out["code"] = self.code
        out["message"] = self.message
        if self.parameter is not None:
            out["parameter"] = self.parameter
        return out


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_uuid4(value: Any) -> bool:
    """A canonical (hyphenated, 36-character) RFC 4122 version-4 UUID string."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value.lower()


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = URL(value)
    except (ValueError, TypeError):
        return False
    return parts.scheme in ("http", "https") and bool(parts.host)


@dataclass(frozen=True, slots=True)
class AudioParams:
    """A validated audioInference task."""

    task_uuid: str
    text: str
    voice: str
    language: str
    speed: float
    positive_prompt: str | None
    output_type: str
    output_format: str
    delivery: str
    include_cost: bool
    number_results: int
    ttl: int | None
    webhook_url: str | None
    upload_endpoint: str | None
    sample_rate: int
    channels: int
    bitrate_kbps: int | None
    max_new_tokens: int | None


def _unknown_keys(obj: dict[str, Any], allowed: frozenset[str], prefix: str) -> str | None:
    extra = sorted(k for k in obj if k not in allowed)
    return f"{prefix}{extra[0]}" if extra else None


def validate_audio_task(task: dict[str, Any]) -> AudioParams:
    """Validate one audioInference task like the real API. Raises :class:`TaskError`."""
    raw_uuid = task.get("taskUUID")
    task_uuid = raw_uuid if isinstance(raw_uuid, str) else None

    def fail(code: str, message: str, parameter: str) -> TaskError:
        return TaskError(code, message, parameter=parameter, task_uuid=task_uuid)

    if "taskUUID" not in task:
        raise fail("missingParameter", "Missing required parameter 'taskUUID'.", "taskUUID")
    if not is_uuid4(raw_uuid):
        raise fail(
            "invalidTaskUUID", "Invalid value for 'taskUUID': must be a UUID v4.", "taskUUID"
        )
    assert task_uuid is not None
    unknown = _unknown_keys(task, TASK_KEYS, "")
    if unknown is not None:
        raise fail("unknownParameter", f"Unknown parameter '{unknown}'.", unknown)

    if "model" not in task:
        raise fail("missingParameter", "Missing required parameter 'model'.", "model")
    if task["model"] != MODEL_ID:
        raise fail("invalidModel", f"Invalid value for 'model': expected {MODEL_ID!r}.", "model")

    prompt = task.get("positivePrompt")
    if "positivePrompt" in task and (
        not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_TEXT_CHARS
    ):
        raise fail(
            "invalidPositivePrompt",
            f"Invalid value for 'positivePrompt': a string of 1-{MAX_TEXT_CHARS} characters.",
            "positivePrompt",
        )

    # speech
    if "speech" not in task:
        raise fail("missingParameter", "Missing required parameter 'speech'.", "speech")
    speech = task["speech"]
    if not isinstance(speech, dict):
        raise fail("invalidSpeech", "Invalid value for 'speech': must be an object.", "speech")
    unknown = _unknown_keys(speech, SPEECH_KEYS, "speech.")
    if unknown is not None:
        raise fail("unknownParameter", f"Unknown parameter '{unknown}'.", unknown)
    if "text" not in speech:
        raise fail("missingParameter", "Missing required parameter 'speech.text'.", "speech.text")
    text = speech["text"]
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_CHARS:
        raise fail(
            "invalidText",
            f"Invalid value for 'speech.text': a string of 1-{MAX_TEXT_CHARS} characters.",
            "speech.text",
        )
    if "voice" not in speech:
        raise fail("missingParameter", "Missing required parameter 'speech.voice'.", "speech.voice")
    voice = speech["voice"]
    if voice != "auto" and voice not in VOICES:
        raise fail(
            "invalidVoice",
            f"Invalid value for 'speech.voice': one of {', '.join((*VOICES, 'auto'))}.",
            "speech.voice",
        )
    language = speech.get("language", "Auto")
    if language not in LANGUAGES:
        raise fail(
            "invalidLanguage",
            f"Invalid value for 'speech.language': one of {', '.join(LANGUAGES)}.",
            "speech.language",
        )
    speed = speech.get("speed", 1)
    if (
        not _is_number(speed)
        or not SPEED_MIN <= speed <= SPEED_MAX
        or abs(speed * 100 - round(speed * 100)) > 1e-6
    ):
        raise fail(
            "invalidSpeed",
            f"Invalid value for 'speech.speed': a number from {SPEED_MIN} to {SPEED_MAX} "
            "in steps of 0.01.",
            "speech.speed",
        )

    # settings
    max_new_tokens: int | None = None
    if "settings" in task:
        settings = task["settings"]
        if not isinstance(settings, dict):
            raise fail("invalidSettings", "Invalid value for 'settings': an object.", "settings")
        unknown = _unknown_keys(settings, SETTINGS_KEYS, "settings.")
        if unknown is not None:
            raise fail("unknownParameter", f"Unknown parameter '{unknown}'.", unknown)
        if "maxNewTokens" in settings:
            value = settings["maxNewTokens"]
            if not _is_int(value) or not 1 <= value <= MAX_NEW_TOKENS:
                raise fail(
                    "invalidMaxNewTokens",
                    f"Invalid value for 'settings.maxNewTokens': an integer 1-{MAX_NEW_TOKENS}.",
                    "settings.maxNewTokens",
                )
            max_new_tokens = value

    # platform options
    output_type = task.get("outputType", "URL")
    if output_type not in OUTPUT_TYPES:
        raise fail(
            "invalidOutputType",
            f"Invalid value for 'outputType': one of {', '.join(OUTPUT_TYPES)}.",
            "outputType",
        )
    output_format = task.get("outputFormat", "MP3")
    if output_format not in OUTPUT_FORMATS:
        raise fail(
            "invalidOutputFormat",
            f"Invalid value for 'outputFormat': one of {', '.join(OUTPUT_FORMATS)}.",
            "outputFormat",
        )
    delivery = task.get("deliveryMethod", "sync")
    if delivery not in DELIVERY_METHODS:
        raise fail(
            "invalidDeliveryMethod",
            "Invalid value for 'deliveryMethod': one of sync, async.",
            "deliveryMethod",
        )
    include_cost = task.get("includeCost", False)
    if not isinstance(include_cost, bool):
        raise fail(
            "invalidIncludeCost", "Invalid value for 'includeCost': a boolean.", "includeCost"
        )
    number_results = task.get("numberResults", 1)
    if not _is_int(number_results) or not 1 <= number_results <= 4:
        raise fail(
            "invalidNumberResults",
            "Invalid value for 'numberResults': an integer from 1 to 4.",
            "numberResults",
        )
    ttl: int | None = None
    if "ttl" in task:
        ttl = task["ttl"]
        if not _is_int(ttl) or ttl < 60:
            raise fail("invalidTtl", "Invalid value for 'ttl': an integer >= 60 (seconds).", "ttl")
        if output_type != "URL":
            raise fail(
                "unsupportedParameter",
                "'ttl' only applies when 'outputType' is URL.",
                "ttl",
            )
    webhook_url = task.get("webhookURL")
    if "webhookURL" in task and not _is_http_url(webhook_url):
        raise fail(
            "invalidWebhookURL", "Invalid value for 'webhookURL': an http(s) URI.", "webhookURL"
        )
    upload_endpoint = task.get("uploadEndpoint")
    if "uploadEndpoint" in task and not _is_http_url(upload_endpoint):
        raise fail(
            "invalidUploadEndpoint",
            "Invalid value for 'uploadEndpoint': an http(s) URI.",
            "uploadEndpoint",
        )

    # audioSettings
    sample_rate = NATIVE_RATE_HZ
    channels = 1
    bitrate: int | None = None
    if output_format in ("MP3", "OGG"):
        sample_rate, channels = DEFAULT_SAMPLE_RATE, DEFAULT_CHANNELS
        audio_settings = task.get("audioSettings", {})
        if not isinstance(audio_settings, dict):
            raise fail(
                "invalidAudioSettings",
                "Invalid value for 'audioSettings': an object.",
                "audioSettings",
            )
        unknown = _unknown_keys(audio_settings, AUDIO_SETTINGS_KEYS, "audioSettings.")
        if unknown is not None:
            raise fail("unknownParameter", f"Unknown parameter '{unknown}'.", unknown)
        channels = audio_settings.get("channels", DEFAULT_CHANNELS)
        if not _is_int(channels) or channels not in (1, 2):
            raise fail(
                "invalidChannels",
                "Invalid value for 'audioSettings.channels': 1 or 2.",
                "audioSettings.channels",
            )
        table = MP3_BITRATES if output_format == "MP3" else OGG_BITRATES[channels]
        sample_rate = audio_settings.get("sampleRate", DEFAULT_SAMPLE_RATE)
        if not _is_int(sample_rate) or sample_rate not in table:
            raise fail(
                "invalidSampleRate",
                f"Invalid value for 'audioSettings.sampleRate' with {output_format}: one of "
                f"{', '.join(str(r) for r in table)}.",
                "audioSettings.sampleRate",
            )
        low, high = table[sample_rate]
        bitrate = audio_settings.get("bitrate", min(max(DEFAULT_BITRATE_KBPS, low), high))
        if not _is_int(bitrate) or not low <= bitrate <= high:
            raise fail(
                "invalidBitrate",
                f"Invalid value for 'audioSettings.bitrate': {low}-{high} kbps for "
                f"{output_format} at {sample_rate} Hz with {channels} channel(s).",
                "audioSettings.bitrate",
            )
    elif "audioSettings" in task:
        raise fail(
            "unsupportedParameter",
            f"'audioSettings' must not be provided with outputFormat {output_format}.",
            "audioSettings",
        )

    return AudioParams(
        task_uuid=task_uuid,
        text=text,
        voice=voice,
        language=language,
        speed=float(speed),
        positive_prompt=prompt,
        output_type=output_type,
        output_format=output_format,
        delivery=delivery,
        include_cost=include_cost,
        number_results=number_results,
        ttl=ttl,
        webhook_url=webhook_url,
        upload_endpoint=upload_endpoint,
        sample_rate=sample_rate,
        channels=channels,
        bitrate_kbps=bitrate,
        max_new_tokens=max_new_tokens,
    )


# --------------------------------------------------------------------------------------
# Encoding (runs in a worker thread)
# --------------------------------------------------------------------------------------


def encode_audio(
    pcm: bytes,
    in_rate_hz: int,
    output_format: str,
    *,
    sample_rate: int,
    channels: int,
    bitrate_kbps: int | None = None,
) -> bytes:
    """Encode mono s16le PCM into a complete file of ``output_format``."""
    fmt = FORMATS[output_format]
    samples = np.frombuffer(pcm, dtype="<i2")
    if samples.size == 0:  # nothing audible in the text: a short silence, still a valid file
        samples = np.zeros(in_rate_hz // 10, dtype="<i2")
    if fmt.codec == "vorbis":
        channels = 2  # FFmpeg's native Vorbis encoder only encodes stereo
    layout = "stereo" if channels == 2 else "mono"
    options = {"strict": "experimental"} if fmt.codec == "vorbis" else {}
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt.container) as out:
        stream = out.add_stream(fmt.codec, rate=sample_rate, options=options)
        assert isinstance(stream, AudioStream)
        stream.layout = layout
        if bitrate_kbps is not None:
            stream.bit_rate = bitrate_kbps * 1000
        resampler = AudioResampler(format=stream.format.name, layout=layout, rate=sample_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = in_rate_hz
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    last_activity: float
    session: _Session | None = None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dead: bool = False  # reset by drop_after_tasks: later frames are lost


@dataclass(eq=False)
class _Session:
    uuid: str
    conn: _Conn | None = None
    detached_at: float | None = None  # fake clock
    #: (fake-clock time produced, frame) for frames no socket could take
    buffer: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)


@dataclass(eq=False)
class _Failure:
    code: str
    message: str
    with_task_uuid: bool
    http_status: int | None
    parameter: str | None
    when: Literal["processing", "submit"]
    delay_ms: float

    def error(self, task_uuid: str) -> TaskError:
        return TaskError(
            self.code,
            self.message,
            parameter=self.parameter,
            task_uuid=task_uuid if self.with_task_uuid else None,
            http_status=self.http_status,
        )


@dataclass(eq=False)
class _Task:
    params: AudioParams
    transport: str
    session: _Session | None
    started: float  # loop time
    status: Literal["processing", "success", "error"] = "processing"
    latency_s: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    error: TaskError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _StoredAudio:
    data: bytes
    mime: str
    ext: str
    expires_at: float  # fake clock


def _error_frame(*errors: TaskError) -> dict[str, Any]:
    return {"errors": [e.item() for e in errors]}


class FakeRunware:
    """The fake server. See the module docstring for the protocol it speaks.

    Constructor arguments:

    * ``api_key``: the only key accepted.
    * ``buffer_s``: how long a session stays resumable after losing its socket,
      and how long undelivered frames are kept (default 120).
    * ``idle_timeout_s``: close a WebSocket after this long without JSON frames.
    * ``default_url_ttl_s``: lifetime of ``audioURL`` files without ``ttl``.
    * ``max_msg_size``: largest inbound WebSocket message.
    * ``host``/``port``: where to listen (default 127.0.0.1, an ephemeral port).
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        buffer_s: float = 120.0,
        idle_timeout_s: float = 120.0,
        default_url_ttl_s: float = 3600.0,
        max_msg_size: int = 64 * 1024 * 1024,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.buffer_s = buffer_s
        self.idle_timeout_s = idle_timeout_s
        self.default_url_ttl_s = default_url_ttl_s
        self.max_msg_size = max_msg_size
        self.host = host
        self.port = port

        # Switches tests flip while the server runs.
        self.refuse_websocket = False
        self.auth_fail = False

        # Observability.
        self.tasks_received: list[dict[str, Any]] = []
        self.auth_requests: list[dict[str, Any]] = []
        self.syntheses = 0
        self.connections = 0
        self.pings = 0
        self.polls = 0
        self.rest_requests = 0
        self.drops = 0
        self.idle_closes = 0
        self.webhook_deliveries: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []

        self._base_latency_ms = 0.0
        self._per_char_latency_ms = 0.0
        self._failures: deque[_Failure] = deque()
        self._stalls = 0
        # Periodic faults (holes): every Nth valid audioInference task, counted from 1.
        self._every_count = 0
        self._stall_every = 0
        self._fail_every: tuple[int, str, str] | None = None
        self._rate_limit_every = 0
        self._drop_on_accept = 0
        self._drop_after_results: int | None = None
        self._drop_after_tasks: int | None = None
        self.tasks_lost_in_drop = 0
        self._clock_offset = 0.0

        self._conns: set[_Conn] = set()
        self._sessions: dict[str, _Session] = {}
        self._tasks: dict[str, _Task] = {}
        self._audio: dict[str, _StoredAudio] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._engine: EspeakEngine | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> FakeRunware:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._engine = EspeakEngine(max_text_chars=MAX_TEXT_CHARS)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application(client_max_size=self.max_msg_size)
        app.router.add_get("/v1", self._ws_handler)
        app.router.add_post("/v1", self._rest_handler)
        app.router.add_get("/audio/{name}", self._audio_handler)
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        self._closing.set()
        for conn in list(self._conns):
            self._abort(conn)
        pending = [t.runner for t in self._tasks.values() if t.runner is not None]
        pending += list(self._background)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(BaseException):
                await t
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/v1"

    # -- fault injection ----------------------------------------------------------------

    def latency_ms(self, text: str) -> float:
        """Processing time of a task before its results are produced (may be replaced)."""
        return self._base_latency_ms + self._per_char_latency_ms * len(text)

    def set_latency(self, base_ms: float = 0.0, per_char_ms: float = 0.0) -> None:
        self._base_latency_ms = base_ms
        self._per_char_latency_ms = per_char_ms

    def fail_next(
        self,
        code: str,
        message: str,
        *,
        count: int = 1,
        with_task_uuid: bool = True,
        http_status: int | None = None,
        parameter: str | None = None,
        when: Literal["processing", "submit"] = "processing",
        delay_ms: float = 0.0,
    ) -> None:
        """Make the next ``count`` valid audioInference tasks fail with this error.

        ``when="processing"``: the task is accepted (async: acked), runs its
        latency (+ ``delay_ms``) and then ends in error: sync → an ``errors``
        frame / REST error response; async → getResponse shows ``status:
        "error"``. ``when="submit"``: rejected at once (no ack, not registered).
        ``http_status`` overrides the REST status (default derived from ``code``).
        """
        for _ in range(count):
            self._failures.append(
                _Failure(code, message, with_task_uuid, http_status, parameter, when, delay_ms)
            )

    def stall_every(self, n: int) -> None:
        """Every ``n``-th valid audioInference task (``n``, ``2n``, …) never answers
        (0: off). Counted over all tasks since the call."""
        self._stall_every = n
        self._every_count = 0

    def fail_every(
        self, n: int, code: str = "serverError", message: str = "Internal server error"
    ) -> None:
        """Every ``n``-th valid task fails after its latency with a retryable error
        (default ``serverError``, HTTP 500 on REST); 0: off."""
        self._fail_every = (n, code, message) if n else None
        self._every_count = 0

    def rate_limit_every(self, n: int) -> None:
        """Every ``n``-th valid task is refused at submission with Runware's rate-limit
        error (``rateLimitExceeded``, HTTP 429 on REST); 0: off."""
        self._rate_limit_every = n
        self._every_count = 0

    def _periodic_fault(self) -> tuple[bool, _Failure | None]:
        """(stall?, failure) for the task being accepted, from the every-Nth faults."""
        if not (self._stall_every or self._fail_every or self._rate_limit_every):
            return False, None
        self._every_count += 1
        k = self._every_count
        if self._rate_limit_every and k % self._rate_limit_every == 0:
            return False, _Failure(
                "rateLimitExceeded",
                "Rate limit exceeded. Please slow down your requests.",
                True,
                None,
                None,
                "submit",
                0.0,
            )
        if self._fail_every is not None and k % self._fail_every[0] == 0:
            _, code, message = self._fail_every
            return False, _Failure(code, message, True, None, None, "processing", 0.0)
        return bool(self._stall_every and k % self._stall_every == 0), None

    def stall_next(self, count: int = 1) -> None:
        """Accept the next ``count`` tasks (async: ack them) and never finish them."""
        self._stalls += count

    def drop_connections(self) -> None:
        """Abruptly close every WebSocket now (TCP abort). Tasks keep running and
        their frames are buffered for resume."""
        self.drops += 1
        for conn in list(self._conns):
            self._abort(conn)

    def drop_on_accept(self, count: int = 1) -> None:
        """Drop every WebSocket right after each of the next ``count`` audioInference
        tasks is accepted (after its ack, if async)."""
        self._drop_on_accept += count

    def drop_after_results(self, n: int) -> None:
        """Drop every WebSocket after ``n`` more terminal task frames (a result or a
        task error; replays on resume do not count) have been sent; ``n=0`` drops
        just before the next one is sent, so it lands in the resume buffer."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._drop_after_results = n

    def drop_after_tasks(self, n: int) -> None:
        """Fault "drop after the Nth task": once ``n`` more WebSocket audioInference
        tasks are accepted, reset every socket (TCP abort, no close frame). Whatever
        the client had already written behind the Nth task never reaches the server
        (counted in ``tasks_lost_in_drop``), as with a connection dying under load."""
        if n < 1:
            raise ValueError("n must be >= 1")
        self._drop_after_tasks = n

    def _count_task_for_drop(self) -> None:
        if self._drop_after_tasks is None:
            return
        self._drop_after_tasks -= 1
        if self._drop_after_tasks == 0:
            self._drop_after_tasks = None
            for conn in list(self._conns):
                conn.dead = True
            self.drop_connections()

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock for URL expiry and the resume buffer (not latency)."""
        self._clock_offset += seconds

    def cost_for(self, text: str) -> float:
        """The deterministic ``cost`` of one result."""
        return round(0.0001 + 0.000002 * len(text), 10)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def task_status(self, task_uuid: str) -> str | None:
        task = self._tasks.get(task_uuid)
        return task.status if task else None

    # -- helpers ------------------------------------------------------------------------

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _now(self) -> float:
        return self._loop_time() + self._clock_offset

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _detach(self, conn: _Conn) -> None:
        session = conn.session
        conn.session = None
        if session is not None and session.conn is conn:
            session.conn = None
            session.detached_at = self._now()

    def _abort(self, conn: _Conn) -> None:
        self._detach(conn)
        self._conns.discard(conn)
        if conn.transport is not None:
            conn.transport.abort()
        else:  # pragma: no cover - aiohttp always gives us the transport
            self._spawn(conn.ws.close())

    async def _abort_after_flush(self, conn: _Conn) -> None:
        transport = conn.transport
        if transport is None:  # pragma: no cover - aiohttp always gives us the transport
            await conn.ws.close()
            return
        for _ in range(200):  # up to ~1 s for the last frame to leave
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        transport.abort()

    def _drop_all_after_flush(self) -> None:
        self.drops += 1
        for conn in list(self._conns):
            self._detach(conn)
            self._conns.discard(conn)
            self._spawn(self._abort_after_flush(conn))

    async def _send_conn(self, conn: _Conn, frame: dict[str, Any]) -> bool:
        if conn.ws.closed or conn not in self._conns:
            return False
        try:
            async with conn.send_lock:
                await conn.ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        conn.last_activity = self._loop_time()
        return True

    async def _send_session(
        self, session: _Session, frame: dict[str, Any], *, terminal: bool = False
    ) -> None:
        if terminal and self._drop_after_results == 0:
            self._drop_after_results = None
            self._drop_all_after_flush()
        conn = session.conn
        if conn is not None and await self._send_conn(conn, frame):
            if terminal:
                self._count_result_sent()
            return
        session.buffer.append((self._now(), frame))

    def _count_result_sent(self) -> None:
        if self._drop_after_results is not None:
            self._drop_after_results -= 1
            if self._drop_after_results <= 0:
                self._drop_after_results = None
                self._drop_all_after_flush()

    def _expire_sessions(self) -> None:
        now = self._now()
        for sid, session in list(self._sessions.items()):
            if (
                session.conn is None
                and session.detached_at is not None
                and now - session.detached_at > self.buffer_s
            ):
                del self._sessions[sid]

    # -- WebSocket ----------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_websocket:
            return web.json_response(
                _error_frame(
                    TaskError(
                        "serviceUnavailable",
                        "WebSocket connections are temporarily unavailable.",
                        task_type=None,
                    )
                ),
                status=503,
            )
        ws = web.WebSocketResponse(max_msg_size=self.max_msg_size)
        if not ws.can_prepare(request).ok:
            return web.json_response(
                _error_frame(
                    TaskError(
                        "invalidPayload",
                        "GET /v1 is the WebSocket endpoint; use POST for REST.",
                        task_type=None,
                    )
                ),
                status=400,
            )
        await ws.prepare(request)
        self.connections += 1
        conn = _Conn(ws=ws, transport=request.transport, last_activity=self._loop_time())
        self._conns.add(conn)
        watchdog = asyncio.create_task(self._idle_watchdog(conn))
        try:
            async for msg in ws:
                conn.last_activity = self._loop_time()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._ws_message(conn, msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self._send_conn(
                        conn,
                        _error_frame(
                            TaskError(
                                "invalidPayload",
                                "Binary frames are not accepted; send a JSON array of tasks.",
                                task_type=None,
                            )
                        ),
                    )
                else:
                    break
        finally:
            watchdog.cancel()
            with contextlib.suppress(BaseException):
                await watchdog
            self._conns.discard(conn)
            self._detach(conn)
        return ws

    async def _idle_watchdog(self, conn: _Conn) -> None:
        while not conn.ws.closed:
            remaining = conn.last_activity + self.idle_timeout_s - self._loop_time()
            if remaining <= 0:
                self.idle_closes += 1
                self._detach(conn)
                self._conns.discard(conn)
                await conn.ws.close(code=aiohttp.WSCloseCode.OK, message=b"idle timeout")
                return
            await asyncio.sleep(remaining)

    async def _ws_message(self, conn: _Conn, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if (
            not isinstance(payload, list)
            or not payload
            or not all(isinstance(t, dict) for t in payload)
        ):
            await self._send_conn(
                conn,
                _error_frame(
                    TaskError(
                        "invalidPayload",
                        "Every message must be a non-empty JSON array of task objects.",
                        task_type=None,
                    )
                ),
            )
            return
        for task in payload:
            if conn.dead:
                # Reset by drop_after_tasks: bytes behind the drop are lost.
                if task.get("taskType") == "audioInference":
                    self.tasks_lost_in_drop += 1
                continue
            task_type = task.get("taskType")
            raw_uuid = task.get("taskUUID")
            task_uuid = raw_uuid if isinstance(raw_uuid, str) else None
            name = task_type if isinstance(task_type, str) else None
            if task_type == "authentication":
                await self._ws_auth(conn, task)
                continue
            session = conn.session
            if session is None:
                await self._send_conn(
                    conn,
                    _error_frame(
                        TaskError(
                            "unauthorized",
                            "Authenticate first: the first task must be 'authentication'.",
                            task_type=name,
                            task_uuid=task_uuid,
                        )
                    ),
                )
                continue
            try:
                if task_type == "ping":
                    await self._send_conn(conn, {"data": [self._ping(task)]})
                elif task_type == "getResponse":
                    await self._send_conn(conn, {"data": self._get_response(task)})
                elif task_type == "audioInference":
                    accepted = self._accept(task, "ws", session)
                    if accepted.params.delivery == "async":
                        await self._send_conn(conn, {"data": [self._ack(accepted)]})
                    self._after_accept()
                    self._count_task_for_drop()
                else:
                    raise TaskError(
                        "invalidTaskType",
                        f"Unsupported taskType {task_type!r}.",
                        parameter="taskType",
                        task_type=name,
                        task_uuid=task_uuid,
                    )
            except TaskError as err:
                await self._send_conn(conn, _error_frame(err))

    async def _ws_auth(self, conn: _Conn, task: dict[str, Any]) -> None:
        self.auth_requests.append({**copy.deepcopy(task), "transport": "ws"})
        key = task.get("apiKey")
        if self.auth_fail or not isinstance(key, str) or key != self.api_key:
            await self._send_conn(
                conn,
                _error_frame(
                    TaskError(
                        "invalidApiKey",
                        "Invalid API key. Get one at https://my.runware.ai/keys.",
                        parameter="apiKey",
                        task_type="authentication",
                    )
                ),
            )
            return
        self._expire_sessions()
        wanted = task.get("connectionSessionUUID")
        session = self._sessions.get(wanted) if isinstance(wanted, str) else None
        if session is None and conn.session is not None and wanted is None:
            session = conn.session  # re-authentication on the same socket
        if session is None:
            session = _Session(uuid=str(uuid.uuid4()))
            self._sessions[session.uuid] = session
        if conn.session is not session:
            self._detach(conn)
            old = session.conn
            if old is not None and old is not conn:
                self._abort(old)  # the session moves to the new socket
            session.conn = conn
            session.detached_at = None
            conn.session = session
        await self._send_conn(
            conn,
            {"data": [{"taskType": "authentication", "connectionSessionUUID": session.uuid}]},
        )
        await self._replay(session)

    async def _replay(self, session: _Session) -> None:
        while session.buffer:
            produced, frame = session.buffer[0]
            if self._now() - produced > self.buffer_s:
                session.buffer.popleft()
                continue
            conn = session.conn
            if conn is None or not await self._send_conn(conn, frame):
                return
            session.buffer.popleft()  # replays do not count for drop_after_results

    # -- tasks --------------------------------------------------------------------------

    def _ping(self, task: dict[str, Any]) -> dict[str, Any]:
        if task.get("ping") is not True:
            raise TaskError(
                "invalidPing",
                "A ping task must carry 'ping': true.",
                parameter="ping",
                task_type="ping",
            )
        self.pings += 1
        return {"taskType": "ping", "pong": True}

    def _ack(self, task: _Task) -> dict[str, Any]:
        return {
            "taskType": "audioInference",
            "taskUUID": task.params.task_uuid,
            "status": "processing",
        }

    def _after_accept(self) -> None:
        if self._drop_on_accept > 0:
            self._drop_on_accept -= 1
            self.drop_connections()

    def _accept(self, raw: dict[str, Any], transport: str, session: _Session | None) -> _Task:
        """Record, validate and start one audioInference task. Raises TaskError."""
        self.tasks_received.append({**copy.deepcopy(raw), "transport": transport})
        params = validate_audio_task(raw)
        existing = self._tasks.get(params.task_uuid)
        if existing is not None and existing.status == "processing":
            raise TaskError(
                "duplicateTaskUUID",
                f"A task with taskUUID {params.task_uuid} is already being processed.",
                parameter="taskUUID",
                task_uuid=params.task_uuid,
            )
        failure = self._failures.popleft() if self._failures else None
        periodic_stall, periodic = self._periodic_fault()
        failure = failure or periodic
        if failure is not None and failure.when == "submit":
            raise failure.error(params.task_uuid)
        task = _Task(
            params=params,
            transport=transport,
            session=session if params.delivery == "sync" else None,
            started=self._loop_time(),
        )
        stalled = self._stalls > 0
        if stalled:
            self._stalls -= 1
        stalled = stalled or periodic_stall
        self._tasks[params.task_uuid] = task
        task.runner = asyncio.create_task(self._run(task, failure, stalled))
        return task

    async def _run(self, task: _Task, failure: _Failure | None, stalled: bool) -> None:
        params = task.params
        try:
            if stalled:
                await self._closing.wait()
                return
            task.latency_s = max(0.0, self.latency_ms(params.text)) / 1000
            await asyncio.sleep(task.latency_s)
            if failure is not None:
                await asyncio.sleep(failure.delay_ms / 1000)
                await self._finish_error(task, failure.error(params.task_uuid))
                return
            audio = await self._render(params)
            self.syntheses += params.number_results
            fmt = FORMATS[params.output_format]
            items = [self._result_item(params, fmt, audio) for _ in range(params.number_results)]
            if params.upload_endpoint is not None:
                for _ in items:
                    await self._upload(params, fmt, audio)
        except asyncio.CancelledError:
            raise
        except TaskError as err:
            await self._finish_error(task, err)
            return
        except Exception as exc:
            log.exception("fake runware: task %s failed", params.task_uuid)
            await self._finish_error(
                task,
                TaskError("inferenceError", f"Inference failed: {exc}", task_uuid=params.task_uuid),
            )
            return
        task.items = items
        task.status = "success"
        task.done.set()
        if task.session is not None:
            for item in items:
                await self._send_session(task.session, {"data": [item]}, terminal=True)
        if params.webhook_url is not None:
            for item in items:
                self._spawn(self._webhook(params.webhook_url, item))

    async def _finish_error(self, task: _Task, err: TaskError) -> None:
        task.error = err
        task.status = "error"
        task.done.set()
        if task.session is not None:
            await self._send_session(task.session, _error_frame(err), terminal=True)

    async def _render(self, params: AudioParams) -> bytes:
        engine = self._engine
        if engine is None:
            raise TaskError(
                "serviceUnavailable", "The fake is shut down.", task_uuid=params.task_uuid
            )
        request = SpeechRequest(
            text=params.text,
            voice=params.voice,
            language=params.language,
            speed=params.speed,
            style=params.positive_prompt,
        )
        chunks = [block.samples async for block in engine.synthesize(request)]
        return await asyncio.to_thread(
            encode_audio,
            b"".join(chunks),
            engine.sample_rate_hz,
            params.output_format,
            sample_rate=params.sample_rate,
            channels=params.channels,
            bitrate_kbps=params.bitrate_kbps,
        )

    def _result_item(self, params: AudioParams, fmt: AudioFormat, audio: bytes) -> dict[str, Any]:
        audio_uuid = str(uuid.uuid4())
        item: dict[str, Any] = {
            "taskType": "audioInference",
            "taskUUID": params.task_uuid,
            "audioUUID": audio_uuid,
        }
        if params.output_type == "URL":
            ttl = params.ttl if params.ttl is not None else self.default_url_ttl_s
            self._audio[audio_uuid] = _StoredAudio(audio, fmt.mime, fmt.ext, self._now() + ttl)
            item["audioURL"] = f"{self.base_url}/audio/{audio_uuid}.{fmt.ext}"
        elif params.output_type == "base64Data":
            item["audioBase64Data"] = base64.b64encode(audio).decode("ascii")
        else:
            item["audioDataURI"] = f"data:{fmt.mime};base64," + base64.b64encode(audio).decode(
                "ascii"
            )
        if params.include_cost:
            item["cost"] = self.cost_for(params.text)
        return item

    def _get_response(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        raw_uuid = raw.get("taskUUID")
        task_uuid = raw_uuid if isinstance(raw_uuid, str) else None
        unknown = _unknown_keys(raw, frozenset({"taskType", "taskUUID"}), "")
        if unknown is not None:
            raise TaskError(
                "unknownParameter",
                f"Unknown parameter '{unknown}'.",
                parameter=unknown,
                task_type="getResponse",
                task_uuid=task_uuid,
            )
        if not is_uuid4(raw_uuid):
            raise TaskError(
                "invalidTaskUUID",
                "Invalid value for 'taskUUID': must be a UUID v4.",
                parameter="taskUUID",
                task_type="getResponse",
                task_uuid=task_uuid,
            )
        self.polls += 1
        task = self._tasks.get(str(raw_uuid))
        if task is None:
            raise TaskError(
                "taskNotFound",
                f"No task with taskUUID {raw_uuid}.",
                parameter="taskUUID",
                task_type="getResponse",
                task_uuid=task_uuid,
            )
        if task.status == "success":
            return [{**item, "status": "success", "progress": 100} for item in task.items]
        if task.status == "error" and task.error is not None:
            error = {"code": task.error.code, "message": task.error.message}
            if task.error.parameter is not None:
                error["parameter"] = task.error.parameter
            return [
                {
                    "taskType": "audioInference",
                    "taskUUID": task.params.task_uuid,
                    "status": "error",
                    "error": error,
                }
            ]
        elapsed = self._loop_time() - task.started
        progress = 0 if task.latency_s <= 0 else min(99, int(100 * elapsed / task.latency_s))
        return [
            {
                "taskType": "audioInference",
                "taskUUID": task.params.task_uuid,
                "status": "processing",
                "progress": progress,
            }
        ]

    # -- outbound HTTP (loopback only) --------------------------------------------------

    @staticmethod
    def _is_loopback(url: str) -> bool:
        return URL(url).host in _LOOPBACK_HOSTS

    async def _upload(self, params: AudioParams, fmt: AudioFormat, audio: bytes) -> None:
        url = params.upload_endpoint
        assert url is not None and self._http is not None
        record: dict[str, Any] = {
            "url": url,
            "taskUUID": params.task_uuid,
            "size": len(audio),
            "content_type": fmt.mime,
        }
        self.uploads.append(record)
        if not self._is_loopback(url):
            record["status"] = "blocked"
        else:
            try:
                async with self._http.put(
                    url, data=audio, headers={"Content-Type": fmt.mime}
                ) as resp:
                    record["status"] = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["status"] = f"error: {exc}"
        if not isinstance(record["status"], int) or not 200 <= record["status"] < 300:
            raise TaskError(
                "uploadFailed",
                f"Upload to uploadEndpoint failed ({record['status']}).",
                parameter="uploadEndpoint",
                task_uuid=params.task_uuid,
            )

    async def _webhook(self, url: str, item: dict[str, Any]) -> None:
        assert self._http is not None
        record: dict[str, Any] = {"url": url, "item": item}
        self.webhook_deliveries.append(record)
        if not self._is_loopback(url):
            record["status"] = "blocked"
            return
        try:
            async with self._http.post(url, json=item) as resp:
                record["status"] = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record["status"] = f"error: {exc}"

    # -- REST ---------------------------------------------------------------------------

    async def _rest_handler(self, request: web.Request) -> web.Response:
        self.rest_requests += 1

        def reply(status: int, *errors: TaskError) -> web.Response:
            return web.json_response(_error_frame(*errors), status=status)

        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, list) or not body or not all(isinstance(t, dict) for t in body):
            return reply(
                400,
                TaskError(
                    "invalidPayload",
                    "The body must be a non-empty JSON array of task objects.",
                    task_type=None,
                ),
            )
        tasks: list[dict[str, Any]] = list(body)
        key: str | None = None
        if tasks[0].get("taskType") == "authentication":
            auth = tasks.pop(0)
            self.auth_requests.append({**copy.deepcopy(auth), "transport": "rest"})
            key = auth.get("apiKey") if isinstance(auth.get("apiKey"), str) else ""
        else:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if header:
                self.auth_requests.append(
                    {
                        "taskType": "authentication",
                        "apiKey": token.strip(),
                        "transport": "rest",
                        "via": "header",
                    }
                )
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
            elif header:
                key = ""
        if key is None:
            return reply(
                401,
                TaskError(
                    "missingApiKey",
                    "No API key: send 'Authorization: Bearer <key>' or an authentication task.",
                    parameter="apiKey",
                    task_type="authentication",
                ),
            )
        if self.auth_fail or key != self.api_key:
            return reply(
                401,
                TaskError(
                    "invalidApiKey",
                    "Invalid API key. Get one at https://my.runware.ai/keys.",
                    parameter="apiKey",
                    task_type="authentication",
                ),
            )

        # Each entry: list of data items, a TaskError, or a sync task to wait for.
        entries: list[list[dict[str, Any]] | TaskError | _Task] = []
        for raw in tasks:
            task_type = raw.get("taskType")
            raw_uuid = raw.get("taskUUID")
            try:
                if task_type == "ping":
                    entries.append([self._ping(raw)])
                elif task_type == "getResponse":
                    entries.append(self._get_response(raw))
                elif task_type == "audioInference":
                    accepted = self._accept(raw, "rest", None)
                    self._after_accept()
                    if accepted.params.delivery == "async":
                        entries.append([self._ack(accepted)])
                    else:
                        entries.append(accepted)
                else:
                    raise TaskError(
                        "invalidTaskType",
                        f"Unsupported taskType {task_type!r}"
                        + (
                            " (authentication must be first)."
                            if task_type == "authentication"
                            else "."
                        ),
                        parameter="taskType",
                        task_type=task_type if isinstance(task_type, str) else None,
                        task_uuid=raw_uuid if isinstance(raw_uuid, str) else None,
                    )
            except TaskError as err:
                entries.append(err)

        waits = [e for e in entries if isinstance(e, _Task)]
        if waits:

            async def all_done() -> None:
                for task in waits:
                    await task.done.wait()

            closing = asyncio.create_task(self._closing.wait())
            finished = asyncio.create_task(all_done())
            try:
                await asyncio.wait([finished, closing], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                finished.cancel()

        data: list[dict[str, Any]] = []
        errors: list[TaskError] = []
        for entry in entries:
            if isinstance(entry, TaskError):
                errors.append(entry)
            elif isinstance(entry, _Task):
                if entry.status == "success":
                    data.extend(entry.items)
                elif entry.error is not None:
                    errors.append(entry.error)
                else:
                    errors.append(
                        TaskError(
                            "serviceUnavailable",
                            "The server is shutting down.",
                            task_uuid=entry.params.task_uuid,
                        )
                    )
            else:
                data.extend(entry)
        out: dict[str, Any] = {}
        if data or not errors:
            out["data"] = data
        if errors:
            out["errors"] = [e.item() for e in errors]
        return web.json_response(out, status=errors[0].http_status if errors else 200)

    # -- hosted audio -------------------------------------------------------------------

    async def _audio_handler(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        audio_uuid, _, ext = name.rpartition(".")
        stored = self._audio.get(audio_uuid)
        if stored is None or stored.ext != ext or self._now() > stored.expires_at:
            return web.json_response(
                _error_frame(
                    TaskError("notFound", "No such audio (or it expired).", task_type=None)
                ),
                status=404,
            )
        return web.Response(body=stored.data, content_type=stored.mime)


__all__ = [
    "FORMATS",
    "MODEL_ID",
    "MP3_BITRATES",
    "OGG_BITRATES",
    "AudioParams",
    "FakeRunware",
    "TaskError",
    "encode_audio",
    "http_status_for",
    "validate_audio_task",
]
