"""The endpoint side of one connection, as a state machine with no I/O.

The socket adapter feeds it what arrived (``receive_text``/``receive_bytes``)
and the time (``tick``); it answers with frames to send (``take_outgoing``),
events for the rest of the server (``take_events``) and, when the link must
end, a :class:`Close` with a code and reason. Nothing here touches a socket,
a clock or a task, so every rule is tested as a table of messages in and out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from broadcaster.auth import FailureLimiter
from broadcaster.model import StreamFormat
from broadcaster.streaming import wire
from broadcaster.streaming.wire import CloseCode


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    ACTIVE = "active"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class EndpointGrant:
    """What the server allows an endpoint id: checked against its hello."""

    zones: frozenset[str]
    token_ok: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    heartbeat_interval_us: int
    heartbeat_timeout_us: int
    hello_timeout_us: int
    playout_delay_us: int
    max_message_bytes: int


# Events handed to the server.


@dataclass(frozen=True, slots=True)
class Joined:
    endpoint_id: str
    zones: tuple[str, ...]
    format: StreamFormat


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    receipt: wire.Receipt


@dataclass(frozen=True, slots=True)
class PlaybackReceived:
    playback: wire.Playback


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """The endpoint reported its own state (``audio_output``)."""

    status: wire.Status


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """A pong answered one of our pings: how long the round trip took."""

    rtt_us: int


SessionEvent = Joined | ReceiptReceived | PlaybackReceived | RoundTrip | StatusReceived


def format_spec(fmt: StreamFormat) -> wire.ServerFormatSpec:
    return wire.ServerFormatSpec(
        codec=fmt.codec.value,
        sample_rate_hz=fmt.sample_rate_hz,
        channels=fmt.channels,
        frame_ms=fmt.frame_ms,
    )


class EndpointSession:
    """Protocol rules for one endpoint connection.

    ``grants`` maps endpoint ids to what they may do; ``formats`` maps format
    keys (``"opus/48000"``) to the formats this server offers.
    """

    def __init__(
        self,
        *,
        session_id: str,
        grants: Mapping[str, EndpointGrant],
        formats: Mapping[str, StreamFormat],
        settings: SessionSettings,
        now_us: int,
        limiter: FailureLimiter | None = None,
        source: str = "unknown",
    ) -> None:
        """``limiter`` counts wrong tokens per ``source`` (the peer's address key)."""
        self.session_id = session_id
        self._limiter = limiter
        self._source = source
        self._grants = grants
        self._formats = formats
        self._settings = settings
        self.state = SessionState.AWAITING_HELLO
        self.endpoint_id: str | None = None
        self.zones: tuple[str, ...] = ()
        self.format: StreamFormat | None = None
        self.close: Close | None = None
        self._opened_us = now_us
        self._last_received_us = now_us
        self._next_ping_us = now_us + settings.heartbeat_interval_us
        self._ping_id = 0
        self._pings_sent: dict[int, int] = {}
        self._outgoing: list[str] = []
        self._urgent: list[str] = []
        self._events: list[SessionEvent] = []
        self.last_rtt_us: int | None = None

    # --- inputs -----------------------------------------------------------------------------

    def receive_text(self, text: str, now_us: int) -> None:
        if self.state is SessionState.CLOSED:
            return
        self._last_received_us = now_us
        if len(text.encode("utf-8")) > self._settings.max_message_bytes:
            self._fail(
                "message_too_big",
                f"message exceeds {self._settings.max_message_bytes} bytes",
                CloseCode.TOO_BIG,
            )
            return
        try:
            msg = wire.parse_endpoint_message(text)
        except wire.MessageError as exc:
            close = (
                CloseCode.BAD_VERSION
                if exc.code == "unsupported_protocol"
                else CloseCode.BAD_MESSAGE
            )
            self._fail(exc.code, str(exc), close, exc.field)
            return
        if self.state is SessionState.AWAITING_HELLO:
            if not isinstance(msg, wire.Hello):
                self._fail(
                    "expected_hello",
                    f"the first message must be hello, got {msg.type}",
                    CloseCode.BAD_MESSAGE,
                )
                return
            self._on_hello(msg, now_us)
            return
        if isinstance(msg, wire.Hello):
            self._fail("duplicate_hello", "hello was already accepted", CloseCode.BAD_MESSAGE)
        elif isinstance(msg, wire.Ping):
            self._send(wire.Pong(id=msg.id, echo_us=msg.sent_us, time_us=now_us), urgent=True)
        elif isinstance(msg, wire.Pong):
            sent = self._pings_sent.pop(msg.id, None)
            if sent is not None:
                self.last_rtt_us = now_us - sent
                self._events.append(RoundTrip(self.last_rtt_us))
        elif isinstance(msg, wire.Receipt):
            self._events.append(ReceiptReceived(msg))
        elif isinstance(msg, wire.Playback):
            self._events.append(PlaybackReceived(msg))
        elif isinstance(msg, wire.Status):
            self._events.append(StatusReceived(msg))
        elif isinstance(msg, wire.Bye):
            self._close(CloseCode.NORMAL, msg.reason or "endpoint said bye")

    def receive_bytes(self, data: bytes, now_us: int) -> None:
        if self.state is SessionState.CLOSED:
            return
        self._last_received_us = now_us
        self._fail(
            "binary_not_allowed",
            "endpoints send text frames only in protocol v1",
            CloseCode.UNSUPPORTED_DATA,
        )

    def tick(self, now_us: int) -> None:
        """Apply timers: hello timeout, heartbeat timeout, and send a ping when one is due."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.AWAITING_HELLO:
            if now_us - self._opened_us >= self._settings.hello_timeout_us:
                self._fail(
                    "hello_timeout",
                    f"no hello within {self._settings.hello_timeout_us // 1000} ms",
                    CloseCode.HELLO_TIMEOUT,
                )
            return
        silent_us = now_us - self._last_received_us
        if silent_us >= self._settings.heartbeat_timeout_us:
            self._fail(
                "heartbeat_timeout",
                f"nothing received for {silent_us // 1000} ms",
                CloseCode.HEARTBEAT_TIMEOUT,
            )
            return
        if now_us >= self._next_ping_us:
            self._ping_id += 1
            self._pings_sent[self._ping_id] = now_us
            # Keep only recent unanswered pings so a silent peer cannot grow the map.
            for old in [k for k in self._pings_sent if k <= self._ping_id - 8]:
                del self._pings_sent[old]
            self._send(wire.Ping(id=self._ping_id, sent_us=now_us), urgent=True)
            self._next_ping_us = now_us + self._settings.heartbeat_interval_us

    def next_timer_us(self) -> int:
        """When ``tick`` next has something to do."""
        if self.state is SessionState.AWAITING_HELLO:
            return self._opened_us + self._settings.hello_timeout_us
        return min(self._next_ping_us, self._last_received_us + self._settings.heartbeat_timeout_us)

    def server_closing(self, code: int, reason: str) -> None:
        """The server ends the link (shutdown, replaced, lagging)."""
        if self.state is not SessionState.CLOSED:
            self._close(code, reason)

    # --- outputs ----------------------------------------------------------------------------

    def take_outgoing(self) -> list[str]:
        """Messages to send in order with the announcement stream."""
        out, self._outgoing = self._outgoing, []
        return out

    def take_urgent(self) -> list[str]:
        """Heartbeat messages (ping/pong), to send ahead of queued audio."""
        out, self._urgent = self._urgent, []
        return out

    def take_events(self) -> list[SessionEvent]:
        ev, self._events = self._events, []
        return ev

    # --- internals --------------------------------------------------------------------------

    def _on_hello(self, hello: wire.Hello, now_us: int) -> None:
        # (The protocol version was checked while parsing, before the schema.)
        limiter = self._limiter
        if limiter is not None:
            wait_us = limiter.retry_after_us(self._source, now_us)
            if wait_us:  # refused before the token is even looked at
                self._fail(
                    "too_many_failed_attempts",
                    "too many failed authentications from your address; "
                    f"retry in {-(-wait_us // 1_000_000)} s",
                    CloseCode.RATE_LIMITED,
                )
                return
        grant = self._grants.get(hello.endpoint_id)
        # One answer for an unknown id and a wrong token: do not reveal which ids exist.
        if grant is None or not grant.token_ok(hello.token):
            if limiter is not None:
                limiter.failure(self._source, now_us)
            self._fail("unauthorized", "unknown endpoint id or wrong token", CloseCode.UNAUTHORIZED)
            return
        forbidden = [z for z in hello.zones if z not in grant.zones]
        if forbidden:
            self._fail(
                "forbidden_zone",
                f"endpoint {hello.endpoint_id} may not join zone(s) {', '.join(forbidden)}",
                CloseCode.FORBIDDEN_ZONE,
                "zones",
            )
            return
        chosen = self._choose_format(hello.formats)
        if chosen is None:
            offered = ", ".join(f"{f.codec}/{f.sample_rate_hz}" for f in hello.formats)
            self._fail(
                "no_common_format",
                f"none of [{offered}] is available; available: {', '.join(self._formats)}",
                CloseCode.NO_FORMAT,
                "formats",
            )
            return
        self.state = SessionState.ACTIVE
        self.endpoint_id = hello.endpoint_id
        self.zones = tuple(dict.fromkeys(hello.zones))  # de-duplicated, order kept
        self.format = chosen
        self._next_ping_us = now_us + self._settings.heartbeat_interval_us
        s = self._settings
        self._send(
            wire.Welcome(
                session_id=self.session_id,
                endpoint_id=hello.endpoint_id,
                zones=list(self.zones),
                format=format_spec(chosen),
                server_time_us=now_us,
                settings=wire.Settings(
                    heartbeat_interval_ms=s.heartbeat_interval_us // 1000,
                    heartbeat_timeout_ms=s.heartbeat_timeout_us // 1000,
                    playout_delay_ms=s.playout_delay_us // 1000,
                    max_message_bytes=s.max_message_bytes,
                ),
            )
        )
        self._events.append(Joined(hello.endpoint_id, self.zones, chosen))

    def _choose_format(self, offered: list[wire.FormatSpec]) -> StreamFormat | None:
        for spec in offered:  # the endpoint lists formats in its order of preference
            if spec.channels != 1:
                continue
            fmt = self._formats.get(f"{spec.codec}/{spec.sample_rate_hz}")
            if fmt is not None:
                return fmt
        return None

    def _send(self, message: BaseModel, *, urgent: bool = False) -> None:
        (self._urgent if urgent else self._outgoing).append(wire.dump(message))

    def _fail(self, code: str, message: str, close_code: int, field: str | None = None) -> None:
        self._send(wire.Error(code=code, message=message, field=field))
        self._close(close_code, message)

    def _close(self, code: int, reason: str) -> None:
        self.state = SessionState.CLOSED
        # A close reason must fit in a control frame (123 bytes of UTF-8).
        self.close = Close(code, reason.encode("utf-8")[:120].decode("utf-8", "ignore"))
