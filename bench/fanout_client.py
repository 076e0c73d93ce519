"""Load generator for bench/fanout.py: many lean PA endpoints (or Icecast listeners) per process.

Each worker process runs one asyncio loop with thousands of raw TCP connections.
No WebSocket library: the RFC 6455 upgrade is written by hand, server frames
(unmasked) are parsed from their 2-10 byte headers, and the only frames sent
are the hello and the pongs (masked, as a client must). Per frame, an audio
endpoint reads ``stream``, ``seq`` and ``play_at_us`` from the 28-byte header
and compares ``play_at_us`` with its arrival time. Client and server share the
host's CLOCK_MONOTONIC (the server clock is ``time.monotonic_ns() // 1000``),
so no offset estimate is needed: ``arrival > play_at`` means the frame is late.

An Icecast listener has no play-at time. It counts bytes and compares them with
the bytes the source has pushed so far (a counter shared with the source
thread): when its backlog grows by more than the playout delay's worth of
bytes above the smallest backlog it ever had, that arrival is late. Listeners
set SO_RCVLOWAT to about 100 ms of audio so they wake once per 100 ms, not per
Ogg page; since the backlog is computed from byte counts when they read, this
batching hides no lag (up to 100 ms more is reported, never less).

The parent drives a worker over a ``multiprocessing`` pipe with commands
(``connect``, ``status``, ``window_start``, ``window_end``, ``stop``) and gets one
answer (a dict) per command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import socket
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: stream u32, seq u32, play_at_us i64, at offset 4 of the binary audio header.
_AUDIO = struct.Struct("!IIq")
_AUDIO_HEADER = 28

# Delay histogram: arrival delay beyond nominal (playout delay - slack) in 1 ms bins.
_HIST_MAX_MS = 2000

_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    pad = (key * (n // 4 + 1))[:n]
    return key + (int.from_bytes(payload, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _mask(payload)


class _Base(asyncio.Protocol):
    """What both client kinds count; reset at the start of the measuring window."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.transport: asyncio.Transport | None = None
        self.state = _HANDSHAKE
        self.buf = b""
        self.joined = False
        self.done: asyncio.Future[None] = worker.loop.create_future()
        self.error: str | None = None
        self.close_code: int | None = None
        self.closed_in_window = False
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.late = 0
        self.gaps = 0
        self.worst_delay_us = 0
        self.closed_in_window = False

    def _finish(self, error: str | None = None) -> None:
        if error and self.error is None:
            self.error = error
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != _CLOSED:
            self.state = _CLOSED
            self.closed_in_window = self.w.in_window
        self._finish("connection lost" if exc is None else f"connection lost: {exc}")

    def final_check(self) -> None:
        """At the window's end: anything still owed counts (a listener stalled for good)."""

    def abort(self) -> None:
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.abort()


class WsEndpoint(_Base):
    """One PA endpoint speaking protocol v1, as lean as it can be."""

    def __init__(self, worker: Worker, endpoint_id: str) -> None:
        super().__init__(worker)
        self.endpoint_id = endpoint_id
        self.key = base64.b64encode(os.urandom(16))
        self.stream = -1
        self.next_seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        w = self.w
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (w.path.encode(), w.host.encode(), w.port, self.key)
        )

    def data_received(self, data: bytes) -> None:
        if self.state != _OPEN:
            if self.state == _HANDSHAKE:
                self._handshake(data)
            return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        p = 0
        now = -1
        while n - p >= 2:
            ln = buf[p + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - p < 4:
                    break
                ln = (buf[p + 2] << 8) | buf[p + 3]
                h = 4
            elif ln == 127:
                if n - p < 10:
                    break
                ln = int.from_bytes(buf[p + 2 : p + 10], "big")
                h = 10
            s = p + h
            end = s + ln
            if end > n:
                break
            op = buf[p] & 0x0F
            if op == 2 and ln >= _AUDIO_HEADER:
                if now < 0:
                    now = time.monotonic_ns() // 1000
                stream, seq, play_at = _AUDIO.unpack_from(buf, s + 4)
                if stream != self.stream:
                    self.stream = stream
                    self.gaps += seq  # a new stream starts at seq 0
                elif seq != self.next_seq:
                    self.gaps += max(0, seq - self.next_seq)
                self.next_seq = seq + 1
                self.frames += 1
                slack = play_at - now
                if slack < 0:
                    self.late += 1
                w = self.w
                delay = w.playout_us - slack
                if delay > self.worst_delay_us:
                    self.worst_delay_us = delay
                b = delay // 1000
                w.hist[0 if b < 0 else (b if b < _HIST_MAX_MS else _HIST_MAX_MS)] += 1
            elif op == 1:
                self._text(buf[s:end])
            elif op == 8:
                self.close_code = int.from_bytes(buf[s : s + 2], "big") if ln >= 2 else 1005
                self.closed_in_window = self.w.in_window
                self.abort()
                self._finish(f"closed by server: {self.close_code}")
                return
            elif op == 9:
                self.transport.write(_client_frame(10, bytes(buf[s:end])))  # type: ignore[union-attr]
            p = end
        self.buf = buf[p:] if p < n else b""

    def _handshake(self, data: bytes) -> None:
        buf = self.buf + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            self.buf = buf
            return
        head = buf[:head_end].decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            self.abort()
            self._finish(f"handshake refused: {head.splitlines()[0]}")
            return
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest()).decode()
        if accept.lower() not in head.lower():
            self.abort()
            self._finish("handshake: wrong Sec-WebSocket-Accept")
            return
        self.state = _OPEN
        self.buf = b""
        w = self.w
        hello = {
            "type": "hello",
            "protocol": 1,
            "endpoint_id": self.endpoint_id,
            "token": w.token,
            "zones": [w.zone],
            "formats": [w.format],
            "agent": "bench/fanout_client",
        }
        self._send_text(json.dumps(hello, separators=(",", ":")))
        rest = buf[head_end + 4 :]
        if rest:
            self.data_received(rest)

    def _send_text(self, text: str) -> None:
        if self.transport is not None and self.state == _OPEN:
            self.transport.write(_client_frame(1, text.encode()))

    def _text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            self.w.bad_text += 1
            return
        kind = msg.get("type")
        if kind == "ping":
            self.w.pings += 1
            pong = {
                "type": "pong",
                "id": msg["id"],
                "echo_us": msg["sent_us"],
                "time_us": time.monotonic_ns() // 1000,
            }
            self._send_text(json.dumps(pong, separators=(",", ":")))
        elif kind == "welcome":
            self.joined = True
            self._finish()
        elif kind == "announcement_started":
            self.w.started += 1
        elif kind == "error":
            self.error = f"error {msg.get('code')}: {msg.get('message')}"


class IceListener(_Base):
    """One HTTP listener of an Icecast mount; counts bytes against the source's."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.rx = 0
        self.min_lag = 1 << 62

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        w = self.w
        sock = transport.get_extra_info("socket")
        if sock is not None and w.rcvlowat > 1:
            # Wake up once per ~100 ms of audio rather than per TCP segment: the lag is
            # computed from byte counts at read time, so batching does not hide any.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, w.rcvlowat)
        transport.write(
            b"GET %s HTTP/1.0\r\nHost: %s:%d\r\nUser-Agent: bench-fanout\r\n\r\n"
            % (w.path.encode(), w.host.encode(), w.port)
        )

    def data_received(self, data: bytes) -> None:
        if self.state != _OPEN:
            if self.state != _HANDSHAKE:
                return
            buf = self.buf + data
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 200" not in status:
                self.abort()
                self._finish(f"refused: {status.decode('latin-1')}")
                return
            self.state = _OPEN
            self.buf = b""
            self.joined = True
            self._finish()
            data = buf[head_end + 4 :]
            if not data:
                return
        w = self.w
        self.rx += len(data)
        self.frames += 1
        lag = w.source_bytes.value - self.rx
        if lag < self.min_lag:
            self.min_lag = lag
        behind = lag - self.min_lag
        delay = behind * 1_000_000 // w.byte_rate
        if delay > w.playout_us:
            self.late += 1
        if delay > self.worst_delay_us:
            self.worst_delay_us = delay
        b = delay // 1000
        w.hist[b if b < _HIST_MAX_MS else _HIST_MAX_MS] += 1

    def final_check(self) -> None:
        w = self.w
        if self.state != _OPEN:
            return
        behind = w.source_bytes.value - self.rx - self.min_lag
        delay = behind * 1_000_000 // w.byte_rate
        if delay > w.playout_us:
            self.late += 1
        self.worst_delay_us = max(self.worst_delay_us, delay)


class Worker:
    def __init__(self, conn: Connection, spec: dict[str, Any]) -> None:
        self.conn = conn
        self.kind: str = spec["kind"]
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.path: str = spec["path"]
        self.token: str = spec.get("token", "")
        self.zone: str = spec.get("zone", "")
        self.format: dict[str, Any] = spec.get("format", {})
        self.ids: list[str] = spec["ids"]
        self.concurrency: int = spec["concurrency"]
        self.connect_timeout: float = spec["connect_timeout_s"]
        self.playout_us: int = spec["playout_us"]
        self.byte_rate: int = spec.get("byte_rate", 1)
        self.source_bytes = spec.get("source_bytes")
        self.rcvlowat: int = spec.get("rcvlowat", 0)
        self.loop = asyncio.get_running_loop()
        self.clients: list[_Base] = []
        self.hist = [0] * (_HIST_MAX_MS + 1)
        self.in_window = False
        self.pings = 0
        self.started = 0
        self.bad_text = 0
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._stop = self.loop.create_future()
        self._connect_task: asyncio.Task[None] | None = None

    def _client(self, i: int) -> _Base:
        if self.kind == "ws":
            return WsEndpoint(self, self.ids[i])
        return IceListener(self)

    async def _connect_all(self) -> None:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: _Base) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(
                        self.loop.create_connection(lambda: c, self.host, self.port),
                        self.connect_timeout,
                    )
                    await asyncio.wait_for(asyncio.shield(c.done), self.connect_timeout)
                except (OSError, TimeoutError) as exc:
                    c.abort()
                    c._finish(f"connect: {exc!r}")

        self.clients = [self._client(i) for i in range(len(self.ids))]
        await asyncio.gather(*(one(c) for c in self.clients))
        joined = sum(c.joined for c in self.clients)
        errors: dict[str, int] = {}
        for c in self.clients:
            if not c.joined and c.error:
                errors[c.error] = errors.get(c.error, 0) + 1
        self._reply(
            {
                "joined": joined,
                "failed": len(self.clients) - joined,
                "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
                "seconds": time.perf_counter() - t0,
            }
        )

    def _reply(self, obj: dict[str, Any]) -> None:
        self.conn.send(obj)

    def _cpu(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def _on_command(self) -> None:
        while self.conn.poll():
            cmd = self.conn.recv()
            if cmd == "connect":
                self._connect_task = self.loop.create_task(self._connect_all())
            elif cmd == "status":
                live = [c for c in self.clients if c.state == _OPEN]
                self._reply(
                    {
                        "open": len(live),
                        "receiving": sum(1 for c in live if c.frames),
                        "started": self.started,
                    }
                )
            elif cmd == "window_start":
                for c in self.clients:
                    c.reset()
                self.hist = [0] * (_HIST_MAX_MS + 1)
                self.pings = 0
                self.in_window = True
                self._cpu0 = self._cpu()
                self._t0 = time.perf_counter()
                self._reply({})
            elif cmd == "window_end":
                self.in_window = False
                for c in self.clients:
                    c.final_check()
                self._reply(self._window_stats())
            elif cmd == "stop":
                for c in self.clients:
                    c.abort()
                if not self._stop.done():
                    self._stop.set_result(None)

    def _window_stats(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        cpu = self._cpu() - self._cpu0
        joined = [c for c in self.clients if c.joined]
        frames = [c.frames for c in joined]
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "joined": len(joined),
            "open_at_end": sum(1 for c in joined if c.state == _OPEN),
            "closed_in_window": sum(1 for c in joined if c.closed_in_window),
            "close_codes": sorted({c.close_code for c in joined if c.close_code is not None}),
            "frames": sum(frames),
            "min_frames": min(frames, default=0),
            "late": sum(c.late for c in joined),
            "late_clients": sum(1 for c in joined if c.late),
            "gaps": sum(c.gaps for c in joined),
            "gap_clients": sum(1 for c in joined if c.gaps),
            "worst_delay_us": max((c.worst_delay_us for c in joined), default=0),
            "hist": self.hist,
            "pings": self.pings,
        }

    async def run(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self._on_command)
        self._reply({"ready": True})
        try:
            await self._stop
        finally:
            self.loop.remove_reader(self.conn.fileno())
            if self._connect_task is not None:
                self._connect_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._connect_task
        self._reply({"stopped": True})


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of a load-generator process (multiprocessing target)."""
    cpus = spec.get("cpus")
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        await Worker(conn, spec).run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
