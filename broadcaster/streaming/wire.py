"""Wire protocol v1 between the broadcaster and PA endpoints (see docs/protocol.md).

Control messages are JSON objects in WebSocket text frames, discriminated by
``type``. Audio travels in binary frames: a fixed 28-byte big-endian header
followed by the encoded payload. This module only converts between bytes and
values; it does no I/O.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1

#: A chunk whose local play time lies more than this beyond ``now + playout_delay``
#: means the endpoint's clock estimate is wrong: the server never sends a chunk more
#: than the playout delay ahead (docs/protocol.md §3.4). Re-synchronise.
RESYNC_MARGIN_US = 500_000

# --- binary audio frames -------------------------------------------------------------------

#: version u8, kind u8, flags u16, stream u32, seq u32, play_at_us i64, duration_us u32,
#: payload_length u32.
AUDIO_HEADER = struct.Struct("!BBHIIqII")
AUDIO_HEADER_SIZE = AUDIO_HEADER.size  # 28
FRAME_KIND_AUDIO = 1

FLAG_FIRST = 0x0001  # first chunk of the announcement
# 0x0002 is reserved (a "last chunk" flag was considered; announcement_ended says it instead).
FLAG_DISCONTINUITY = 0x0004  # play_at does not follow the previous chunk (gap before it)


@dataclass(frozen=True, slots=True)
class AudioHeader:
    stream: int
    seq: int
    play_at_us: int
    duration_us: int
    payload_length: int
    flags: int = 0
    version: int = PROTOCOL_VERSION
    kind: int = FRAME_KIND_AUDIO


def pack_audio_frame(
    *, stream: int, seq: int, play_at_us: int, duration_us: int, payload: bytes, flags: int = 0
) -> bytes:
    """Build one binary audio frame: header + payload."""
    header = AUDIO_HEADER.pack(
        PROTOCOL_VERSION,
        FRAME_KIND_AUDIO,
        flags,
        stream,
        seq,
        play_at_us,
        duration_us,
        len(payload),
    )
    return header + payload


def websocket_binary_frame(message: bytes) -> bytes:
    """``message`` as one complete, unmasked WebSocket binary frame (RFC 6455 §5.2).

    Server frames are unmasked and we use no compression, so the bytes are the same
    for every endpoint: the fan-out builds them once per chunk and format.
    """
    n = len(message)
    if n < 126:
        head = bytes((0x82, n))
    elif n < 1 << 16:
        head = bytes((0x82, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 127)) + n.to_bytes(8, "big")
    return head + message


class FrameError(ValueError):
    """A binary frame that does not follow the protocol."""


def unpack_audio_frame(frame: bytes) -> tuple[AudioHeader, bytes]:
    """Split a binary frame into its header and payload, checking both."""
    if len(frame) < AUDIO_HEADER_SIZE:
        raise FrameError(f"audio frame shorter than its {AUDIO_HEADER_SIZE}-byte header")
    version, kind, flags, stream, seq, play_at_us, duration_us, length = AUDIO_HEADER.unpack_from(
        frame
    )
    if version != PROTOCOL_VERSION:
        raise FrameError(f"audio frame version {version}, expected {PROTOCOL_VERSION}")
    if kind != FRAME_KIND_AUDIO:
        raise FrameError(f"unknown binary frame kind {kind}")
    payload = frame[AUDIO_HEADER_SIZE:]
    if len(payload) != length:
        raise FrameError(f"payload is {len(payload)} bytes, header says {length}")
    header = AudioHeader(
        stream=stream,
        seq=seq,
        play_at_us=play_at_us,
        duration_us=duration_us,
        payload_length=length,
        flags=flags,
        version=version,
        kind=kind,
    )
    return header, payload


# --- JSON control messages ------------------------------------------------------------------


class _Msg(BaseModel):
    """Messages an endpoint sends: checked strictly (no unknown fields, no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ServerMsg(BaseModel):
    """Messages the server sends. Clients ignore fields they do not know (forward compatible)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class FormatSpec(_Msg):
    """A format as named on the wire."""

    codec: str
    sample_rate_hz: int
    channels: int = 1
    frame_ms: int | None = None


# endpoint -> server


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int
    endpoint_id: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=512)
    zones: list[str] = Field(min_length=1, max_length=64)
    formats: list[FormatSpec] = Field(min_length=1, max_length=16)
    agent: str | None = Field(default=None, max_length=200)


#: Largest integer a JavaScript ``Number`` holds exactly (2**53 - 1). Ping and pong
#: numbers are limited to 0..this so that the server never echoes a value a browser
#: endpoint cannot read back exactly; anything else is refused (invalid_field, 4000).
MAX_SAFE_INTEGER = 2**53 - 1
SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


class Ping(_Msg):
    """Heartbeat and clock probe; either side may send it, the other answers with Pong."""

    type: Literal["ping"] = "ping"
    id: SafeInt
    sent_us: SafeInt  # sender's clock when sent


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    id: SafeInt
    echo_us: SafeInt  # the ping's sent_us, echoed
    time_us: SafeInt  # responder's clock when it answered


class Receipt(_Msg):
    """The endpoint's account of one announcement once it has ended for it."""

    type: Literal["receipt"] = "receipt"
    announcement_id: str
    stream: int
    status: Literal["complete", "incomplete", "cancelled"]
    chunks: int = Field(ge=0)
    duration_ms: int = Field(ge=0)
    gaps: int = Field(default=0, ge=0)


class ServerFormatSpec(FormatSpec):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class ServerPing(Ping):
    """A ping as a client parses it: unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class ServerPong(Pong):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class Playback(_Msg):
    """The endpoint started or finished playing an announcement's stream (a receipt)."""

    type: Literal["playback"] = "playback"
    announcement_id: str
    stream: int
    event: Literal["started", "finished"]
    #: When it happened, on the server clock as the endpoint estimates it.
    at_us: int | None = None


class Bye(_Msg):
    type: Literal["bye"] = "bye"
    reason: str | None = None


class Status(_Msg):
    """The endpoint's own state, sent after welcome and whenever it changes.

    ``audio_output``: "ready" (it can play) or "blocked" (it cannot make sound now,
    e.g. a browser page waiting for a tap to enable sound)."""

    type: Literal["status"] = "status"
    audio_output: Literal["ready", "blocked"]


# server -> endpoint


class Settings(_ServerMsg):
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    playout_delay_ms: int
    max_message_bytes: int


class Welcome(_ServerMsg):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    session_id: str
    endpoint_id: str
    zones: list[str]
    format: ServerFormatSpec
    server_time_us: int
    settings: Settings


class Caption(_ServerMsg):
    """The written text of one language of an announcement, for displays."""

    language: str
    text: str


class AnnouncementStarted(_ServerMsg):
    type: Literal["announcement_started"] = "announcement_started"
    announcement_id: str
    stream: int
    text: str
    priority: int
    zones: list[str]
    format: ServerFormatSpec
    start_at_us: int
    expected_duration_ms: int  # an estimate made before the audio exists
    #: Every language's written text in the order spoken (the first is ``text``).
    captions: list[Caption] = Field(default_factory=list)
    #: Attenuation the endpoint applies to this stream's decoded audio, -120..0 dB
    #: (its own gain plus its zone's); absent (older servers) means 0.
    gain_db: float = 0.0


class AnnouncementEnded(_ServerMsg):
    type: Literal["announcement_ended"] = "announcement_ended"
    announcement_id: str
    stream: int
    chunks: int
    duration_ms: int
    end_at_us: int


class AnnouncementCancelled(_ServerMsg):
    type: Literal["announcement_cancelled"] = "announcement_cancelled"
    announcement_id: str
    stream: int
    reason: str
    flush: bool = True
    #: Set when a higher-priority announcement took the zone (it follows at once).
    preempted_by: str | None = None


class Notice(_ServerMsg):
    """Something the endpoint should know that does not end the link (e.g. lagging)."""

    type: Literal["notice"] = "notice"
    code: str
    message: str
    dropped: int | None = None


class Error(_ServerMsg):
    type: Literal["error"] = "error"
    code: str
    message: str
    field: str | None = None


EndpointMessage = Annotated[
    Hello | Ping | Pong | Receipt | Playback | Bye | Status, Field(discriminator="type")
]
ServerMessage = Annotated[
    Welcome
    | ServerPing
    | ServerPong
    | AnnouncementStarted
    | AnnouncementEnded
    | AnnouncementCancelled
    | Notice
    | Error,
    Field(discriminator="type"),
]

_endpoint_adapter: TypeAdapter[Any] = TypeAdapter(EndpointMessage)
_server_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)

ENDPOINT_TYPES = frozenset({"hello", "ping", "pong", "receipt", "playback", "bye", "status"})
SERVER_TYPES = frozenset(
    {
        "welcome",
        "ping",
        "pong",
        "announcement_started",
        "announcement_ended",
        "announcement_cancelled",
        "notice",
        "error",
    }
)


class MessageError(ValueError):
    """A text frame that is not a valid message; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


def _parse(text: str | bytes, adapter: TypeAdapter[Any], known: frozenset[str]) -> Any:
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MessageError("invalid_message", "a message must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MessageError("invalid_message", "message has no string 'type'", "type")
    if kind not in known:
        raise MessageError("unknown_type", f"unknown message type {kind!r}", "type")
    version = raw.get("protocol")
    if kind == "hello" and (type(version) is not int or version != PROTOCOL_VERSION):
        # Checked before the schema: a newer client's hello may carry fields v1 does not know.
        raise MessageError(
            "unsupported_protocol",
            f"protocol {version!r} is not supported; this server speaks {PROTOCOL_VERSION}",
            "protocol",
        )
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # The first location element is the discriminator tag; skip it.
        loc = [str(p) for p in first["loc"][1:]] or [str(p) for p in first["loc"]]
        field = ".".join(loc)
        raise MessageError("invalid_field", f"{kind}.{field}: {first['msg']}", field) from None


def parse_endpoint_message(
    text: str | bytes,
) -> Hello | Ping | Pong | Receipt | Playback | Bye | Status:
    """Parse a text frame sent by an endpoint. Raises :class:`MessageError`."""
    msg: Hello | Ping | Pong | Receipt | Playback | Bye | Status = _parse(
        text, _endpoint_adapter, ENDPOINT_TYPES
    )
    return msg


def parse_server_message(text: str | bytes) -> Any:
    """Parse a text frame sent by the server (used by endpoint clients)."""
    return _parse(text, _server_adapter, SERVER_TYPES)


def dump(message: BaseModel) -> str:
    """Serialise a message to the compact JSON text of a frame."""
    return message.model_dump_json(exclude_none=False)


class CloseCode:
    """WebSocket close codes the server uses, with the reason text sent alongside."""

    NORMAL = 1000  # the endpoint said bye
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED_DATA = 1003  # endpoint sent a binary frame; v1 endpoints send text only
    TOO_BIG = 1009  # a message over settings.max_message_bytes
    # Application codes (4000-4999).
    BAD_MESSAGE = 4000  # invalid JSON, unknown type, invalid field
    UNAUTHORIZED = 4001  # unknown endpoint id or wrong token
    FORBIDDEN_ZONE = 4003  # asked for a zone it may not join (or an unknown zone)
    HELLO_TIMEOUT = 4004  # no hello within the hello timeout
    NO_FORMAT = 4006  # none of the offered formats is available
    HEARTBEAT_TIMEOUT = 4008  # nothing received within heartbeat_timeout_ms
    BAD_VERSION = 4009  # protocol version not supported
    REPLACED = 4010  # the same endpoint id connected again; the older link is closed
    LAGGING = 4011  # could not keep up: its queue overflowed for too long
    RATE_LIMITED = 4029  # too many failed authentications from its address; retry later
