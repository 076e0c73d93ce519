"""The network edge: who may hold a connection, for how long, and over TLS.

Both listeners (the aiohttp API and the websockets endpoint server) count their
connections per source address at the moment the connection is handed to the
application, before a byte of it is parsed:

* :class:`ConnectionGate` is the pure rule (limits in all and per address, the
  refusal counters, the rate-limited refusal log line);
* :class:`HeaderDeadlines` is the pure rule for "complete your request headers in
  time" (HTTP only; websockets applies ``open_timeout`` itself);
* :class:`EdgeGuard` is the thin adapter: one gate, one owned task that closes
  connections past their header deadline and flushes the refusal log, on the
  injectable clock;
* :class:`GatedSite` is an aiohttp site whose protocol factory puts every
  connection through the guard; :func:`gated_connection_class` does the same for
  websockets.

A refused connection gets a fixed HTTP 503 answer and is closed at once: nothing
is parsed, no task is started, and a flood costs one accept, one write and one
close per connection. Refusals are counted (:attr:`ConnectionGate.refused`) and
logged at most once per :data:`REFUSAL_LOG_INTERVAL_US`.

Also here: the TLS client context used by ``broadcaster listen`` / ``announce``
(``--ca-file``) and the file-descriptor check made at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from websockets.asyncio.server import ServerConnection

from broadcaster.clock import Clock, wait_event_or_deadline
from broadcaster.config import LimitsConfig

log = logging.getLogger(__name__)

#: Refusals are summed up in one log line at most this often (per listener).
REFUSAL_LOG_INTERVAL_US = 10_000_000

PER_ADDRESS = "per_address"
TOTAL = "total"


class FileLimitError(OSError):
    """The configured connection limits need more file descriptors than the system allows."""


# --- pure rules ------------------------------------------------------------------------


@dataclass
class GateCounters:
    """What one gate has done since start (for health and metrics)."""

    open: int = 0
    admitted: int = 0
    refused_total_limit: int = 0
    refused_per_address_limit: int = 0

    @property
    def refused(self) -> int:
        return self.refused_total_limit + self.refused_per_address_limit


class ConnectionGate:
    """Concurrent connections in all and per source address (pure; no I/O, no clock)."""

    def __init__(
        self,
        name: str,
        *,
        max_total: int,
        max_per_address: int,
        log_interval_us: int = REFUSAL_LOG_INTERVAL_US,
    ) -> None:
        self.name = name
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.counters = GateCounters()
        self._by_address: Counter[str] = Counter()
        self._log_interval_us = log_interval_us
        self._next_log_us: int | None = None  # None: the next refusal logs at once
        self._unlogged: Counter[str] = Counter()
        self._unlogged_reasons: Counter[str] = Counter()
        self._unlogged_n = 0

    def open_from(self, address: str) -> int:
        return self._by_address[address]

    def admit(self, address: str) -> str | None:
        """Take a slot for a new connection from ``address``; the reason when refused."""
        if self.counters.open >= self.max_total:
            reason = TOTAL
            self.counters.refused_total_limit += 1
        elif self._by_address[address] >= self.max_per_address:
            reason = PER_ADDRESS
            self.counters.refused_per_address_limit += 1
        else:
            self.counters.open += 1
            self.counters.admitted += 1
            self._by_address[address] += 1
            return None
        self._unlogged[address] += 1
        self._unlogged_reasons[reason] += 1
        self._unlogged_n += 1
        return reason

    def release(self, address: str) -> None:
        """Give back the slot of a connection that :meth:`admit` let in."""
        self.counters.open -= 1
        left = self._by_address[address] - 1
        if left > 0:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    @property
    def unlogged(self) -> int:
        """Refusals not yet in a log line."""
        return self._unlogged_n

    def next_log_due_us(self) -> int | None:
        """When a summary of the refusals not yet logged is due (None: nothing to log)."""
        if not self._unlogged:
            return None
        return self._next_log_us if self._next_log_us is not None else 0

    def refusal_summary(self, now_us: int) -> str | None:
        """One log line for the refusals not yet logged, when one is due (rate-limited)."""
        if not self._unlogged or (self._next_log_us is not None and now_us < self._next_log_us):
            return None
        n = self._unlogged_n
        top = ", ".join(f"{addr} ({k})" for addr, k in self._unlogged.most_common(3))
        more = len(self._unlogged) - 3
        reasons = []
        if self._unlogged_reasons[PER_ADDRESS]:
            reasons.append(
                f"{self._unlogged_reasons[PER_ADDRESS]} over {self.max_per_address} per address"
            )
        if self._unlogged_reasons[TOTAL]:
            reasons.append(f"{self._unlogged_reasons[TOTAL]} over {self.max_total} in all")
        line = (
            f"{self.name}: refused {n} connection(s) ({'; '.join(reasons)}) from {top}"
            + (f" and {more} other address(es)" if more > 0 else "")
            + f"; {self.counters.refused} refused since start"
        )
        self._unlogged.clear()
        self._unlogged_reasons.clear()
        self._unlogged_n = 0
        self._next_log_us = now_us + self._log_interval_us
        return line


class HeaderDeadlines:
    """Connections that must complete their request headers by a deadline (pure).

    The timeout is the same for every connection, so deadlines are in insertion
    order and expiry only looks at the front.
    """

    def __init__(self, timeout_us: int) -> None:
        self.timeout_us = timeout_us
        self._pending: dict[object, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, key: object, now_us: int) -> None:
        self._pending[key] = now_us + self.timeout_us

    def done(self, key: object) -> None:
        self._pending.pop(key, None)

    def next_deadline_us(self) -> int | None:
        return next(iter(self._pending.values()), None)

    def expired(self, now_us: int) -> list[object]:
        out = []
        for key, deadline in self._pending.items():
            if deadline > now_us:
                break
            out.append(key)
        for key in out:
            del self._pending[key]
        return out


# --- adapters ---------------------------------------------------------------------------


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The source IP of a connection (IPv4-mapped IPv6 written as IPv4)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        return host.removeprefix("::ffff:") if "." in host else host
    return "?"


def refusal_response(reason: str, gate: ConnectionGate) -> bytes:
    """The fixed answer to a refused connection: HTTP 503 with a JSON reason, then close."""
    if reason == PER_ADDRESS:
        message = f"too many connections from your address (limit {gate.max_per_address})"
    else:
        message = f"too many connections (limit {gate.max_total})"
    body = json.dumps({"error": "too_many_connections", "message": message}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


class EdgeGuard:
    """One listener's gate and deadlines, with the task that enforces them in time."""

    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        max_total: int,
        max_per_address: int,
        header_timeout_s: float | None,
    ) -> None:
        self.clock = clock
        self.gate = ConnectionGate(name, max_total=max_total, max_per_address=max_per_address)
        self.deadlines = (
            HeaderDeadlines(int(header_timeout_s * 1e6)) if header_timeout_s is not None else None
        )
        self.header_timeouts = 0
        self._closers: dict[object, Callable[[], None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"edge-{self.gate.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._log_refusals(force=True)

    def admit(self, transport: asyncio.BaseTransport) -> tuple[str, str | None]:
        """(address, refusal reason or None) for a connection just accepted."""
        address = peer_address(transport)
        reason = self.gate.admit(address)
        if reason is not None and self.gate.unlogged == 1:
            # The task logs at once, or when the last log line is old enough; later
            # refusals until then are only counted (no wake-up per refused connection).
            self._wake.set()
        return address, reason

    def expect_headers(self, key: object, close: Callable[[], None]) -> None:
        if self.deadlines is None:
            return
        was_empty = not self.deadlines
        self.deadlines.start(key, self.clock.monotonic_us())
        self._closers[key] = close
        if was_empty:
            self._wake.set()

    def headers_done(self, key: object) -> None:
        if self.deadlines is not None:
            self.deadlines.done(key)
            self._closers.pop(key, None)

    def _log_refusals(self, *, force: bool = False) -> None:
        now = self.clock.monotonic_us()
        line = self.gate.refusal_summary(now if not force else 1 << 62)
        if line is not None:
            log.warning("%s", line)

    async def _run(self) -> None:
        while True:
            self._log_refusals()
            now = self.clock.monotonic_us()
            if self.deadlines is not None:
                for key in self.deadlines.expired(now):
                    close = self._closers.pop(key, None)
                    if close is not None:
                        self.header_timeouts += 1
                        close()
            due = [self.gate.next_log_due_us()]
            if self.deadlines is not None:
                due.append(self.deadlines.next_deadline_us())
            # One sweep for every connection whose deadline has passed, not a timer each.
            await wait_event_or_deadline(
                self.clock, self._wake, min((d for d in due if d is not None), default=None)
            )


class _GatedHttpProtocol(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: admission first, header deadline, then
    every call passed through unchanged."""

    __slots__ = ("_address", "_guard", "_inner", "_tail", "_transport", "_waiting_headers")

    def __init__(self, inner: asyncio.Protocol, guard: EdgeGuard) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._guard = guard
        self._address = ""
        self._waiting_headers = False
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        address, reason = self._guard.admit(transport)
        if reason is not None:
            self._inner = None
            transport.write(refusal_response(reason, self._guard.gate))
            transport.close()
            return
        assert self._inner is not None
        self._address = address
        self._transport = transport
        self._waiting_headers = True
        self._guard.expect_headers(self, transport.abort)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        inner = self._inner
        if inner is None:
            return
        self._inner = None
        self._guard.gate.release(self._address)
        if self._waiting_headers:
            self._guard.headers_done(self)
        inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._waiting_headers:
            # The first request's headers end at the first empty line; later requests
            # on a kept-alive connection are aiohttp's (keepalive_timeout).
            seen = self._tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self._waiting_headers = False
                self._guard.headers_done(self)
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GatedSite(web.BaseSite):
    """An aiohttp TCP site whose every connection goes through an :class:`EdgeGuard`.

    Like ``web.TCPSite``, plus the guard, and a TLS handshake bounded by the header
    timeout (asyncio's default is 60 s).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: EdgeGuard,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self.bound_port = 0

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.bound_port or self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        handler_factory = self._runner.server
        assert handler_factory is not None
        guard = self._guard

        def factory() -> asyncio.Protocol:
            return _GatedHttpProtocol(handler_factory(), guard)

        kwargs: dict[str, Any] = {}
        if self._ssl_context is not None and guard.deadlines is not None:
            kwargs["ssl_handshake_timeout"] = guard.deadlines.timeout_us / 1e6
        server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            **kwargs,
        )
        self._server = server
        self.bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port


def gated_connection_class(guard: EdgeGuard) -> type[ServerConnection]:
    """A websockets connection class that asks ``guard`` before it starts a handshake.

    Refused: the fixed 503 answer is written and the socket closed before the
    handshake request is read; no handler task is started.
    """

    class GatedServerConnection(ServerConnection):
        _edge_address: str | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            address, reason = guard.admit(transport)
            if reason is not None:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal_response(reason, guard.gate))
                transport.close()
                return
            self._edge_address = address
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            address = self._edge_address
            if address is None:
                return  # refused: nothing was started
            self._edge_address = None
            guard.gate.release(address)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._edge_address is not None:
                super().data_received(data)

        def eof_received(self) -> None:
            if self._edge_address is not None:
                super().eof_received()

    return GatedServerConnection


# --- TLS for clients, file descriptors ---------------------------------------------------


def client_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying TLS client context that also trusts ``ca_file`` (a private CA, PEM).

    Raises ``ValueError`` with the reason when the file cannot be used.
    """
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except FileNotFoundError:
            raise ValueError(f"{ca_file}: no such file") from None
        except ssl.SSLError as exc:
            raise ValueError(f"{ca_file}: not a PEM CA certificate ({exc.reason})") from None
        except OSError as exc:
            raise ValueError(f"{ca_file}: cannot read: {exc.strerror}") from None
    return ctx


def ensure_file_limit(
    limits: LimitsConfig,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> str:
    """Make sure every allowed connection can get a file descriptor; what was done.

    Raises the soft RLIMIT_NOFILE up to what the limits need (never above the hard
    limit). Raises :class:`FileLimitError` when even the hard limit is too low.
    """
    need = limits.file_descriptors_needed
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or need <= soft:
        return f"file descriptors: soft limit {soft}, connection limits need {need}"
    if hard != unlimited and need > hard:
        raise FileLimitError(
            f"limits: max_http_connections ({limits.max_http_connections}) + "
            f"max_ws_connections ({limits.max_ws_connections}) + a reserve of "
            f"{need - limits.max_http_connections - limits.max_ws_connections} need {need} "
            f"file descriptors, but the hard limit (ulimit -Hn) is {hard}: lower those "
            "limits or raise the hard limit"
        )
    try:
        setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (OSError, ValueError) as exc:
        raise FileLimitError(
            f"limits: cannot raise the file-descriptor limit from {soft} to the {need} the "
            f"connection limits need ({exc}): lower limits.max_http_connections and "
            "limits.max_ws_connections, or raise ulimit -n"
        ) from None
    return f"file descriptors: soft limit raised from {soft} to {need} (hard limit {hard})"
