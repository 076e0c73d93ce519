"""The PA endpoint WebSocket server: a thin adapter around EndpointSession and the Hub.

One handler coroutine per connection owns three jobs: reading frames into the
session, a timer that drives heartbeats and timeouts, and the writer that
drains the endpoint's :class:`~broadcaster.streaming.hub.Outbox`. Whatever one
endpoint does — bad messages, a stalled socket, a flood — ends at its own
handler and never reaches another endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from broadcaster.auth import (
    FailureLimiter,
    OriginPolicy,
    allowed_hosts,
    host_allowed,
    origin_allowed,
    source_key,
)
from broadcaster.clock import Clock, wait_event_or_deadline
from broadcaster.config import Config
from broadcaster.edge import EdgeGuard, gated_connection_class
from broadcaster.model import StreamFormat
from broadcaster.streaming import wire
from broadcaster.streaming.hub import EndpointLink, Hub, Outbox
from broadcaster.streaming.session import (
    EndpointGrant,
    EndpointSession,
    Joined,
    PlaybackReceived,
    ReceiptReceived,
    RoundTrip,
    SessionSettings,
    SessionState,
    StatusReceived,
)
from broadcaster.streaming.supervision import SupervisionEvent, Supervisor
from broadcaster.streaming.wire import CloseCode

log = logging.getLogger(__name__)

ENDPOINT_PATH = "/v1/endpoint"

#: How often the timer looks at a lagging endpoint's queue (or a blocked send).
_LAG_CHECK_US = 500_000


class EndpointServer:
    def __init__(
        self,
        *,
        config: Config,
        hub: Hub,
        clock: Clock,
        on_receipt: Callable[[str, wire.Receipt], None],
        on_join: Callable[[EndpointLink], None] = lambda link: None,
        on_playback: Callable[[str, wire.Playback], None] = lambda eid, msg: None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        st = config.streaming
        a = config.auth
        #: Wrong endpoint tokens per source address (the same rule as API tokens).
        self.limiter = (
            limiter
            if limiter is not None
            else FailureLimiter(
                burst=a.failed_attempts_burst,
                refill_us=int(a.failed_attempts_refill_s * 1_000_000),
                max_sources=a.failed_attempts_max_sources,
            )
        )
        self._hosts = allowed_hosts(a.public_hosts, config.server.ws_host)
        #: Configured origins plus the service's own pages (added once the API is bound).
        self.origins = OriginPolicy(a.allowed_origins)
        self._hub = hub
        self._clock = clock
        self._on_receipt = on_receipt
        self._on_join = on_join
        self._on_playback = on_playback
        self._grants: Mapping[str, EndpointGrant] = {
            ep.id: EndpointGrant(zones=frozenset(ep.zones), token_ok=ep.token_matches)
            for ep in config.endpoints
        }
        self._formats: dict[str, StreamFormat] = {f.key: f for f in st.stream_formats()}
        self._settings = SessionSettings(
            heartbeat_interval_us=st.heartbeat_interval_ms * 1000,
            heartbeat_timeout_us=st.heartbeat_timeout_ms * 1000,
            hello_timeout_us=st.hello_timeout_ms * 1000,
            playout_delay_us=st.playout_delay_ms * 1000,
            max_message_bytes=st.max_message_bytes,
        )
        self._max_audio_us = st.endpoint_queue_ms * 1000
        self._lag_limit_us = st.lagging_disconnect_ms * 1000
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self.supervisor = Supervisor(
            timeout_us=st.heartbeat_timeout_ms * 1000, endpoints=[ep.id for ep in config.endpoints]
        )
        self._supervise_task: asyncio.Task[None] | None = None
        self._supervise_wake = asyncio.Event()
        self._stopping = False
        self._limits = config.limits
        #: Connection admission (limits in all and per address); counters for metrics.
        self.guard = EdgeGuard(
            "PA endpoint server",
            clock=clock,
            max_total=config.limits.max_ws_connections,
            max_per_address=config.limits.max_ws_per_address,
            header_timeout_s=None,  # the handshake is bounded by open_timeout below
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        port: int = sock.getsockname()[1]
        return port

    async def start(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # Our own limit is max_message_bytes, answered with an error message first; the
        # library's hard limit sits above it so a huge frame still cannot exhaust memory.
        # Every connection is counted from its accept (handshake included) by the guard;
        # over the limits it gets a 503 at once (docs/protocol.md, Transport). The TLS
        # handshake and the HTTP upgrade must both be done within header_timeout_s.
        self.guard.start()
        self._server = await serve(
            self._handle,
            host,
            port,
            max_size=self._settings.max_message_bytes * 4,
            ping_interval=None,  # heartbeats are protocol messages (docs/protocol.md)
            compression=None,  # audio does not compress; deflate would cost CPU per endpoint
            process_request=self._check_path,
            close_timeout=2,
            logger=logging.getLogger("broadcaster.streaming.websockets"),
            create_connection=gated_connection_class(self.guard),
            open_timeout=self._limits.header_timeout_s,
            ssl=ssl_context,
            backlog=1024,
        )
        self._supervise_task = asyncio.create_task(self._supervise(), name="supervision")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervise_task is not None:
            self._supervise_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervise_task
            self._supervise_task = None
        if self._server is not None:
            self._server.close(close_connections=True)  # endpoints get 1001 going away
            await self._server.wait_closed()
        await self.guard.stop()

    async def _supervise(self) -> None:
        """Turn dropped links that did not come back into faults, on time."""
        while True:
            await wait_event_or_deadline(
                self._clock, self._supervise_wake, self.supervisor.next_deadline_us()
            )
            self._log_events(self.supervisor.tick(self._clock.monotonic_us()))

    @staticmethod
    def _log_events(events: list[SupervisionEvent]) -> None:
        for ev in events:
            level = logging.ERROR if ev.kind == "endpoint_fault" else logging.INFO
            log.log(level, "supervision: %s %s (%s)", ev.kind, ev.endpoint_id, ev.detail)

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse a handshake before the upgrade: path, Host, Origin, failed-attempt limit."""
        if request.path.split("?", 1)[0] != ENDPOINT_PATH:
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"PA endpoints connect to {ENDPOINT_PATH}\n"
            )
        host = request.headers.get("Host")
        peer = connection.remote_address[0] if connection.remote_address else None
        if not host_allowed(host, self._hosts):
            log.warning("endpoint handshake from %s refused: Host %r is not ours", peer, host)
            return connection.respond(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"Host {host!r} is not a name of this service (add it to [auth] public_hosts)\n",
            )
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self.origins):
            log.warning("endpoint handshake from %s refused: Origin %r not allowed", peer, origin)
            return connection.respond(
                HTTPStatus.FORBIDDEN,
                f"Origin {origin!r} may not connect (add it to [auth] allowed_origins)\n",
            )
        wait_us = self.limiter.retry_after_us(source_key(peer), self._clock.monotonic_us())
        if wait_us:
            seconds = -(-wait_us // 1_000_000)
            # (DEBUG: a guessing address would otherwise fill the log)
            log.debug("endpoint handshake from %s refused: failed-attempt limit", peer)
            response = connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed authentications from your address; retry in {seconds} s\n",
            )
            response.headers["Retry-After"] = str(seconds)
            return response
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        clock = self._clock
        session_id = f"s{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        remote = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else None
        session = EndpointSession(
            session_id=session_id,
            grants=self._grants,
            formats=self._formats,
            settings=self._settings,
            now_us=clock.monotonic_us(),
            limiter=self.limiter,
            source=source_key(ws.remote_address[0] if ws.remote_address else None),
        )
        wake = asyncio.Event()
        #: Set when the session's timers change (the hello was accepted): the timer task
        #: sleeps until the hello timeout before that, and the first ping is due one
        #: heartbeat interval after the welcome, not after that sleep (protocol.md §8).
        timers_changed = asyncio.Event()
        outbox = Outbox(max_audio_us=self._max_audio_us, wake=wake.set)
        link: EndpointLink | None = None
        peer_gone = False

        def server_close(code: int, reason: str) -> None:
            session.server_closing(code, reason)
            wake.set()

        def pump() -> None:
            nonlocal link
            for text in session.take_urgent():
                outbox.put_urgent(text)
            for text in session.take_outgoing():
                outbox.put_control(text)
            for event in session.take_events():
                if isinstance(event, Joined):
                    timers_changed.set()
                    link = EndpointLink(
                        endpoint_id=event.endpoint_id,
                        session_id=session_id,
                        zones=event.zones,
                        format=event.format,
                        outbox=outbox,
                        connected_at_us=clock.monotonic_us(),
                        close=server_close,
                        remote=remote,
                    )
                    old = self._hub.register(link)
                    if old is not None:
                        old.close(CloseCode.REPLACED, "replaced by a newer connection")
                    self._log_events(
                        self.supervisor.joined(event.endpoint_id, clock.monotonic_us())
                    )
                    self._on_join(link)
                    log.info(
                        "endpoint %s joined zones %s as %s from %s (%s)",
                        event.endpoint_id,
                        ",".join(event.zones),
                        event.format.key,
                        remote,
                        session_id,
                    )
                elif isinstance(event, ReceiptReceived) and session.endpoint_id:
                    self._on_receipt(session.endpoint_id, event.receipt)
                elif isinstance(event, PlaybackReceived) and session.endpoint_id:
                    self._on_playback(session.endpoint_id, event.playback)
                elif isinstance(event, RoundTrip) and link is not None:
                    link.rtt_us = event.rtt_us
                elif isinstance(event, StatusReceived) and link is not None:
                    if link.audio_output != event.status.audio_output:
                        log.info(
                            "endpoint %s audio output: %s",
                            link.endpoint_id,
                            event.status.audio_output,
                        )
                    link.audio_output = event.status.audio_output
            if session.close is not None:
                wake.set()

        async def reader() -> None:
            nonlocal peer_gone
            try:
                async for message in ws:
                    now = clock.monotonic_us()
                    if isinstance(message, str):
                        session.receive_text(message, now)
                    else:
                        session.receive_bytes(message, now)
                    pump()
                    if link is not None:
                        link.last_heard_us = now
                    if session.state is SessionState.CLOSED:
                        return
            except ConnectionClosed:
                pass
            peer_gone = True
            wake.set()

        lag_warned_at: int | None = None

        async def timer(stuck_writer: Callable[[int], bool]) -> None:
            nonlocal lag_warned_at
            while session.state is not SessionState.CLOSED:
                now = clock.monotonic_us()
                wake = session.next_timer_us()
                if outbox.lagging_since_us is not None or sending_since_us is not None:
                    # Only a link in trouble is watched closely; the others wake for
                    # their heartbeat alone (thousands of timers add up).
                    wake = min(wake, now + _LAG_CHECK_US)
                await wait_event_or_deadline(clock, timers_changed, wake)
                now = clock.monotonic_us()
                session.tick(now)
                if stuck_writer(now):
                    return
                lag_since = outbox.lagging_since_us
                if outbox.overflowed:
                    session.server_closing(
                        CloseCode.LAGGING, "endpoint cannot keep up: too many control messages"
                    )
                elif lag_since is not None and now - lag_since >= self._lag_limit_us:
                    session.server_closing(
                        CloseCode.LAGGING,
                        "endpoint cannot keep up: audio dropped for "
                        f"{(now - lag_since) // 1000} ms",
                    )
                elif lag_since is not None and lag_warned_at != lag_since:
                    # Tell it once per episode, before the limit disconnects it.
                    lag_warned_at = lag_since
                    c = outbox.counters
                    outbox.put_urgent(
                        wire.dump(
                            wire.Notice(
                                code="lagging",
                                message="your queue overflowed: oldest audio is being dropped; "
                                f"disconnect after {self._lag_limit_us // 1000} ms of this",
                                dropped=c.dropped_overflow + c.dropped_stale,
                            )
                        )
                    )
                pump()

        sending_since_us: int | None = None

        async def writer() -> None:
            nonlocal sending_since_us
            try:
                while not peer_gone:
                    item = outbox.pop(clock.monotonic_us())
                    if item is None:
                        if session.close is not None:
                            return
                        wake.clear()
                        await wake.wait()
                        continue
                    if session.close is not None and isinstance(item, bytes):
                        continue  # closing: only the remaining control messages (the error) go
                    sending_since_us = clock.monotonic_us()
                    await ws.send(item)
                    sending_since_us = None
            except ConnectionClosed:
                pass

        def direct(frame: bytes) -> bool:
            # Only when nothing can be in flight before it: the writer is idle (the
            # outbox checked itself empty), the link is open and the socket buffer is
            # empty. websockets writes each message whole and synchronously, so a
            # complete frame written here never interleaves with one of its own.
            if session.close is not None or peer_gone or sending_since_us is not None:
                return False
            if ws.protocol.state is not State.OPEN:
                return False
            transport = ws.transport
            if transport.is_closing() or transport.get_write_buffer_size():
                return False
            transport.write(frame)
            return True

        outbox.direct = direct
        reader_task = asyncio.create_task(reader(), name=f"ws-read-{session_id}")
        writer_task = asyncio.create_task(writer(), name=f"ws-write-{session_id}")

        def stuck_writer(now_us: int) -> bool:
            """A send blocked past the lag limit: the socket is not draining at all."""
            if sending_since_us is not None and now_us - sending_since_us >= self._lag_limit_us:
                session.server_closing(
                    CloseCode.LAGGING,
                    "endpoint not reading: a send blocked for "
                    f"{(now_us - sending_since_us) // 1000} ms",
                )
                writer_task.cancel()
                return True
            return False

        timer_task = asyncio.create_task(timer(stuck_writer), name=f"ws-timer-{session_id}")
        try:
            await asyncio.wait({writer_task})
        finally:
            for task in (reader_task, timer_task, writer_task):
                task.cancel()
            for task in (reader_task, timer_task, writer_task):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            close = session.close
            if link is not None and self._hub.unregister(link) and not self._stopping:
                # Still the current link of its endpoint (not replaced): supervise the loss.
                code = close.code if close is not None else None
                self._log_events(
                    self.supervisor.left(
                        link.endpoint_id,
                        clock.monotonic_us(),
                        clean=code == CloseCode.NORMAL,
                        silent=code == CloseCode.HEARTBEAT_TIMEOUT,
                        detail=close.reason if close is not None else "connection lost",
                    )
                )
                self._supervise_wake.set()
            if close is not None:
                if close.code not in (CloseCode.NORMAL,):
                    log.warning(
                        "endpoint %s (%s) closed: %d %s",
                        session.endpoint_id or "?",
                        remote,
                        close.code,
                        close.reason,
                    )
                await ws.close(close.code, close.reason)
            else:
                log.info("endpoint %s (%s) disconnected", session.endpoint_id or "?", remote)
