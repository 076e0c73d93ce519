"""Fan-out: which endpoint gets which frame, and what is dropped when one falls behind.

The hub never waits for a socket. Every endpoint has an :class:`Outbox`, a
bounded queue drained by that connection's own writer task, so a slow or
stalled endpoint only ever delays itself. Frames are built once per format by
the playout and the *same* ``bytes`` object is appended to every outbox of
that format.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broadcaster.model import StreamFormat


@dataclass(slots=True)
class DeliveryStats:
    """One endpoint's share of one announcement, as the server saw it."""

    endpoint_id: str
    format: str
    #: queued -> started -> finished (from the endpoint's playback receipts); or
    #: preempted, cancelled, missed (never played: gone before it could), or sent
    #: (all audio sent, the endpoint sends no playback receipts).
    state: str = "queued"
    chunks_queued: int = 0
    chunks_sent: int = 0
    dropped_stale: int = 0
    dropped_overflow: int = 0
    bytes_sent: int = 0
    receipt: dict[str, object] | None = None
    #: Joined while the announcement was already playing (heard it from the live point).
    late_join: bool = False
    started_at_us: int | None = None
    finished_at_us: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "format": self.format,
            "state": self.state,
            "chunks_queued": self.chunks_queued,
            "chunks_sent": self.chunks_sent,
            "dropped_stale": self.dropped_stale,
            "dropped_overflow": self.dropped_overflow,
            "bytes_sent": self.bytes_sent,
            "receipt": self.receipt,
            "late_join": self.late_join,
            "started_at_us": self.started_at_us,
            "finished_at_us": self.finished_at_us,
        }


@dataclass(slots=True)
class _Audio:
    frame: bytes
    play_at_us: int
    duration_us: int
    stats: DeliveryStats | None


@dataclass(slots=True)
class OutboxCounters:
    control_sent: int = 0
    audio_sent: int = 0
    dropped_stale: int = 0
    dropped_overflow: int = 0


class Outbox:
    """Frames waiting for one endpoint's socket.

    Bounded two ways. Audio: at most ``max_audio_us`` of audio; when a new
    chunk would exceed it, the *oldest* audio is dropped (late audio is worth
    less than current audio) and counted. Control messages are never dropped,
    because an endpoint that misses "started" or "cancelled" would play the
    wrong thing; at most ``max_control`` may wait, and past that the outbox
    reports ``overflowed`` so the server disconnects the endpoint. Audio whose
    play-at time has already passed when it reaches the front is dropped
    instead of sent.

    Heartbeats (ping/pong) go in a separate *urgent* lane that is sent before
    anything else: they carry no ordering with audio, and a pong queued behind
    two seconds of audio would ruin the endpoint's clock estimate.

    ``lagging_since_us`` is set at the first overflow and cleared once the
    queue has drained to half its audio bound: an endpoint that stays "full"
    for too long is one that cannot keep up.
    """

    def __init__(
        self, *, max_audio_us: int, max_control: int = 512, wake: Callable[[], None] = lambda: None
    ) -> None:
        self._items: deque[str | _Audio] = deque()
        self._urgent: deque[str] = deque()
        self._audio_us = 0
        self._control = 0
        self._max_audio_us = max_audio_us
        self._max_control = max_control
        self._wake = wake
        self.counters = OutboxCounters()
        self.overflowed = False
        #: Since when audio has been dropped for overflow with no send in between.
        self.lagging_since_us: int | None = None
        #: Set by the socket adapter: writes a complete pre-built WebSocket frame now
        #: if the connection can take it without waiting; False means "queue it".
        self.direct: Callable[[bytes], bool] | None = None

    def __len__(self) -> int:
        return len(self._items) + len(self._urgent)

    @property
    def queued_audio_us(self) -> int:
        return self._audio_us

    def put_urgent(self, text: str) -> None:
        """A heartbeat message: sent ahead of everything queued."""
        if len(self._urgent) >= self._max_control:
            self.overflowed = True
        self._urgent.append(text)
        self._wake()

    def put_control(self, text: str) -> None:
        if self._control >= self._max_control:
            self.overflowed = True
        self._items.append(text)
        self._control += 1
        self._wake()

    def put_audio(
        self,
        frame: bytes,
        *,
        play_at_us: int,
        duration_us: int,
        now_us: int,
        stats: DeliveryStats | None = None,
        ws_frame: bytes | None = None,
    ) -> None:
        """Queue a chunk — or, with nothing queued ahead of it, hand ``ws_frame`` (the same
        chunk already framed for WebSocket, built once for all endpoints) straight to the
        connection: no per-endpoint wake-up, task switch or allocation on the hot path.
        """
        if (
            ws_frame is not None
            and self.direct is not None
            and not self._items
            and not self._urgent
            and self.direct(ws_frame)
        ):
            self.counters.audio_sent += 1
            if stats is not None:
                stats.chunks_queued += 1
                stats.chunks_sent += 1
                stats.bytes_sent += len(frame)
            return
        while self._audio_us + duration_us > self._max_audio_us and self._drop_oldest_audio():
            if self.lagging_since_us is None:
                self.lagging_since_us = now_us
        self._items.append(_Audio(frame, play_at_us, duration_us, stats))
        self._audio_us += duration_us
        if stats is not None:
            stats.chunks_queued += 1
        self._wake()

    def pop(self, now_us: int) -> str | bytes | None:
        """The next frame to send, or None when empty. Stale audio is dropped on the way."""
        if self._urgent:
            self.counters.control_sent += 1
            return self._urgent.popleft()
        if self.lagging_since_us is not None and self._audio_us <= self._max_audio_us // 2:
            self.lagging_since_us = None
        while self._items:
            item = self._items.popleft()
            if isinstance(item, str):
                self._control -= 1
                self.counters.control_sent += 1
                return item
            self._audio_us -= item.duration_us
            if item.play_at_us + item.duration_us <= now_us:
                self.counters.dropped_stale += 1
                if item.stats is not None:
                    item.stats.dropped_stale += 1
                continue
            self.counters.audio_sent += 1
            if item.stats is not None:
                item.stats.chunks_sent += 1
                item.stats.bytes_sent += len(item.frame)
            return item.frame
        return None

    def discard_audio(self, stats: DeliveryStats) -> int:
        """Remove queued audio of one announcement (it was cancelled); returns how many."""
        kept: deque[str | _Audio] = deque()
        removed = 0
        for item in self._items:
            if isinstance(item, _Audio) and item.stats is stats:
                self._audio_us -= item.duration_us
                removed += 1
            else:
                kept.append(item)
        self._items = kept
        return removed

    def _drop_oldest_audio(self) -> bool:
        for i, item in enumerate(self._items):
            if isinstance(item, _Audio):
                del self._items[i]
                self._audio_us -= item.duration_us
                self.counters.dropped_overflow += 1
                if item.stats is not None:
                    item.stats.dropped_overflow += 1
                return True
        return False


@dataclass(eq=False)
class EndpointLink:
    """A joined endpoint as the hub sees it: who, where, what format, and its outbox."""

    endpoint_id: str
    session_id: str
    zones: tuple[str, ...]
    format: StreamFormat
    outbox: Outbox
    connected_at_us: int
    #: Called to end this link (replaced, lagging); set by the socket adapter.
    close: Callable[[int, str], None] = field(default=lambda code, reason: None)
    #: When the endpoint last sent anything (the console shows it).
    last_heard_us: int | None = None
    #: Latest heartbeat round trip, for the API.
    rtt_us: int | None = None
    remote: str | None = None
    #: What the endpoint last reported in a ``status`` message ("ready"/"blocked").
    audio_output: str | None = None

    def as_dict(self, now_us: int) -> dict[str, object]:
        c = self.outbox.counters
        return {
            "endpoint_id": self.endpoint_id,
            "session_id": self.session_id,
            "zones": list(self.zones),
            "format": self.format.key,
            "remote": self.remote,
            "connected_s": round((now_us - self.connected_at_us) / 1e6, 3),
            "rtt_ms": None if self.rtt_us is None else round(self.rtt_us / 1000, 2),
            "audio_output": self.audio_output,
            "queued_audio_ms": self.outbox.queued_audio_us // 1000,
            "audio_sent": c.audio_sent,
            "dropped_stale": c.dropped_stale,
            "dropped_overflow": c.dropped_overflow,
            "last_heard_s": None
            if self.last_heard_us is None
            else round((now_us - self.last_heard_us) / 1e6, 1),
        }


class Hub:
    """Registry of joined endpoints by id and by zone. Pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self._by_id: dict[str, EndpointLink] = {}
        self._by_zone: dict[str, dict[str, EndpointLink]] = {}

    def register(self, link: EndpointLink) -> EndpointLink | None:
        """Add ``link``; returns the older link of the same endpoint id, which the caller closes."""
        old = self._by_id.get(link.endpoint_id)
        if old is not None:
            self.unregister(old)
        self._by_id[link.endpoint_id] = link
        for zone in link.zones:
            self._by_zone.setdefault(zone, {})[link.endpoint_id] = link
        return old

    def unregister(self, link: EndpointLink) -> bool:
        """Remove ``link`` if it is the current one for its id; False if already replaced."""
        if self._by_id.get(link.endpoint_id) is not link:
            return False
        del self._by_id[link.endpoint_id]
        for zone in link.zones:
            members = self._by_zone.get(zone)
            if members is not None:
                members.pop(link.endpoint_id, None)
                if not members:
                    del self._by_zone[zone]
        return True

    def get(self, endpoint_id: str) -> EndpointLink | None:
        return self._by_id.get(endpoint_id)

    def is_current(self, link: EndpointLink) -> bool:
        return self._by_id.get(link.endpoint_id) is link

    def links(self) -> list[EndpointLink]:
        return list(self._by_id.values())

    def audience(self, zones: Iterable[str]) -> list[EndpointLink]:
        """Every endpoint in any of ``zones``, once each, in a stable order."""
        seen: dict[str, EndpointLink] = {}
        for zone in zones:
            for eid, link in self._by_zone.get(zone, {}).items():
                seen.setdefault(eid, link)
        return list(seen.values())

    def zone_members(self, zone: str) -> list[str]:
        return sorted(self._by_zone.get(zone, {}))
