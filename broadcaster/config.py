"""Configuration: pydantic models over a TOML file.

``load_config(path)`` either returns a fully validated :class:`Config` or
raises :class:`ConfigError` whose message names the file, the key and the
problem — it never lets a traceback reach the operator. Unknown keys are
errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import ssl
import tomllib
import types
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from broadcaster.model import (
    LANGUAGES,
    SPEED_MAX,
    SPEED_MIN,
    VOICES,
    StreamFormat,
    check_speed,
    check_style,
)
from broadcaster.scheduling.templates import CompiledTemplate, TemplateRenderer
from broadcaster.scheduling.triggers import Trigger

_ID = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
_TOKEN_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
#: Upper bound of expiries and misfire graces, in seconds.
_WEEK_S = 7 * 86400
#: Schedule dates (at, start, end, except_dates) must fall in these years.
_FIRST_YEAR, _LAST_YEAR = 1970, 2199

#: File descriptors kept beyond the connection limits: listening sockets, the store,
#: logs, the speech engine, the Runware connection, pipes of the event loop.
FD_RESERVE = 64


#: One renderer for the templates of a config (it caches compiled templates).
_RENDERER = TemplateRenderer()


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for the operator."""


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, optionally None)."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # TOML's true is not 1: a number key given true/false is a mistake, not a value.
        name = info.field_name
        if isinstance(v, bool) and name is not None and _numeric(cls.model_fields[name].annotation):
            raise ValueError(f"must be a number, not {str(v).lower()}")
        return v


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    """``value`` if it is an absolute URL with one of ``schemes`` and a host."""
    want = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}); expected {want}…") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"must start with {want}, got {value[:80]!r}")
    if not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"must be an absolute {want}host… URL, got {value[:80]!r}")
    return value


class TlsConfig(_Section):
    """One certificate and key for both listeners (HTTPS API and wss:// endpoints)."""

    #: PEM certificate chain (the server's certificate first) and its private key.
    #: Relative paths are taken from the working directory, like store.path.
    cert_file: str
    key_file: str

    @field_validator("cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        path = Path(value).expanduser()
        try:
            with path.open("rb") as f:
                f.read(1)
        except FileNotFoundError:
            raise ValueError(f"{value}: no such file") from None
        except OSError as exc:
            raise ValueError(f"{value}: cannot read: {exc.strerror}") from None
        return value

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        try:
            self.server_context()
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"cert_file {self.cert_file} and key_file {self.key_file} are not a usable "
                f"PEM certificate and its private key: {exc.strerror or exc}"
            ) from None
        return self

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS 1.2 or newer) with this certificate and key."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(
            str(Path(self.cert_file).expanduser()), str(Path(self.key_file).expanduser())
        )
        return ctx


class ServerConfig(_Section):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    ws_host: str = "127.0.0.1"
    ws_port: int = Field(default=8765, ge=0, le=65535)
    #: Seconds given to endpoints and in-flight requests to finish on shutdown.
    shutdown_timeout_s: float = Field(default=5.0, ge=0, le=120)
    #: With a [server.tls] table, the API speaks https and endpoints connect with wss://.
    tls: TlsConfig | None = None

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def ws_scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        # Port 0 means "any free port", so two zeros never collide.
        if self.ws_port == self.http_port and self.ws_port != 0:
            raise ValueError(
                f"ws_port: {self.ws_port} is also the http_port; the HTTP API and the "
                "endpoint WebSocket server need a port each"
            )
        return self


class LimitsConfig(_Section):
    """What one process accepts at the network edge (enforced by broadcaster/edge.py)."""

    #: Largest HTTP request body; a bigger one is answered 413.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: A connection (HTTP or WebSocket) must complete its request headers, and its TLS
    #: handshake, within this many seconds of being accepted, or it is closed.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: An HTTP connection idle between requests is closed after this many seconds.
    keepalive_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: A request body must arrive whole within this many seconds of its handler
    #: starting to read it (a body trickled in byte by byte is answered 408).
    body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Concurrent HTTP connections, in all and from one source address.
    max_http_connections: int = Field(default=512, ge=2, le=1_000_000)
    max_http_per_address: int = Field(default=128, ge=1, le=1_000_000)
    #: Concurrent WebSocket connections (endpoints, and handshakes in progress), in
    #: all and from one source address.
    max_ws_connections: int = Field(default=2000, ge=2, le=1_000_000)
    max_ws_per_address: int = Field(default=200, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_address_cannot_fill(self) -> LimitsConfig:
        if self.max_http_per_address >= self.max_http_connections:
            raise ValueError(
                "max_http_per_address must be less than max_http_connections, so that one "
                "address cannot take every connection"
            )
        if self.max_ws_per_address >= self.max_ws_connections:
            raise ValueError(
                "max_ws_per_address must be less than max_ws_connections, so that one "
                "address cannot take every connection"
            )
        return self

    @property
    def file_descriptors_needed(self) -> int:
        """Descriptors for every allowed connection, plus a reserve for the rest."""
        return self.max_http_connections + self.max_ws_connections + FD_RESERVE


class RunwareConfig(_Section):
    """Qwen3-TTS 1.7B CustomVoice through Runware (used when an API key is set)."""

    #: The API key. RUNWARE_API_KEY in the environment takes precedence; prefer it.
    api_key: str | None = None
    ws_url: str = "wss://ws-api.runware.ai/v1"
    rest_url: str = "https://api.runware.ai/v1"
    #: The low-latency profile: WAV as base64 in a sync answer over the open WebSocket.
    output_type: Literal["base64Data", "dataURI", "URL"] = "base64Data"
    output_format: Literal["WAV", "FLAC", "MP3", "OGG"] = "WAV"
    delivery: Literal["sync", "async"] = "sync"
    include_cost: bool = True
    #: Passed through to Runware for users who want them (empty: not sent).
    webhook_url: str | None = None
    upload_endpoint: str | None = None
    ttl_s: int | None = Field(default=None, ge=60)
    #: Longest segment requested in one task (Runware accepts up to 2000 characters).
    segment_max_chars: int = Field(default=300, ge=40, le=2000)
    #: Segments of one announcement requested at once (played strictly in order).
    concurrency: int = Field(default=4, ge=1, le=32)
    #: Silence after each segment (segments are joined back to back).
    segment_pause_ms: int = Field(default=250, ge=0, le=5000)
    #: Tasks in flight over the whole client.
    max_in_flight: int = Field(default=8, ge=1, le=256)
    task_timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: On-disk cache of synthesized segments (survives restarts); 0 MB disables it.
    cache_dir: str = "var/speech-cache"
    cache_max_mb: int = Field(default=512, ge=0, le=1_000_000)
    #: Synthesize the fixed texts of the templates (their default variables) into the
    #: cache at start, in the background, so they play at once (needs the cache).
    warm_up: bool = True
    #: Warm-up tasks in flight at once; at most max_in_flight - 1, so announcements
    #: always find a free slot.
    warm_up_concurrency: int = Field(default=2, ge=1, le=8)

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        return _check_url(v, ("ws", "wss"))

    @field_validator("rest_url")
    @classmethod
    def _rest_url(cls, v: str) -> str:
        return _check_url(v, ("http", "https"))

    @field_validator("webhook_url", "upload_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("http", "https"))


class SpeechConfig(_Section):
    #: "auto": Runware when an API key is configured, else the embedded espeak-ng.
    engine: Literal["auto", "espeak", "runware"] = "auto"
    #: Speak with espeak-ng when Runware fails or is too slow to start (recommended).
    fallback: bool = True
    #: How long Runware may take to produce the first audio before the fallback speaks.
    first_audio_deadline_s: float = Field(default=6.0, gt=0, le=120)
    #: No longer used (older configs still load): an emergency now starts on the local
    #: engine at once unless Runware's audio is already there, and switches to Runware
    #: at a segment boundary (speech/chain.py), so its first audio comes well within 2 s.
    emergency_first_audio_deadline_s: float = Field(default=2.0, gt=0, le=120)
    default_voice: str = "ryan"
    default_language: str = "English"
    default_speed: float = Field(default=1.0, ge=SPEED_MIN, le=SPEED_MAX)
    #: First segment of a long text is kept at most this long so audio starts early.
    first_segment_max_chars: int = Field(default=100, ge=20, le=2000)
    runware: RunwareConfig = RunwareConfig()

    def runware_api_key(self, environ: Mapping[str, str]) -> str | None:
        return environ.get("RUNWARE_API_KEY") or self.runware.api_key or None

    @field_validator("default_voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        _check_voice(v)
        return v

    @field_validator("default_speed")
    @classmethod
    def _speed(cls, v: float) -> float:
        return check_speed(v)

    @field_validator("default_language")
    @classmethod
    def _language(cls, v: str) -> str:
        _check_language(v)
        return v


class StreamingConfig(_Section):
    #: Formats endpoints may choose, as "codec/rate".
    formats: list[str] = Field(
        default_factory=lambda: [
            "opus/48000",
            "pcm_s16le/48000",
            "pcm_s16le/24000",
            "pcm_s16le/16000",
            "pcm_s16le/8000",
            "pcm_mulaw/8000",
        ],
        min_length=1,
    )
    #: Chunk length of PCM and μ-law streams (Opus is always 20 ms).
    pcm_frame_ms: int = Field(default=20, ge=10, le=200, multiple_of=10)
    opus_bitrate_bps: int = Field(default=32000, ge=6000, le=510000)
    #: How far ahead of its play-at time a chunk is sent; the endpoint's jitter buffer.
    playout_delay_ms: int = Field(default=300, ge=50, le=5000)
    heartbeat_interval_ms: int = Field(default=3000, ge=100, le=60000)
    heartbeat_timeout_ms: int = Field(default=10000, ge=300, le=100000)
    hello_timeout_ms: int = Field(default=5000, ge=100, le=60000)
    max_message_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    #: Audio an endpoint's send queue may hold before the oldest audio is dropped.
    endpoint_queue_ms: int = Field(default=2000, ge=100, le=60000)
    #: An endpoint that keeps dropping audio for this long is disconnected.
    lagging_disconnect_ms: int = Field(default=5000, ge=100, le=600000)

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        for key in v:
            StreamFormat.parse(key)  # raises ValueError naming the problem
        if len(set(v)) != len(v):
            raise ValueError("formats are listed twice")
        return v

    @model_validator(mode="after")
    def _heartbeats(self) -> StreamingConfig:
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ValueError("heartbeat_timeout_ms must be longer than heartbeat_interval_ms")
        return self

    def stream_formats(self) -> list[StreamFormat]:
        return [StreamFormat.parse(k, self.pcm_frame_ms) for k in self.formats]


class AnnouncementsConfig(_Section):
    #: Longest text the API accepts (it is split into engine-sized segments).
    max_text_chars: int = Field(default=20000, ge=100, le=100_000)
    #: Finished announcements kept in memory for GET /v1/announcements/{id}; oldest go first.
    history_limit: int = Field(default=1000, ge=10, le=1_000_000)
    #: Announcements that may wait (for a busy zone or their due time) per zone and per
    #: priority band (background, routine, operational). A full band refuses a new
    #: announcement of that band there (API 503) unless it may push out a waiting one
    #: of lower priority; other bands and zones are never affected.
    queue_limit: int = Field(default=200, ge=1, le=1_000_000)
    #: The same bound for the emergency band, per zone (much larger: an emergency is
    #: refused only when this many emergencies already wait in one of its zones).
    emergency_queue_limit: int = Field(default=1000, ge=1, le=1_000_000)
    default_priority: int = Field(default=100, ge=0, le=255)
    #: An announcement whose zones have no endpoint connected waits this long for one
    #: (endpoints reconnecting after a blip or a restart) before it fails.
    wait_for_endpoints_s: float = Field(default=5.0, ge=0, le=600)
    #: Priorities from here up are emergencies (EN 54-16 practice: 224-255).
    emergency_priority: int = Field(default=224, ge=1, le=255)


class StoreConfig(_Section):
    #: SQLite database of announcements, their states and receipts, and schedules.
    #: Written before the API acknowledges, so a crash loses nothing accepted.
    path: str = "var/broadcaster.sqlite3"
    #: Finished announcements older than this many days are pruned at start.
    keep_days: int = Field(default=90, ge=1, le=36500)
    #: How long an ``Idempotency-Key`` is remembered (a retry within it returns the
    #: first answer); older keys are pruned at start and every hour.
    idempotency_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    #: A state write that failed is retried with a backoff doubling up to this.
    write_retry_max_s: float = Field(default=5.0, ge=0.05, le=300)


class SchedulingConfig(_Section):
    #: Scheduled announcements are synthesized this long before they are due, so
    #: their audio starts on time whatever the engine's latency.
    prerender_s: float = Field(default=60.0, ge=0, le=3600)
    #: Defaults for schedules that do not say.
    misfire_grace_s: float = Field(default=30.0, ge=0, le=86400)
    coalesce: bool = True


class AudioConfig(_Section):
    #: Normalize every announcement (speech and chimes) to one loudness.
    normalize: bool = True
    #: EBU R128 integrated loudness target, LUFS.
    target_lufs: float = Field(default=-16.0, ge=-40, le=-5)
    #: True-peak ceiling, dBTP.
    true_peak_dbtp: float = Field(default=-1.0, ge=-12, le=0)
    #: Folder of chime files that API requests may name as "file:NAME" (a bare file
    #: name inside it; no sub-folders, no "..", no symlinks leading out). Unset: API
    #: requests may use the built-in chimes only. Templates in the config are trusted
    #: and may give "file:PATH" to any file; a bare name (no "/") is looked up here.
    chime_dir: str | None = None
    #: Largest chime file read (checked before decoding), in KiB.
    chime_max_kb: int = Field(default=2048, ge=1, le=1_048_576)
    #: Longest chime, in seconds (decoding stops and refuses past it).
    chime_max_s: float = Field(default=10.0, gt=0, le=600)


_CHIME_NAMES = ("two-tone", "three-tone", "four-tone", "alert")


def _check_chime(v: str | None) -> str | None:
    if v is None or v.startswith("file:") or v in _CHIME_NAMES:
        return v
    raise ValueError(f"unknown chime {v!r}; one of {', '.join(_CHIME_NAMES)} or file:PATH")


_CHIME_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_request_chime(v: str | None) -> str | None:
    """A chime an API request may name: built-in, or ``file:NAME`` in ``[audio] chime_dir``."""
    if v is None or v in _CHIME_NAMES:
        return v
    if v.startswith("file:"):
        name = v.removeprefix("file:")
        if _CHIME_FILE_NAME.fullmatch(name) and ".." not in name:
            return v
        raise ValueError(
            "file:NAME takes a file name from the chime folder ([audio] chime_dir): "
            "letters, digits, '.', '_' and '-', no path"
        )
    raise ValueError(f"unknown chime {v[:40]!r}; one of {', '.join(_CHIME_NAMES)} or file:NAME")


#: Gains are attenuation only (a boost could push the decoded audio past the true-peak
#: ceiling of [audio] true_peak_dbtp), in dB.
GAIN_MIN_DB, GAIN_MAX_DB = -60.0, 0.0
#: The built-in zone group of every zone (unless a zone or group is called so).
ALL_ZONES = "all"


class ZoneConfig(_Section):
    id: _ID
    name: str | None = None
    #: Attenuation of this zone's announcements at its endpoints, -60..0 dB (sent to
    #: each endpoint as gain_db; `PUT /v1/zones/{id}/gain` overrides it).
    gain_db: float = Field(default=0.0, ge=GAIN_MIN_DB, le=GAIN_MAX_DB)


class ZoneGroupConfig(_Section):
    """Several zones under one id ("all platforms"), usable wherever a zone is."""

    id: _ID
    name: str | None = None
    #: Zone ids (not other groups), at least one.
    zones: list[_ID] = Field(min_length=1, max_length=256)


class EndpointConfig(_Section):
    id: _ID
    #: "sha256:<hex>" of the endpoint's token; make one with `broadcaster token`.
    token_hash: str
    zones: list[_ID] = Field(min_length=1)
    description: str | None = None
    #: Attenuation of everything this endpoint plays, -60..0 dB (added to the zone's;
    #: `PUT /v1/endpoints/{id}/gain` overrides it).
    gain_db: float = Field(default=0.0, ge=GAIN_MIN_DB, le=GAIN_MAX_DB)

    @field_validator("token_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not _TOKEN_HASH_RE.match(v):
            raise ValueError(
                "must be 'sha256:' followed by 64 lower-case hex digits "
                "(run `broadcaster token` to make a token and its hash)"
            )
        return v

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_hash, hash_token(token))


class TemplateConfig(_Section):
    """A named announcement with its defaults; a request may override any of them."""

    name: _ID
    text: str = Field(min_length=1, max_length=100_000)
    voice: str | None = None
    language: str | None = None
    speed: float | None = Field(default=None, ge=SPEED_MIN, le=SPEED_MAX)
    #: Style prompt (Runware's positivePrompt).
    style: str | None = Field(default=None, max_length=2000)
    priority: int | None = Field(default=None, ge=0, le=255)
    #: Zones used when the request names none.
    zones: list[_ID] = Field(default_factory=list)
    #: Cap on generated audio tokens per request (None: sized to each segment).
    max_new_tokens: int | None = Field(default=None, ge=1, le=262_144)
    #: False: one request for the whole text (up to the engine's limit) — one take,
    #: so a style prompt that describes an arc over the text applies to all of it.
    split: bool = True
    #: Variables the text uses ({{ name }}): a type name ("str", "int", "float",
    #: "bool", "time") or a table with type, default, choices, max_length.
    variables: dict[str, Any] = Field(default_factory=dict)
    #: Seconds after its due time (or acceptance) after which it never starts (<= 7 days).
    expires_after_s: float | None = Field(default=None, gt=0, le=_WEEK_S)
    #: When a higher priority takes its zones: "stack" (replay afterwards) or "drop".
    on_preempt: Literal["stack", "drop"] = "stack"
    #: Call composition: a chime before and after (two-tone, three-tone, four-tone,
    #: alert, or file:PATH to a WAV), and repeats of the spoken part with a gap.
    chime_before: str | None = None
    chime_after: str | None = None
    repeats: int = Field(default=0, ge=0, le=10)
    repeat_gap_ms: int = Field(default=1000, ge=0, le=60000)
    #: More languages, spoken after the first in this order: language -> text (the same
    #: variables as `text`), e.g. { German = "...", French = "..." }.
    translations: dict[str, str] = Field(default_factory=dict)
    #: Misfire policy for schedules of this template that do not set their own.
    misfire_grace_s: float | None = Field(default=None, ge=0, le=_WEEK_S)
    coalesce: bool | None = None

    @model_validator(mode="after")
    def _compiles(self) -> TemplateConfig:
        # Checked at load so a typo in a template is a config error, not a failed firing.
        from broadcaster.scheduling.templates import TemplateError

        try:
            self.compiled()
            for language in self.translations:
                self.compiled(language)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return self

    def compiled(self, language: str | None = None) -> CompiledTemplate:
        """The template, or with ``language`` its translation into that language."""
        from broadcaster.scheduling.templates import parse_variable_specs

        specs = parse_variable_specs(self.variables, template=self.name)
        if language is not None:
            name = f"{self.name} ({language})"
            return _RENDERER.compile(name, self.translations[language], specs)
        return _RENDERER.compile(self.name, self.text, specs)

    def render_all(
        self, values: Mapping[str, Any], language: str
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The text in ``language`` and every translation, in order (TemplateError)."""
        text = self.compiled().render(values, language=language)
        also = tuple(
            (lang, self.compiled(lang).render(values, language=lang)) for lang in self.translations
        )
        return text, also

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        return _check_voice(v)

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        return _check_language(v)

    @field_validator("chime_before", "chime_after")
    @classmethod
    def _chime(cls, v: str | None) -> str | None:
        return _check_chime(v)

    @field_validator("speed")
    @classmethod
    def _speed(cls, v: float | None) -> float | None:
        return None if v is None else check_speed(v)

    @field_validator("style")
    @classmethod
    def _style(cls, v: str | None) -> str | None:
        return None if v is None else check_style(v)

    @field_validator("translations")
    @classmethod
    def _translations(cls, v: dict[str, str]) -> dict[str, str]:
        for language in v:
            _check_language(language)
        return v


def _check_voice(v: str | None) -> str | None:
    if v is not None and v not in (*VOICES, "auto"):
        raise ValueError(f"unknown voice {v!r}; choose one of {', '.join(VOICES)} or auto")
    return v


def _check_language(v: str | None) -> str | None:
    if v is not None and v not in LANGUAGES:
        raise ValueError(f"unknown language {v!r}; choose one of {', '.join(LANGUAGES)}")
    return v


#: Schedule keys added after schedules were first stored: left out of the stored copy
#: while unset, so a config schedule stored by an older version still compares equal.
_SCHEDULE_OPTIONAL = ("text", "voice", "chime_before", "chime_after", "repeats", "repeat_gap_ms")


class ScheduleConfig(_Section):
    """When a template (or a free text) is announced: exactly one of cron, every_s, at."""

    id: _ID
    #: Exactly one of template (with its variables) or text.
    template: str | None = Field(default=None, max_length=64)
    text: str | None = Field(default=None, max_length=100_000)
    #: Values for the template's variables.
    variables: dict[str, Any] = Field(default_factory=dict, max_length=100)
    #: Zones or zone groups (default: the template's; required with text).
    zones: list[_ID] | None = Field(default=None, max_length=256)
    #: Call composition (default: the template's, else none).
    voice: str | None = None
    chime_before: str | None = None
    chime_after: str | None = None
    repeats: int | None = Field(default=None, ge=0, le=10)
    repeat_gap_ms: int | None = Field(default=None, ge=0, le=60000)
    cron: str | None = Field(default=None, max_length=200)
    #: At most a year (366 days).
    every_s: int | None = Field(default=None, ge=1, le=366 * 86400)
    #: A one-shot date-time, ISO 8601; without an offset it is read in `timezone`.
    at: str | None = Field(default=None, max_length=64)
    start: str | None = Field(default=None, max_length=64)
    end: str | None = Field(default=None, max_length=64)
    #: IANA zone the cron expression and dates are read in.
    timezone: str = Field(default="UTC", max_length=64)
    #: Local dates on which it does not fire (holidays), "YYYY-MM-DD".
    except_dates: list[str] = Field(default_factory=list, max_length=1000)
    #: How late a firing may still play; default [scheduling] misfire_grace_s.
    misfire_grace_s: float | None = Field(default=None, ge=0, le=_WEEK_S)
    coalesce: bool | None = None
    #: After this many seconds past its due time it never starts (default: template's).
    expires_after_s: float | None = Field(default=None, gt=0, le=_WEEK_S)
    priority: int | None = Field(default=None, ge=0, le=255)
    language: str | None = None
    paused: bool = False

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        return _check_language(v)

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        return _check_voice(v)

    @field_validator("chime_before", "chime_after")
    @classmethod
    def _chime(cls, v: str | None) -> str | None:
        return _check_chime(v)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("text is empty")
        if re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", v):
            raise ValueError("contains control characters")
        return v

    @model_validator(mode="after")
    def _template_or_text(self) -> ScheduleConfig:
        if (self.template is None) == (self.text is None):
            raise ValueError("template: give exactly one of template or text")
        if self.text is not None and self.variables:
            raise ValueError("variables: only with a template")
        if self.text is not None and not self.zones:
            raise ValueError("zones: required with text (there is no template to take them from)")
        return self

    def stored(self) -> dict[str, Any]:
        """The copy kept in the store (newer keys only when set)."""
        data = self.model_dump()
        for key in _SCHEDULE_OPTIONAL:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @field_validator("at", "start", "end")
    @classmethod
    def _horizon(cls, v: str | None) -> str | None:
        # Far-off dates are refused here so that no later arithmetic can overflow.
        if v is not None:
            try:
                year = datetime.fromisoformat(v).year
            except ValueError:
                return v  # the trigger names the problem
            if not _FIRST_YEAR <= year <= _LAST_YEAR:
                raise ValueError(f"must be a date-time between {_FIRST_YEAR} and {_LAST_YEAR}")
        return v

    @field_validator("except_dates")
    @classmethod
    def _dates_horizon(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                year = date.fromisoformat(item).year
            except ValueError:
                continue  # the trigger names the problem
            if not _FIRST_YEAR <= year <= _LAST_YEAR:
                raise ValueError(f"{item}: must be a date between {_FIRST_YEAR} and {_LAST_YEAR}")
        return v

    @model_validator(mode="after")
    def _trigger(self) -> ScheduleConfig:
        from broadcaster.scheduling.triggers import TriggerError

        try:
            self.trigger()
        except TriggerError as exc:
            raise ValueError(f"{exc.field}: {exc.message}") from None
        return self

    def trigger(self) -> Trigger:
        from broadcaster.scheduling.triggers import make_trigger

        return make_trigger(
            cron=self.cron,
            every_s=self.every_s,
            at=self.at,
            timezone=self.timezone,
            except_dates=self.except_dates,
            start=self.start,
            end=self.end,
        )


class AuthConfig(_Section):
    """Browser safety and the failed-attempt limit (API tokens are under [[api_tokens]])."""

    #: Names the service may be addressed by (Host header), besides the listen
    #: addresses server.http_host / ws_host when they are not wildcards. Anything
    #: else is refused (421), which stops DNS rebinding. Add the names and
    #: addresses endpoints and operators use when listening on 0.0.0.0.
    public_hosts: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    #: Browser origins ("https://console.example") whose pages may call the API and
    #: open the endpoint WebSocket. A request with any other Origin is refused (403);
    #: one without an Origin (not a browser) is fine. CORS stays closed either way.
    allowed_origins: list[str] = Field(default_factory=list)
    #: Failed authentications (API or endpoint token) one source address may make in
    #: a row; after that one more every failed_attempts_refill_s (429 / close 4029).
    failed_attempts_burst: int = Field(default=10, ge=1, le=10_000)
    failed_attempts_refill_s: float = Field(default=6.0, gt=0, le=3600)
    #: Source addresses tracked; beyond this the least recently failing is forgotten.
    failed_attempts_max_sources: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Audit entries waiting to be written; beyond this new ones are dropped (counted, logged).
    audit_queue_limit: int = Field(default=1000, ge=10, le=1_000_000)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not re.match(r"^https?://[^/\s]+$", origin.rstrip("/")):
                raise ValueError(
                    f"origin {origin!r} must be scheme://host[:port], e.g. https://pa.example"
                )
        return [o.rstrip("/").lower() for o in v]


class ApiTokenConfig(_Section):
    """A token for the HTTP API; make one with `broadcaster token --role ROLE --id ID`."""

    id: _ID
    role: Literal["viewer", "operator", "dispatcher", "admin"]
    #: "sha256:<hex>" of the token.
    token_hash: str
    #: Zones this token may act in (absent: all).
    zones: list[_ID] | None = None
    description: str | None = None

    @field_validator("token_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not _TOKEN_HASH_RE.match(v):
            raise ValueError(
                "must be 'sha256:' followed by 64 lower-case hex digits "
                "(run `broadcaster token --role ROLE --id ID` to make a token and its hash)"
            )
        return v


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "text": one line per record, control characters escaped; "json": one JSON
    #: object per line (time in UTC ISO 8601, level, logger, message, extras).
    format: Literal["text", "json"] = "text"


class Config(_Section):
    server: ServerConfig = ServerConfig()
    speech: SpeechConfig = SpeechConfig()
    streaming: StreamingConfig = StreamingConfig()
    announcements: AnnouncementsConfig = AnnouncementsConfig()
    store: StoreConfig = StoreConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    audio: AudioConfig = AudioConfig()
    logging: LoggingConfig = LoggingConfig()
    auth: AuthConfig = AuthConfig()
    api_tokens: list[ApiTokenConfig] = Field(default_factory=list)
    limits: LimitsConfig = LimitsConfig()
    zones: list[ZoneConfig] = Field(default_factory=list)
    zone_groups: list[ZoneGroupConfig] = Field(default_factory=list)
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    templates: list[TemplateConfig] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    #: Where this config was read from (for messages that send the operator there).
    _source: str = PrivateAttr(default="the config")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="after")
    def _references(self) -> Config:
        zone_ids = [z.id for z in self.zones]
        dup = {z for z in zone_ids if zone_ids.count(z) > 1}
        if dup:
            raise ValueError(f"zone ids listed twice: {', '.join(sorted(dup))}")
        ep_ids = [e.id for e in self.endpoints]
        dup = {e for e in ep_ids if ep_ids.count(e) > 1}
        if dup:
            raise ValueError(f"endpoint ids listed twice: {', '.join(sorted(dup))}")
        names = [t.name for t in self.templates]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"template names listed twice: {', '.join(sorted(dup))}")
        group_ids = [g.id for g in self.zone_groups]
        dup = {g for g in group_ids if group_ids.count(g) > 1}
        if dup:
            raise ValueError(f"zone_groups ids listed twice: {', '.join(sorted(dup))}")
        for i, group in enumerate(self.zone_groups):
            where = f"zone_groups[{i}] ({group.id})"
            if group.id in zone_ids:
                raise ValueError(f"{where}: id is also a zone id; a group needs an id of its own")
            unknown = [z for z in group.zones if z not in zone_ids]
            if unknown:
                raise ValueError(
                    f"{where}: zones {unknown} are not defined under [[zones]] "
                    "(a group lists zones, not other groups)"
                )
        known = set(zone_ids) | set(self.groups)
        for i, tpl in enumerate(self.templates):
            unknown = [z for z in tpl.zones if z not in known]
            if unknown:
                raise ValueError(
                    f"templates[{i}] ({tpl.name}): zones {unknown} are not defined under "
                    "[[zones]] or [[zone_groups]]"
                )
        templates = {t.name: t for t in self.templates}
        schedule_ids = [sc.id for sc in self.schedules]
        dup = {n for n in schedule_ids if schedule_ids.count(n) > 1}
        if dup:
            raise ValueError(f"schedule ids listed twice: {', '.join(sorted(dup))}")
        for i, sc in enumerate(self.schedules):
            where = f"schedules[{i}] ({sc.id})"
            unknown = [z for z in sc.zones or [] if z not in known]
            if unknown:
                raise ValueError(
                    f"{where}: zones {unknown} are not defined under [[zones]] or [[zone_groups]]"
                )
            if sc.text is not None:
                if len(sc.text) > self.announcements.max_text_chars:
                    raise ValueError(
                        f"{where}: text: {len(sc.text)} characters; at most "
                        f"{self.announcements.max_text_chars} (announcements.max_text_chars)"
                    )
                continue
            template = templates.get(str(sc.template))
            if template is None:
                raise ValueError(f"{where}: template {sc.template!r} is not defined")
            if not (sc.zones or template.zones):
                raise ValueError(f"{where}: no zones (neither the schedule nor its template)")
            from broadcaster.scheduling.templates import TemplateError

            try:  # render once now: a wrong variable is a config error, not a missed firing
                template.compiled().render(sc.variables, language=sc.language or "English")
            except TemplateError as exc:
                raise ValueError(f"{where}: {exc}") from None
        token_ids = [t.id for t in self.api_tokens]
        dup = {t for t in token_ids if token_ids.count(t) > 1}
        if dup:
            raise ValueError(f"api_tokens ids listed twice: {', '.join(sorted(dup))}")
        hashes = [t.token_hash for t in self.api_tokens]
        if len(set(hashes)) != len(hashes):
            raise ValueError("api_tokens: two tokens have the same token_hash (make one each)")
        for i, tok in enumerate(self.api_tokens):
            unknown = [z for z in tok.zones or [] if z not in known]
            if unknown:
                raise ValueError(
                    f"api_tokens[{i}] ({tok.id}): zones {unknown} are not defined under "
                    "[[zones]] or [[zone_groups]]"
                )
        for i, ep in enumerate(self.endpoints):
            unknown = [z for z in ep.zones if z not in zone_ids]
            if unknown:
                raise ValueError(
                    f"endpoints[{i}] ({ep.id}): zones {unknown} are not defined under [[zones]]"
                )
        lim = self.limits
        if lim.max_ws_connections < lim.max_ws_per_address + len(self.endpoints):
            raise ValueError(
                f"limits.max_ws_connections ({lim.max_ws_connections}) must be at least "
                f"limits.max_ws_per_address ({lim.max_ws_per_address}) plus the "
                f"{len(self.endpoints)} configured endpoint(s), so that a flood from one "
                "address can never keep a configured endpoint out"
            )
        return self

    def endpoint(self, endpoint_id: str) -> EndpointConfig | None:
        for ep in self.endpoints:
            if ep.id == endpoint_id:
                return ep
        return None

    def template(self, name: str) -> TemplateConfig | None:
        for tpl in self.templates:
            if tpl.name == name:
                return tpl
        return None

    @property
    def zone_ids(self) -> list[str]:
        return [z.id for z in self.zones]

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Zone groups by id: the configured ones, and the built-in ``all`` (every zone)
        unless a zone or a configured group is called ``all``."""
        out = {g.id: tuple(dict.fromkeys(g.zones)) for g in self.zone_groups}
        if ALL_ZONES not in out and ALL_ZONES not in self.zone_ids and self.zones:
            out[ALL_ZONES] = tuple(self.zone_ids)
        return out

    def unknown_zones(self, ids: Iterable[str]) -> list[str]:
        """The ids among ``ids`` that are neither a zone nor a zone group."""
        groups = self.groups
        zones = set(self.zone_ids)
        return [z for z in dict.fromkeys(ids) if z not in zones and z not in groups]

    def expand_zones(self, ids: Iterable[str]) -> list[str]:
        """Zones and zone groups as zones: each group replaced by its zones, in order,
        each zone once. Unknown ids are kept (check them with unknown_zones first)."""
        groups = self.groups
        zones = set(self.zone_ids)
        out: dict[str, None] = {}
        for z in ids:
            members = (z,) if z in zones else groups.get(z, (z,))
            out.update(dict.fromkeys(members))
        return list(out)


def hash_token(token: str) -> str:
    """The value stored in ``token_hash`` for ``token``.

    Tokens are meant to be random (``new_token``), so a fast hash is enough: a
    slow password hash would only make thousands of reconnecting endpoints
    expensive to admit.
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits) for an endpoint or the API."""
    return secrets.token_urlsafe(32)


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic error location as a TOML-ish key, naming list items by id."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label = f"[{item}] (id {node['id']!r})"
            else:
                node = None
            parts.append(label)
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        config = Config.model_validate(data)
        config._source = source
        return config
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _location(tuple(err["loc"]), data)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling; configs/example.toml lists every key)"
            msg = msg.removeprefix("Value error, ")
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    if not data:
        raise ConfigError(
            f"{p}: zones: the file is empty; a config needs at least one [[zones]] "
            "(configs/example.toml lists every key)"
        )
    config = parse_config(data, str(p))
    if not config.zones:
        raise ConfigError(f"{p}: zones: no [[zones]] defined, so nothing could be announced")
    return config
