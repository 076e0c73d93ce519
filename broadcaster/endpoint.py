"""The reference PA endpoint (``broadcaster listen``).

A real client of wire protocol v1, small enough to read next to
docs/protocol.md: it says hello with its id, token, zones and formats,
answers heartbeats, estimates the server clock offset from ping/pong, decodes
every announcement it receives and writes it to ``<folder>/<announcement id>.wav``,
sends a receipt when each one ends, and logs every control event. It
reconnects with backoff after a dropped link, and gives up at once when the
server refuses it for good (bad token, forbidden zone, no common format).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from broadcaster.audio.decode import FrameDecoder, write_wav
from broadcaster.clock import Clock, SystemClock
from broadcaster.edge import client_tls_context
from broadcaster.model import StreamFormat
from broadcaster.streaming import wire
from broadcaster.streaming.wire import CloseCode

log = logging.getLogger("broadcaster.endpoint")

#: Close codes after which reconnecting cannot help.
#: 4010 is among them: another device connected with our id, and two devices
#: reconnecting in turn would throw each other off forever.
FATAL_CLOSE_CODES = frozenset(
    {
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN_ZONE,
        CloseCode.NO_FORMAT,
        CloseCode.BAD_VERSION,
        CloseCode.BAD_MESSAGE,
        CloseCode.REPLACED,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.TOO_BIG,
    }
)


class EndpointRefused(Exception):
    """The server refused this endpoint for a reason a retry will not fix."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"server refused the endpoint: {code} {reason}")
        self.code = code
        self.reason = reason


def apply_gain(pcm: bytes, gain_db: float) -> bytes:
    """Mono s16le PCM attenuated by ``gain_db`` (<= 0; 0 returns it as it is)."""
    if gain_db >= 0.0 or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    scaled = np.rint(samples * (10.0 ** (gain_db / 20.0)))
    out: bytes = scaled.astype("<i2").tobytes()
    return out


@dataclass
class ReceivedAnnouncement:
    """What the endpoint got for one announcement."""

    announcement_id: str
    stream: int
    text: str
    format: StreamFormat
    status: str = "receiving"  # receiving | complete | incomplete | cancelled
    chunks: int = 0
    gaps: int = 0
    pcm: bytearray = field(default_factory=bytearray)
    seqs: list[int] = field(default_factory=list)
    play_at_us: list[int] = field(default_factory=list)
    durations_us: list[int] = field(default_factory=list)
    chunk_bytes: list[int] = field(default_factory=list)
    late_chunks: int = 0
    #: Indices (into ``seqs``) of chunks the server flagged as following a pause in
    #: the timeline (an underrun on its side: synthesis fell behind the playout).
    discontinuities: list[int] = field(default_factory=list)
    #: Chunks received but dropped unplayed because the announcement was cancelled or
    #: preempted (a real speaker flushes its buffer).
    flushed_chunks: int = 0
    preempted_by: str | None = None
    min_margin_us: int | None = None
    expected_chunks: int | None = None
    reason: str | None = None
    path: Path | None = None
    #: The attenuation the server asked for (announcement_started.gain_db), applied
    #: to the decoded audio before it is played (recorded).
    gain_db: float = 0.0

    @property
    def joined_late(self) -> bool:
        return bool(self.seqs) and self.seqs[0] > 0

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // 2 * 1000 // self.format.sample_rate_hz


@dataclass
class ClockEstimate:
    """Server clock minus local clock, from the fastest trip seen in each direction.

    Each pong gives ``server - sent = offset + uplink delay`` and
    ``server - received = offset - downlink delay``. The smallest of the first
    and the largest of the second bound the offset from both sides; their
    midpoint is the estimate. Unlike keeping the single fastest round trip, each
    direction only needs one quick trip of its own, which halves the error under
    jitter (measured in bench/clock_sync.py). Assumes the two directions' fastest
    delays are alike, as every NTP-style method must.
    """

    offset_us: int | None = None
    rtt_us: int | None = None
    samples: int = 0
    _up_min: int | None = None
    _down_max: int | None = None

    def update(self, sent_us: int, server_us: int, received_us: int) -> None:
        self.samples += 1
        rtt = received_us - sent_us
        if self.rtt_us is None or rtt < self.rtt_us:
            self.rtt_us = rtt
        up = server_us - sent_us
        down = server_us - received_us
        self._up_min = up if self._up_min is None else min(self._up_min, up)
        self._down_max = down if self._down_max is None else max(self._down_max, down)
        self.offset_us = (self._up_min + self._down_max) // 2


def _format_spec(key: str) -> wire.FormatSpec:
    fmt = StreamFormat.parse(key)
    return wire.FormatSpec(codec=fmt.codec.value, sample_rate_hz=fmt.sample_rate_hz)


class ReferenceEndpoint:
    def __init__(
        self,
        *,
        url: str,
        endpoint_id: str,
        token: str,
        zones: list[str],
        formats: list[str],
        out_dir: Path | None,
        clock: Clock | None = None,
        reconnect: bool = True,
        max_announcements: int | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url
        #: For wss:// URLs: verify the server against the system CAs and ``ca_file``
        #: (a private CA, PEM). Raises ValueError at once when the file is unusable.
        tls = client_tls_context(ca_file)
        self._ssl = tls if url.startswith("wss://") else None
        self.endpoint_id = endpoint_id
        self.token = token
        self.zones = zones
        self.formats = formats
        self.out_dir = out_dir
        self.clock: Clock = clock or SystemClock()
        self.reconnect = reconnect
        self.max_announcements = max_announcements
        self.announcements: dict[str, ReceivedAnnouncement] = {}
        self.events: list[dict[str, object]] = []
        self.clock_estimate = ClockEstimate()
        self.welcome: wire.Welcome | None = None
        self.joined = asyncio.Event()
        self.finished_count = 0
        self._by_stream: dict[int, ReceivedAnnouncement] = {}
        self._decoders: dict[int, FrameDecoder] = {}
        self._ping_id = 0
        self._last_received_us = 0
        self._pings: dict[int, int] = {}
        self._done = asyncio.Event()
        self._ws: ClientConnection | None = None
        #: Playback receipts waiting for their moment, per stream (owned; cancelled
        #: with the stream or the connection).
        self._acks: dict[int, set[asyncio.Task[None]]] = {}
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # --- public -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (and reconnect) until stopped, refused, or max_announcements reached."""
        backoff_s = 0.5
        while not self._done.is_set():
            try:
                async with connect(
                    self.url,
                    max_size=4 * 1024 * 1024,
                    ping_interval=None,
                    compression=None,
                    open_timeout=10,
                    ssl=self._ssl,
                ) as ws:
                    await self._session(ws)
                    if self.welcome is not None:
                        backoff_s = 0.5  # reset only once the server had accepted us
                if self._done.is_set() or not self.reconnect:
                    return
                log.warning("link to %s closed; reconnecting in %.1f s", self.url, backoff_s)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if not self.reconnect:
                    raise
                log.warning("cannot reach %s (%s); retrying in %.1f s", self.url, exc, backoff_s)
            # Jitter so a whole station's endpoints do not reconnect in lockstep.
            await self.clock.sleep_us(int(backoff_s * random.uniform(0.8, 1.2) * 1e6))
            backoff_s = min(backoff_s * 2, 10.0)

    def stop(self) -> None:
        self._done.set()

    # --- one connection -----------------------------------------------------------------

    async def _session(self, ws: ClientConnection) -> None:
        hello = wire.Hello(
            protocol=wire.PROTOCOL_VERSION,
            endpoint_id=self.endpoint_id,
            token=self.token,
            zones=self.zones,
            formats=[_format_spec(k) for k in self.formats],
            agent="broadcaster-reference-endpoint",
        )
        # A new link may take another route: start the clock estimate afresh.
        self.clock_estimate = ClockEstimate()
        self.welcome = None
        await ws.send(wire.dump(hello))
        stopper = asyncio.create_task(self._done.wait())
        try:
            reader = asyncio.create_task(self._read(ws))
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
            else:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(wire.dump(wire.Bye(reason="endpoint stopping")))
                await ws.close()
        finally:
            stopper.cancel()

    async def _read(self, ws: ClientConnection) -> None:
        pinger: asyncio.Task[None] | None = None
        watchdog: asyncio.Task[None] | None = None
        self._last_received_us = self._now()
        self._ws = ws
        try:
            async for message in ws:
                self._last_received_us = self._now()
                if isinstance(message, bytes):
                    self._on_audio(message)
                    continue
                try:
                    msg = wire.parse_server_message(message)
                except wire.MessageError as exc:
                    # Newer servers may send more; an endpoint skips what it does not know.
                    log.warning("ignored a server message: %s", exc)
                    continue
                if isinstance(msg, wire.Welcome):
                    self.welcome = msg
                    self._log_event(msg)
                    self.joined.set()
                    interval_us = msg.settings.heartbeat_interval_ms * 1000
                    pinger = asyncio.create_task(self._ping_loop(ws, interval_us))
                    timeout_us = msg.settings.heartbeat_timeout_ms * 1000
                    watchdog = asyncio.create_task(self._watchdog(ws, timeout_us))
                elif isinstance(msg, wire.ServerPing):
                    await ws.send(
                        wire.dump(wire.Pong(id=msg.id, echo_us=msg.sent_us, time_us=self._now()))
                    )
                elif isinstance(msg, wire.ServerPong):
                    sent = self._pings.pop(msg.id, None)
                    if sent is not None:
                        self.clock_estimate.update(sent, msg.time_us, self._now())
                elif isinstance(msg, wire.AnnouncementStarted):
                    self._log_event(msg)
                    self._on_started(msg)
                elif isinstance(msg, wire.AnnouncementEnded):
                    self._log_event(msg)
                    await self._on_ended(ws, msg)
                elif isinstance(msg, wire.AnnouncementCancelled):
                    self._log_event(msg)
                    await self._on_cancelled(ws, msg)
                elif isinstance(msg, wire.Error | wire.Notice):
                    self._log_event(msg)
            code, reason = ws.close_code, ws.close_reason
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else None
        finally:
            for task in (pinger, watchdog):
                if task is not None:
                    task.cancel()
            for tasks in self._acks.values():
                for task in tasks:
                    task.cancel()
            self._acks.clear()
            self._ws = None
        self.close_code, self.close_reason = code, reason
        log.info("connection closed by server: %s %s", code, reason or "")
        self.joined.clear()
        if code in FATAL_CLOSE_CODES:
            raise EndpointRefused(code or 0, reason or "")

    async def _watchdog(self, ws: ClientConnection, timeout_us: int) -> None:
        """Close the link when the server has been silent too long (it pings every interval)."""
        while True:
            deadline = self._last_received_us + timeout_us
            if self._now() >= deadline:
                log.warning("server silent for %d ms; dropping the link", timeout_us // 1000)
                await ws.close(CloseCode.GOING_AWAY, "server silent")
                return
            await self.clock.sleep_until_us(deadline)

    async def _ping_loop(self, ws: ClientConnection, interval_us: int) -> None:
        # A few quick probes first so the clock estimate is good before audio starts.
        delays = [50_000] * 15  # a quick burst: the estimate improves with every sample
        with contextlib.suppress(ConnectionClosed):
            while True:
                self._ping_id += 1
                now = self._now()
                self._pings[self._ping_id] = now
                for stale in [k for k in self._pings if k < self._ping_id - 8]:
                    del self._pings[stale]
                await ws.send(wire.dump(wire.Ping(id=self._ping_id, sent_us=now)))
                await self.clock.sleep_us(delays.pop() if delays else interval_us)

    # --- announcements ------------------------------------------------------------------

    def _on_started(self, msg: wire.AnnouncementStarted) -> None:
        fmt = StreamFormat.parse(
            f"{msg.format.codec}/{msg.format.sample_rate_hz}", msg.format.frame_ms or 20
        )
        rec = ReceivedAnnouncement(
            announcement_id=msg.announcement_id,
            stream=msg.stream,
            text=msg.text,
            format=fmt,
            gain_db=min(0.0, msg.gain_db),  # attenuation only, whatever was sent
        )
        self.announcements[msg.announcement_id] = rec
        self._by_stream[msg.stream] = rec
        self._decoders[msg.stream] = FrameDecoder(fmt)

    def _on_audio(self, frame: bytes) -> None:
        try:
            header, payload = wire.unpack_audio_frame(frame)
        except wire.FrameError as exc:
            log.warning("bad audio frame ignored: %s", exc)
            return
        rec = self._by_stream.get(header.stream)
        decoder = self._decoders.get(header.stream)
        if rec is None or decoder is None or rec.status != "receiving":
            return  # audio of an announcement we never saw start, or already ended
        before = len(rec.pcm)
        # The first chunk may be past seq 0: an endpoint that joins mid-announcement
        # hears it from the live point.
        if rec.seqs and header.seq != rec.seqs[-1] + 1:
            rec.gaps += 1
        if rec.seqs:
            # Keep the timeline: a missing chunk, or a pause the server marked as a
            # discontinuity, becomes silence of the same length in the recording.
            missing_us = header.play_at_us - (rec.play_at_us[-1] + rec.durations_us[-1])
            if missing_us > 0:
                rec.pcm.extend(bytes(2 * (missing_us * rec.format.sample_rate_hz // 1_000_000)))
        if header.flags & wire.FLAG_DISCONTINUITY and rec.seqs:
            rec.discontinuities.append(len(rec.seqs))
        rec.seqs.append(header.seq)
        rec.play_at_us.append(header.play_at_us)
        rec.durations_us.append(header.duration_us)
        rec.chunks += 1
        if rec.chunks == 1:
            self._ack_at(rec, "started", header.play_at_us)
        rec.pcm.extend(apply_gain(decoder.decode(payload), rec.gain_db))
        rec.chunk_bytes.append(len(rec.pcm) - before)  # with any silence filled before it
        if self.clock_estimate.offset_us is not None:
            margin = header.play_at_us - (self._now() + self.clock_estimate.offset_us)
            if rec.min_margin_us is None or margin < rec.min_margin_us:
                rec.min_margin_us = margin
            if margin < 0:
                rec.late_chunks += 1

    async def _on_ended(self, ws: ClientConnection, msg: wire.AnnouncementEnded) -> None:
        rec = self.announcements.get(msg.announcement_id)
        if rec is None:
            return
        self._ack_at(rec, "finished", msg.end_at_us)
        first = rec.seqs[0] if rec.seqs else 0  # > 0 after a late join
        rec.expected_chunks = msg.chunks - first
        whole = rec.chunks == rec.expected_chunks and rec.gaps == 0 and rec.chunks > 0
        rec.status = "complete" if whole else "incomplete"
        await self._finish(ws, rec)

    async def _on_cancelled(self, ws: ClientConnection, msg: wire.AnnouncementCancelled) -> None:
        rec = self.announcements.get(msg.announcement_id)
        if rec is None:
            return
        if rec.status != "receiving":
            # Cancelled after it ended: a speaker would drop what it still has buffered.
            log.info("announcement %s cancelled after its end: %s", rec.announcement_id, msg.reason)
            return
        for task in self._acks.pop(rec.stream, set()):
            task.cancel()  # it will not play to its end now
        rec.status = "cancelled"
        rec.reason = msg.reason
        rec.preempted_by = msg.preempted_by
        if msg.flush:
            self._flush(rec)
        await self._finish(ws, rec)

    def _ack_at(self, rec: ReceivedAnnouncement, event: str, server_us: int) -> None:
        """Send a playback receipt when the server-clock instant ``server_us`` comes here.

        A real speaker would send it when its output actually starts or ends; this
        reference endpoint has no sound card, so the scheduled play time stands in.
        """
        ws = self._ws
        if ws is None:
            return
        offset = self.clock_estimate.offset_us or 0

        async def send() -> None:
            await self.clock.sleep_until_us(server_us - offset)
            with contextlib.suppress(ConnectionClosed):
                await ws.send(
                    wire.dump(
                        wire.Playback(
                            announcement_id=rec.announcement_id,
                            stream=rec.stream,
                            event=event,  # type: ignore[arg-type]
                            at_us=server_us,
                        )
                    )
                )

        tasks = self._acks.setdefault(rec.stream, set())
        task = asyncio.create_task(send(), name=f"ack-{event}-{rec.stream}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _flush(self, rec: ReceivedAnnouncement) -> None:
        """Drop what has not played yet, as a speaker empties its buffer."""
        if self.clock_estimate.offset_us is None:
            return
        server_now = self._now() + self.clock_estimate.offset_us
        while rec.play_at_us and rec.play_at_us[-1] > server_now:
            rec.play_at_us.pop()
            rec.durations_us.pop()
            rec.seqs.pop()
            size = rec.chunk_bytes.pop()
            del rec.pcm[len(rec.pcm) - size :]
            rec.flushed_chunks += 1

    async def _finish(self, ws: ClientConnection, rec: ReceivedAnnouncement) -> None:
        self._by_stream.pop(rec.stream, None)
        self._decoders.pop(rec.stream, None)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            rec.path = self.out_dir / f"{rec.announcement_id}.wav"
            pcm = bytes(rec.pcm)
            rate = rec.format.sample_rate_hz
            await asyncio.to_thread(write_wav, rec.path, pcm, rate)
        log.info(
            "announcement %s %s: %d chunks, %d ms, %d gap(s), %d late, clock offset %s us%s",
            rec.announcement_id,
            rec.status,
            rec.chunks,
            rec.duration_ms,
            rec.gaps,
            rec.late_chunks,
            self.clock_estimate.offset_us,
            f" -> {rec.path}" if rec.path else "",
        )
        receipt_status = "complete" if rec.status == "complete" else rec.status
        with contextlib.suppress(ConnectionClosed):
            await ws.send(
                wire.dump(
                    wire.Receipt(
                        announcement_id=rec.announcement_id,
                        stream=rec.stream,
                        status=receipt_status,  # type: ignore[arg-type]
                        chunks=rec.chunks,
                        duration_ms=rec.duration_ms,
                        gaps=rec.gaps,
                    )
                )
            )
        self.finished_count += 1
        if self.max_announcements is not None and self.finished_count >= self.max_announcements:
            self._done.set()

    def _log_event(self, msg: BaseModel) -> None:
        data = msg.model_dump()
        self.events.append(data)
        shown = {k: v for k, v in data.items() if k not in ("type", "text")}
        log.info("%s %s", data.get("type"), shown)

    def _now(self) -> int:
        return self.clock.monotonic_us()
