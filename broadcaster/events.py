"""The event log: faults and recoveries an operator must see, in wall time, kept in the store.

One place for every kind of event: endpoint supervision (faulty, recovered,
offline, joined), coverage faults (an announcement nobody heard in a zone),
refused emergencies, dropped announcements, and whatever other parts report
(the store failing, speech on its fallback engine). Anything that has the
service's :class:`EventLog` raises an event with one call::

    events.emit("store_fault", "error", "store", "disk full: writes are held in memory")

An event carries its wall time (UTC, ISO 8601 in the API) and the server's
monotonic time. It is logged at once (at its severity) and written to the
store's ``events`` table by the log's writer task, so a restart does not erase
when a speaker went faulty. ``GET /v1/events?since=&limit=`` reads the store
(plus the few not written yet).

Bounds: at most ``max_pending`` events wait for the store; past that the
oldest waiting one is dropped (and counted in ``dropped``). A failed write is
retried after ``retry_us``. The store keeps events for ``store.keep_days`` and at
most :data:`KEEP_EVENTS` of them (pruned at start).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from broadcaster.clock import Clock
from broadcaster.store import AsyncStore, EventRow
from broadcaster.streaming.supervision import SupervisionEvent

log = logging.getLogger(__name__)

SEVERITIES: dict[str, int] = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: The store keeps at most this many events (the newest), pruned at start.
KEEP_EVENTS = 100_000

_SUPERVISION_SEVERITY = {
    "endpoint_fault": "error",
    "endpoint_offline": "warning",
    "endpoint_recovered": "info",
    "endpoint_joined": "info",
}


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: datetime
    at_us: int
    kind: str
    severity: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "at": self.at.isoformat(),
            "at_us": self.at_us,
            "kind": self.kind,
            "severity": self.severity,
            "subject": self.subject,
            "detail": self.detail,
        }
        if self.kind.startswith("endpoint_"):
            out["endpoint_id"] = self.subject
        return out

    def row(self) -> EventRow:
        return EventRow(
            self.id, self.at, self.at_us, self.kind, self.severity, self.subject, self.detail
        )

    @classmethod
    def from_row(cls, row: EventRow) -> Event:
        return cls(row.id, row.at, row.at_us, row.kind, row.severity, row.subject, row.detail)


class EventLog:
    """Events of one service: emitted synchronously, written to the store by :meth:`run`."""

    def __init__(
        self,
        clock: Clock,
        store: AsyncStore | None = None,
        *,
        first_id: int = 1,
        max_pending: int = 10_000,
        recent: int = 1000,
        retry_us: int = 1_000_000,
    ) -> None:
        self.clock = clock
        self.store = store
        self._next_id = max(1, first_id)
        self._pending: deque[Event] = deque()
        self._max_pending = max_pending
        #: The latest events in memory (what GET /v1/events shows without a store).
        self._recent: deque[Event] = deque(maxlen=recent)
        self._wake = asyncio.Event()
        self._retry_us = retry_us
        #: Events lost because the store could not take them in time.
        self.dropped = 0
        #: Failed writes of events to the store.
        self.write_errors = 0
        #: Events emitted, by (kind, severity): for metrics.
        self.counts: dict[tuple[str, str], int] = {}

    @classmethod
    async def open(cls, clock: Clock, store: AsyncStore, *, keep_days: int) -> EventLog:
        """An event log over the store, after pruning it (older than ``keep_days``)."""
        pruned = await store.prune_events(clock.wall() - timedelta(days=keep_days), KEEP_EVENTS)
        if pruned:
            log.info("store: pruned %d event(s)", pruned)
        return cls(clock, store, first_id=await store.max_event_id() + 1)

    def emit(
        self,
        kind: str,
        severity: str,
        subject: str,
        detail: str,
        *,
        at_us: int | None = None,
        write_log: bool = True,
    ) -> Event:
        """Record an event now (wall time from the clock). Never blocks, never raises."""
        if severity not in SEVERITIES:
            severity = "error"
        event = Event(
            id=self._next_id,
            at=self.clock.wall(),
            at_us=self.clock.monotonic_us() if at_us is None else at_us,
            kind=kind,
            severity=severity,
            subject=subject,
            detail=detail,
        )
        self._next_id += 1
        self._recent.append(event)
        self.counts[(kind, severity)] = self.counts.get((kind, severity), 0) + 1
        if write_log:
            log.log(SEVERITIES[severity], "event %s %s: %s", kind, subject, detail)
        if self.store is not None:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(event)
            self._wake.set()
        return event

    def from_supervision(self, ev: SupervisionEvent) -> None:
        """The sink for :class:`~broadcaster.streaming.supervision.Supervisor` events.

        The endpoint server logs these itself, so they are only recorded here.
        """
        severity = _SUPERVISION_SEVERITY.get(ev.kind, "info")
        self.emit(ev.kind, severity, ev.endpoint_id, ev.detail, at_us=ev.at_us, write_log=False)

    async def list(self, since: datetime | None = None, limit: int = 100) -> list[Event]:
        """Oldest first: from ``since`` on, or the newest ``limit`` (store + not yet written)."""
        limit = max(1, limit)
        if self.store is None:
            items = [e for e in self._recent if since is None or e.at >= since]
        else:
            rows = await self.store.list_events(since=since, limit=limit)
            items = [Event.from_row(r) for r in rows]
            seen = {e.id for e in items}
            items += [
                e
                for e in list(self._pending)
                if e.id not in seen and (since is None or e.at >= since)
            ]
            items.sort(key=lambda e: e.id)
        return items[:limit] if since is not None else items[-limit:]

    async def run(self) -> None:
        """Write pending events to the store until cancelled (then :meth:`flush`)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self._write_pending():
                await self.clock.sleep_us(self._retry_us)
                self._wake.set()

    async def flush(self) -> None:
        """Write what is pending (at shutdown); failures are logged, not raised."""
        await self._write_pending()

    async def _write_pending(self) -> bool:
        if self.store is None or not self._pending:
            return True
        batch = list(self._pending)
        try:
            await self.store.insert_events([e.row() for e in batch])
        except Exception as exc:
            self.write_errors += 1
            log.error("could not store %d event(s): %s", len(batch), exc)
            return False
        written = {e.id for e in batch}
        while self._pending and self._pending[0].id in written:
            self._pending.popleft()
        return True
