"""Readiness checks and Prometheus metrics: what a monitor needs to know, read from live state.

Readiness (``GET /readyz``) is a list of named checks; each returns the reasons
the service is not ready (an empty list: fine). A check is one line to add::

    readiness.add("store", lambda: store_reasons(store))

Metrics (``GET /metrics``) live in a per-service ``CollectorRegistry`` (tests
run many services in one process). What exists as live state (endpoints,
queues, supervision, zones) is read at scrape time by :class:`LiveCollector`;
only what happened and is gone (final states, first-audio times, failures,
dropped chunks, store write errors) is counted as it happens, by
:class:`ServiceMetrics` (the announcer's observer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broadcaster.announcements import Announcement
from broadcaster.model import priority_band

if TYPE_CHECKING:
    from broadcaster.announcer import Announcer
    from broadcaster.config import Config
    from broadcaster.edge import EdgeGuard
    from broadcaster.events import EventLog
    from broadcaster.streaming.hub import Hub
    from broadcaster.streaming.supervision import Supervisor

# --- readiness ----------------------------------------------------------------------------

Check = Callable[[], list[str]]


@dataclass
class Readiness:
    """Named checks; the service is ready when none gives a reason."""

    checks: list[tuple[str, Check]] = field(default_factory=list)

    def add(self, name: str, check: Check) -> None:
        self.checks.append((name, check))

    def reasons(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for name, check in self.checks:
            try:
                found = check()
            except Exception as exc:  # a broken check is itself a reason, never a 500
                found = [f"check failed: {exc!r}"]
            out += [{"check": name, "reason": reason} for reason in found]
        return out


def zones_without_endpoint(
    zone_ids: Iterable[str], members: Callable[[str], list[str]]
) -> list[str]:
    """A zone nobody would hear: no endpoint connected there."""
    return [f"zone {z} has no endpoint connected" for z in zone_ids if not members(z)]


def faulty_endpoints(statuses: Mapping[str, str]) -> list[str]:
    """Endpoints supervision calls faulty (silent past the heartbeat timeout)."""
    return [f"endpoint {eid} is faulty" for eid, st in sorted(statuses.items()) if st == "faulty"]


def speech_reasons(
    engine: str,
    connected: bool | None,
    fallback_reason: str | None,
    health: object | None = None,
) -> list[str]:
    """The primary speech engine unreachable (and why, from its client's ``health``:
    a refused key, a WebSocket that cannot work, the last error and since when), or
    the last announcement spoken by the fallback."""
    out: list[str] = []
    authenticated = getattr(health, "authenticated", None)
    last_error = getattr(health, "last_error", None)
    at = getattr(health, "last_error_at", None)
    since = f" since {at.isoformat()}" if at is not None else ""
    ws_disabled = getattr(health, "ws_disabled", None)
    if authenticated is False:
        out.append(f"{engine}: {last_error or 'authentication failed'}{since}")
    elif ws_disabled:
        out.append(f"{engine}: {ws_disabled}; tasks go over REST{since}")
    elif connected is False:
        why = f": {last_error}{since}" if last_error else ""
        out.append(f"speech engine {engine} is not connected{why}")
    if fallback_reason:
        out.append(f"speech on the fallback engine: {fallback_reason}")
    return out


def store_reasons(store: object) -> list[str]:
    """The store's own health, if it exposes one (``store.health.ok`` / ``.reason``)."""
    health = getattr(store, "health", None)
    if health is None or getattr(health, "ok", True):
        return []
    return [f"store failing: {getattr(health, 'reason', None) or 'unknown reason'}"]


def service_readiness(
    *,
    config: Config,
    hub: Hub,
    announcer: Announcer,
    supervisor: Supervisor | None,
    store: object | None,
) -> Readiness:
    ready = Readiness()
    ready.add("store", lambda: store_reasons(store) if store is not None else [])
    ready.add("zones", lambda: zones_without_endpoint(config.zone_ids, hub.zone_members))
    if supervisor is not None:
        sup = supervisor
        ready.add(
            "endpoints", lambda: faulty_endpoints({k: v.value for k, v in sup.statuses().items()})
        )
    ready.add(
        "speech",
        lambda: speech_reasons(
            announcer.engine.name,
            getattr(getattr(announcer.engine, "client", None), "connected", None),
            announcer.speech_fallback_reason,
            getattr(getattr(announcer.engine, "client", None), "health", None),
        ),
    )
    return ready


# --- metrics --------------------------------------------------------------------------------

_FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0)


class ServiceMetrics:
    """A service's registry, and the counters of what happened (the announcer's observer)."""

    def __init__(self, emergency_priority: int = 224) -> None:
        self.registry = CollectorRegistry()
        self.emergency_priority = emergency_priority
        r = self.registry
        self.announcements = Counter(
            "broadcaster_announcements",
            "Announcements that reached a final state, by state and priority band",
            ["state", "band"],
            registry=r,
        )
        self.first_audio_seconds = Histogram(
            "broadcaster_speech_first_audio_seconds",
            "From asking for speech to its first audio (announcements not made ahead)",
            ["engine"],
            buckets=_FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.speech_failures = Counter(
            "broadcaster_speech_failures",
            "Speech engine failures (a primary that fell back, or an engine that failed)",
            ["engine"],
            registry=r,
        )
        self.cache_hits = Counter(
            "broadcaster_speech_cache_hits", "Segments served from the segment cache", registry=r
        )
        self.speech_requests = Counter(
            "broadcaster_speech_requests", "Segments asked of a speech engine", registry=r
        )
        self.chunks_dropped = Counter(
            "broadcaster_chunks_dropped",
            "Audio chunks not sent to an endpoint: late (play time passed) or overflow",
            ["reason"],
            registry=r,
        )
        self.zone_misses = Counter(
            "broadcaster_zone_not_heard",
            "Played announcements nobody heard in a zone, by zone",
            ["zone"],
            registry=r,
        )
        #: Other code (the store's writer) increments this: ``metrics.store_write_errors.inc()``.
        self.store_write_errors = Counter(
            "broadcaster_store_write_errors", "Writes to the store that failed", registry=r
        )

    def band(self, priority: int) -> str:
        if priority >= self.emergency_priority:
            return "emergency"
        name = priority_band(priority)
        return "operational" if name == "emergency" else name

    # --- the announcer's observer ---------------------------------------------------------

    def announcement_final(self, ann: Announcement) -> None:
        self.announcements.labels(ann.state.value, self.band(ann.spec.priority)).inc()
        if ann.cache_hits:
            self.cache_hits.inc(ann.cache_hits)
        if ann.speech_requests:
            self.speech_requests.inc(ann.speech_requests)
        late = sum(d.dropped_stale for d in ann.deliveries.values())
        overflow = sum(d.dropped_overflow for d in ann.deliveries.values())
        if late:
            self.chunks_dropped.labels("late").inc(late)
        if overflow:
            self.chunks_dropped.labels("overflow").inc(overflow)
        for zone, cov in ann.coverage.items():
            if cov.get("heard") is False:
                self.zone_misses.labels(zone).inc()

    def first_audio(self, engine: str, seconds: float) -> None:
        self.first_audio_seconds.labels(engine).observe(seconds)

    def speech_failed(self, engine: str) -> None:
        self.speech_failures.labels(engine).inc()

    def attach(self, collector: Collector) -> None:
        self.registry.register(collector)


class LiveCollector(Collector):
    """Gauges read from the running service at scrape time."""

    def __init__(
        self,
        *,
        config: Config,
        hub: Hub,
        announcer: Announcer,
        supervisor: Supervisor | None,
        events: EventLog | None,
        now_us: Callable[[], int],
        edges: Callable[[], Mapping[str, EdgeGuard]] | None = None,
    ) -> None:
        self.edges = edges
        self.config = config
        self.hub = hub
        self.announcer = announcer
        self.supervisor = supervisor
        self.events = events
        self.now_us = now_us

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on live state; nothing to check at register time

    def collect(self) -> Iterator[Metric]:
        cfg, hub = self.config, self.hub
        connected = GaugeMetricFamily(
            "broadcaster_endpoints_connected", "Endpoints connected, per zone", labels=["zone"]
        )
        faulty = GaugeMetricFamily(
            "broadcaster_endpoints_faulty",
            "Configured endpoints supervision calls faulty, per zone",
            labels=["zone"],
        )
        statuses: dict[str, Any] = (
            {k: v.value for k, v in self.supervisor.statuses().items()} if self.supervisor else {}
        )
        uncovered = 0
        for zone in cfg.zone_ids:
            members = hub.zone_members(zone)
            connected.add_metric([zone], len(members))
            bad = [
                ep.id
                for ep in cfg.endpoints
                if zone in ep.zones and statuses.get(ep.id) == "faulty"
            ]
            faulty.add_metric([zone], len(bad))
            uncovered += not members
        yield connected
        yield faulty
        yield GaugeMetricFamily(
            "broadcaster_zones_uncovered", "Zones with no endpoint connected", value=uncovered
        )
        depth = GaugeMetricFamily(
            "broadcaster_queue_depth",
            "Announcements waiting (admitted, not playing), per zone and priority band",
            labels=["zone", "band"],
        )
        for (zone, band), n in sorted(self.announcer.admission.depths().items()):
            depth.add_metric([zone, band], n)
        yield depth
        yield GaugeMetricFamily(
            "broadcaster_announcements_playing",
            "Announcements playing now",
            value=len(self.announcer.playing_ids()),
        )
        rtt = GaugeMetricFamily(
            "broadcaster_endpoint_rtt_seconds",
            "Latest heartbeat round trip per connected endpoint (its clock estimate's error bound)",
            labels=["endpoint"],
        )
        late = CounterMetricFamily(
            "broadcaster_endpoint_chunks_dropped",
            "Audio chunks dropped for a connected endpoint on its current connection",
            labels=["endpoint", "reason"],
        )
        for link in hub.links():
            if link.rtt_us is not None:
                rtt.add_metric([link.endpoint_id], link.rtt_us / 1e6)
            c = link.outbox.counters
            late.add_metric([link.endpoint_id, "late"], c.dropped_stale)
            late.add_metric([link.endpoint_id, "overflow"], c.dropped_overflow)
        yield rtt
        yield late
        skew = GaugeMetricFamily(
            "broadcaster_endpoint_playback_skew_seconds",
            "Latest playback start as the endpoint reports it (its estimate of the server "
            "clock) minus the scheduled start: the endpoint's clock offset error",
            labels=["endpoint"],
        )
        for eid, skew_us in sorted(self.announcer.playback_skew_us.items()):
            skew.add_metric([eid], skew_us / 1e6)
        yield skew
        if self.edges is not None:
            yield from self._edge_metrics(self.edges())
        if self.events is not None:
            ev = CounterMetricFamily(
                "broadcaster_events",
                "Events raised, by kind and severity",
                labels=["kind", "severity"],
            )
            for (kind, severity), n in sorted(self.events.counts.items()):
                ev.add_metric([kind, severity], n)
            yield ev
            yield CounterMetricFamily(
                "broadcaster_event_write_errors",
                "Failed writes of events to the store",
                value=self.events.write_errors,
            )

    @staticmethod
    def _edge_metrics(guards: Mapping[str, EdgeGuard]) -> Iterator[Metric]:
        """Connections at the network edge, per listener (http, websocket)."""
        open_ = GaugeMetricFamily(
            "broadcaster_connections_open", "Connections open, per listener", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "broadcaster_connections_refused",
            "Connections refused at accept, per listener and limit",
            labels=["listener", "limit"],
        )
        timeouts = CounterMetricFamily(
            "broadcaster_header_timeouts",
            "Connections closed for not completing their headers (or TLS handshake) in time",
            labels=["listener"],
        )
        for name, guard in sorted(guards.items()):
            c = guard.gate.counters
            open_.add_metric([name], c.open)
            refused.add_metric([name, "total"], c.refused_total_limit)
            refused.add_metric([name, "per_address"], c.refused_per_address_limit)
            timeouts.add_metric([name], guard.header_timeouts)
        yield open_
        yield refused
        yield timeouts
