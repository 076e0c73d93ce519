"""Endpoint supervision: who is up, who is faulty, and the events an operator sees.

EN 54-16 asks a voice-alarm system to report a fault within 100 s; we report
one as soon as an endpoint has been silent for the heartbeat timeout (default
10 s): either its connection closed for silence, or it dropped without saying
bye and did not come back within that time. A clean ``bye`` is "offline", not
a fault. Pure bookkeeping: the time is passed in; the server calls ``joined``
and ``left`` and ticks it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class EndpointStatus(enum.StrEnum):
    NEVER_CONNECTED = "never_connected"
    OK = "ok"
    OFFLINE = "offline"  # said bye
    FAULTY = "faulty"


@dataclass(frozen=True, slots=True)
class SupervisionEvent:
    kind: str  # endpoint_fault | endpoint_recovered | endpoint_offline | endpoint_joined
    endpoint_id: str
    at_us: int
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "endpoint_id": self.endpoint_id,
            "at_us": self.at_us,
            "detail": self.detail,
        }


@dataclass
class _State:
    status: EndpointStatus = EndpointStatus.NEVER_CONNECTED
    since_us: int | None = None
    detail: str | None = None
    #: When a dropped link becomes a fault unless the endpoint is back by then.
    fault_at_us: int | None = None


@dataclass
class Supervisor:
    """Status per configured endpoint, and a bounded log of events (oldest dropped)."""

    timeout_us: int
    endpoints: list[str]
    max_events: int = 1000
    #: Where each event goes as well (the service's event log, which stamps wall
    #: time and keeps it in the store).
    on_event: Callable[[SupervisionEvent], None] | None = None
    _states: dict[str, _State] = field(default_factory=dict)
    _events: deque[SupervisionEvent] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._states = {eid: _State() for eid in self.endpoints}
        self._events = deque(maxlen=self.max_events)

    def joined(self, endpoint_id: str, now_us: int) -> list[SupervisionEvent]:
        st = self._states.setdefault(endpoint_id, _State())
        was = st.status
        st.status, st.since_us, st.detail, st.fault_at_us = EndpointStatus.OK, now_us, None, None
        kind = "endpoint_recovered" if was is EndpointStatus.FAULTY else "endpoint_joined"
        return self._emit(kind, endpoint_id, now_us, f"was {was.value}")

    def left(
        self, endpoint_id: str, now_us: int, *, clean: bool, silent: bool, detail: str
    ) -> list[SupervisionEvent]:
        """A link ended. ``clean``: the endpoint said bye; ``silent``: closed for silence."""
        st = self._states.setdefault(endpoint_id, _State())
        if clean:
            st.status, st.since_us, st.detail, st.fault_at_us = (
                EndpointStatus.OFFLINE,
                now_us,
                detail,
                None,
            )
            return self._emit("endpoint_offline", endpoint_id, now_us, detail)
        if silent:
            return self._fault(endpoint_id, now_us, detail)
        # Dropped: it may be reconnecting. A fault if it is not back in time.
        st.fault_at_us = now_us + self.timeout_us
        st.detail = detail
        return []

    def tick(self, now_us: int) -> list[SupervisionEvent]:
        out: list[SupervisionEvent] = []
        for eid, st in self._states.items():
            if st.fault_at_us is not None and now_us >= st.fault_at_us:
                out += self._fault(eid, now_us, f"not back after the link dropped ({st.detail})")
        return out

    def next_deadline_us(self) -> int | None:
        pending = [st.fault_at_us for st in self._states.values() if st.fault_at_us is not None]
        return min(pending) if pending else None

    def statuses(self) -> dict[str, EndpointStatus]:
        """Every supervised endpoint's status (for readiness and metrics)."""
        return {eid: st.status for eid, st in self._states.items()}

    def status(self, endpoint_id: str) -> dict[str, object]:
        st = self._states.get(endpoint_id, _State())
        return {"status": st.status.value, "since_us": st.since_us, "detail": st.detail}

    def events(self, limit: int = 100) -> list[SupervisionEvent]:
        return list(self._events)[-limit:]

    def _fault(self, endpoint_id: str, now_us: int, detail: str) -> list[SupervisionEvent]:
        st = self._states.setdefault(endpoint_id, _State())
        st.fault_at_us = None
        if st.status is EndpointStatus.FAULTY:
            return []
        st.status, st.since_us, st.detail = EndpointStatus.FAULTY, now_us, detail
        return self._emit("endpoint_fault", endpoint_id, now_us, detail)

    def _emit(
        self, kind: str, endpoint_id: str, now_us: int, detail: str
    ) -> list[SupervisionEvent]:
        event = SupervisionEvent(kind, endpoint_id, now_us, detail)
        self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return [event]
