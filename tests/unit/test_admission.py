"""Admission per zone and band, coverage, readiness, events and metrics: pure, FakeClock only."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.announcements import Admission, Registry, coverage_outcome, zone_coverage
from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings, QueueFull
from broadcaster.clock import FakeClock
from broadcaster.events import EventLog
from broadcaster.model import AnnouncementSpec, AnnouncementState, StreamFormat
from broadcaster.monitoring import (
    Readiness,
    ServiceMetrics,
    faulty_endpoints,
    speech_reasons,
    store_reasons,
    zones_without_endpoint,
)
from broadcaster.store import AsyncStore
from broadcaster.streaming.hub import DeliveryStats, EndpointLink, Hub, Outbox
from broadcaster.streaming.supervision import Supervisor

from .test_announcer import FakeEngine, InlineExecutor

# --- Admission (pure) --------------------------------------------------------------------


def admission(band: int = 2, emergency: int = 3) -> Admission:
    return Admission(band_limit=band, emergency_limit=emergency, emergency_priority=224)


def test_a_full_routine_band_never_refuses_another_band_or_zone():
    a = admission()
    assert a.admit("r1", ["hall"], 100).admitted
    assert a.admit("r2", ["hall"], 100).admitted
    refused = a.admit("r3", ["hall"], 100)
    assert not refused.admitted
    assert refused.reason is not None
    assert "zone hall" in refused.reason and "routine" in refused.reason
    assert "limit 2" in refused.reason
    assert "r3" not in a
    # other bands in the same zone, and the same band in another zone, are unaffected
    assert a.admit("op", ["hall"], 150).admitted
    assert a.admit("bg", ["hall"], 10).admitted
    assert a.admit("em", ["hall"], 255).admitted
    assert a.admit("r-gate", ["gate"], 100).admitted
    assert a.depths()[("hall", "routine")] == 2
    assert a.band_depths() == {"routine": 3, "operational": 1, "background": 1, "emergency": 1}


def test_an_emergency_is_bounded_on_its_own_and_pushes_out_a_lower_emergency():
    a = admission(band=1, emergency=3)
    for i in range(3):
        assert a.admit(f"e{i}", ["hall"], 224).admitted
    assert not a.admit("same", ["hall"], 224).admitted  # equal priority: refused
    v = a.admit("top", ["hall"], 255)
    assert v.admitted
    assert [w.id for w in v.push_out] == ["e2"]  # lowest priority, youngest among equals
    assert "e2" not in a and "top" in a and len(a) == 3


def test_push_out_takes_the_lowest_priority_then_the_youngest():
    a = admission(band=3)
    a.admit("old-40", ["hall"], 40)
    a.admit("young-40", ["hall"], 40)
    a.admit("r-90", ["hall"], 90)
    v = a.admit("r-100", ["hall"], 100)
    assert [w.id for w in v.push_out] == ["young-40"]
    v = a.admit("r-120", ["hall"], 120)
    assert [w.id for w in v.push_out] == ["old-40"]
    v = a.admit("r-95", ["hall"], 95)
    assert [w.id for w in v.push_out] == ["r-90"]
    assert not a.admit("r-95b", ["hall"], 95).admitted  # none lower than 95 left


def test_one_push_out_frees_every_zone_of_the_victim_and_refusal_changes_nothing():
    a = admission(band=1)
    a.admit("both", ["hall", "gate"], 50)
    v = a.admit("x", ["hall", "gate"], 100)
    assert [w.id for w in v.push_out] == ["both"]  # one victim frees both zones
    assert a.depths() == {("hall", "routine"): 1, ("gate", "routine"): 1}
    a.admit("g", ["platform"], 60)
    refused = a.admit("y", ["platform", "hall"], 100)  # hall has only an equal priority
    assert not refused.admitted
    assert "g" in a and "x" in a  # a refused arrival pushes nobody out


def test_forced_admission_and_restore():
    a = admission(band=1)
    a.admit("a", ["hall"], 100)
    assert a.admit("replay", ["hall"], 100, force=True).admitted  # a stacked replay
    assert len(a) == 2
    v = a.admit("hi", ["hall"], 120)
    assert {w.id for w in v.push_out} == {"a"}  # a replay counts as the oldest of equals
    a.remove("hi")
    for entry in v.push_out:
        a.put(entry)  # the arrival was not stored after all: the victim keeps its place
    assert "a" in a and "hi" not in a and len(a) == 2


# --- coverage (pure) ----------------------------------------------------------------------


def delivery(eid: str, state: str) -> DeliveryStats:
    d = DeliveryStats(eid, "opus/48000")
    d.state = state
    return d


def test_coverage_per_zone_from_receipts():
    deliveries = {
        "a": delivery("a", "finished"),
        "b": delivery("b", "started"),
        "c": delivery("c", "sent"),
        "d": delivery("d", "missed"),
    }
    zones_of = {"a": ("hall", "gate"), "b": ("hall",), "c": ("kiosk",), "d": ("lift",)}
    cov = zone_coverage(["hall", "gate", "kiosk", "lift", "empty"], deliveries, zones_of)
    assert cov["hall"] == {
        "endpoints": ["a", "b"],
        "started": 2,
        "finished": 1,
        "sent_unconfirmed": 0,
        "heard": True,
    }
    assert cov["gate"]["heard"] is True and cov["gate"]["endpoints"] == ["a"]
    assert cov["kiosk"]["heard"] == "unconfirmed"
    assert cov["lift"]["heard"] is False and cov["lift"]["endpoints"] == ["d"]
    assert cov["empty"] == {
        "endpoints": [],
        "started": 0,
        "finished": 0,
        "sent_unconfirmed": 0,
        "heard": False,
    }
    state, reason = coverage_outcome(cov)
    assert state is AnnouncementState.PARTIAL
    assert reason is not None
    assert "lift (every endpoint missed it)" in reason and "empty (no endpoint)" in reason


def test_coverage_outcomes():
    heard = {"endpoints": ["a"], "heard": True}
    unconfirmed = {"endpoints": ["a"], "heard": "unconfirmed"}
    nobody = {"endpoints": [], "heard": False}
    assert coverage_outcome({"x": heard, "y": heard}) == (AnnouncementState.FINISHED, None)
    state, reason = coverage_outcome({"x": heard, "y": unconfirmed})
    assert state is AnnouncementState.UNCONFIRMED and reason is not None and "y" in reason
    assert coverage_outcome({"x": unconfirmed, "y": nobody})[0] is AnnouncementState.PARTIAL
    assert coverage_outcome({"x": nobody})[0] is AnnouncementState.FAILED


# --- the announcer applies admission and coverage (FakeClock) ------------------------------


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []

    def emit(self, kind: str, severity: str, subject: str, detail: str) -> None:
        self.items.append((kind, severity, subject, detail))


def make_announcer(
    clock: FakeClock, zones_of_links: dict[str, tuple[str, ...]], *, limit: int = 2
) -> tuple[Announcer, Events, ServiceMetrics]:
    hub = Hub()
    for eid, zones in zones_of_links.items():
        box = Outbox(max_audio_us=10_000_000)
        hub.register(
            EndpointLink(eid, f"s-{eid}", zones, StreamFormat.parse("pcm_s16le/16000"), box, 0)
        )
    events = Events()
    metrics = ServiceMetrics()
    announcer = Announcer(
        engine=FakeEngine(clock, seconds=1),
        hub=hub,
        clock=clock,
        registry=Registry(100),
        settings=PlayoutSettings(
            lead_us=300_000,
            opus_bitrate_bps=32000,
            first_segment_max_chars=100,
            queue_limit=limit,
            emergency_queue_limit=limit + 1,
            audio=AudioSettings(normalize=False),  # loudness runs in a real thread
        ),
        transcode_executor=InlineExecutor(),
        events=events,
        observer=metrics,
    )
    return announcer, events, metrics


def spec(zones: tuple[str, ...] = ("hall",), priority: int = 100, text: str = "Hello.") -> Any:
    return AnnouncementSpec(
        text=text, zones=zones, voice="ryan", language="English", speed=1.0, priority=priority
    )


async def test_routine_load_never_refuses_an_emergency_and_refusals_are_records():
    clock = FakeClock()
    announcer, events, metrics = make_announcer(clock, {"ep": ("hall",)}, limit=2)
    task = asyncio.create_task(announcer.run())
    playing = announcer.submit(spec())
    await clock.advance_us(1000)  # it starts: no longer waiting
    waiting = [announcer.submit(spec(priority=40)), announcer.submit(spec(priority=50))]
    with pytest.raises(QueueFull) as refused:
        announcer.submit(spec(priority=40))
    record = refused.value.record
    assert record is not None and record.state is AnnouncementState.REFUSED
    assert record.reason is not None and "zone hall" in record.reason
    assert announcer.registry.get(record.id) is record  # kept, listed in history
    # a higher routine pushes out the lowest waiting one, which ends with a reason
    pusher = announcer.submit(spec(priority=120))
    assert waiting[0].state is AnnouncementState.DROPPED
    assert waiting[0].reason is not None and pusher.id in waiting[0].reason
    assert ("announcement_dropped", "warning", waiting[0].id) == events.items[-1][:3]
    # the emergency is admitted whatever the routine load, and preempts
    emergency = announcer.submit(spec(priority=255))
    await clock.run_until_idle(limit_us=60_000_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert emergency.state is AnnouncementState.UNCONFIRMED  # fake links send no receipts
    assert emergency.coverage["hall"]["heard"] == "unconfirmed"
    assert playing.preemptions == 1
    states = {
        (s.labels["state"], s.labels["band"]): s.value
        for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if fam.name == "broadcaster_announcements"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert states[("refused", "routine")] == 1
    assert states[("dropped", "routine")] == 1
    assert states[("unconfirmed", "emergency")] == 1


async def test_an_emergency_that_missed_a_zone_is_partial_with_an_error_event():
    clock = FakeClock()
    announcer, events, _ = make_announcer(clock, {"a": ("hall",), "b": ("gate",)})
    task = asyncio.create_task(announcer.run())
    ann = announcer.submit(spec(zones=("hall", "gate", "empty"), priority=240))
    await clock.advance_us(1000)
    # endpoint "a" reports its output started: hall is verified, gate only sent
    announcer.on_playback("a", _playback(ann.id, ann.number, "started"))
    await clock.run_until_idle(limit_us=60_000_000)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ann.state is AnnouncementState.PARTIAL
    assert ann.reason == "not heard in zone(s) empty (no endpoint)"
    assert ann.coverage["hall"]["heard"] is True and ann.coverage["hall"]["started"] == 1
    assert ann.coverage["gate"]["heard"] == "unconfirmed"
    assert ann.coverage["empty"] == {
        "endpoints": [],
        "started": 0,
        "finished": 0,
        "sent_unconfirmed": 0,
        "heard": False,
    }
    [fault] = [e for e in events.items if e[0] == "coverage_fault"]
    assert fault[1] == "error" and fault[2] == ann.id and "empty" in fault[3]
    assert ann.as_dict()["coverage"] == ann.coverage


async def test_a_late_playback_receipt_turns_unconfirmed_into_finished():
    clock = FakeClock()
    announcer, events, _ = make_announcer(clock, {"a": ("hall",)})
    task = asyncio.create_task(announcer.run())
    ann = announcer.submit(spec())
    await clock.run_until_idle(limit_us=60_000_000)
    assert ann.state is AnnouncementState.UNCONFIRMED
    assert events.items == []  # not an emergency: no event for an unconfirmed routine
    announcer.on_playback("a", _playback(ann.id, ann.number, "started"))
    assert ann.state is AnnouncementState.FINISHED and ann.reason is None
    assert ann.coverage["hall"]["heard"] is True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _playback(ann_id: str, stream: int, event: str) -> Any:
    from broadcaster.streaming import wire

    return wire.Playback(announcement_id=ann_id, stream=stream, event=event, at_us=1)  # type: ignore[arg-type]


# --- readiness (pure) ---------------------------------------------------------------------


def test_readiness_checks_give_reasons():
    members = {"hall": ["a"], "gate": []}
    assert zones_without_endpoint(["hall", "gate"], lambda z: members[z]) == [
        "zone gate has no endpoint connected"
    ]
    assert faulty_endpoints({"b": "faulty", "a": "ok", "c": "never_connected"}) == [
        "endpoint b is faulty"
    ]
    assert speech_reasons("runware", False, None) == ["speech engine runware is not connected"]
    assert speech_reasons("espeak", None, "runware produced no audio within 6 s") == [
        "speech on the fallback engine: runware produced no audio within 6 s"
    ]
    assert speech_reasons("espeak", None, None) == []
    # the store's health, duck-typed: absent or ok -> ready
    assert store_reasons(object()) == []
    assert store_reasons(SimpleNamespace(health=SimpleNamespace(ok=True, reason=None))) == []
    sick = SimpleNamespace(health=SimpleNamespace(ok=False, reason="disk full"))
    assert store_reasons(sick) == ["store failing: disk full"]

    ready = Readiness()
    assert ready.reasons() == []
    ready.add("zones", lambda: zones_without_endpoint(["gate"], lambda z: []))
    ready.add("broken", lambda: [][0])  # a failing check is a reason, not an exception
    got = ready.reasons()
    assert got[0] == {"check": "zones", "reason": "zone gate has no endpoint connected"}
    assert got[1]["check"] == "broken" and got[1]["reason"].startswith("check failed")


def test_supervisor_hands_its_events_to_a_sink():
    seen: list[str] = []
    sup = Supervisor(timeout_us=1000, endpoints=["a"], on_event=lambda e: seen.append(e.kind))
    sup.joined("a", 0)
    sup.left("a", 10, clean=False, silent=False, detail="gone")
    sup.tick(2000)
    assert seen == ["endpoint_joined", "endpoint_fault"]
    assert sup.statuses() == {"a": sup.statuses()["a"]} and sup.statuses()["a"].value == "faulty"


# --- the event log over the store ----------------------------------------------------------


async def test_events_are_kept_in_the_store_in_wall_time(tmp_path: Path):
    clock = FakeClock()
    store = await AsyncStore.open(tmp_path / "e.db", now=clock.wall())
    try:
        log_ = await EventLog.open(clock, store, keep_days=30)
        first = log_.emit("endpoint_fault", "error", "ep-1", "silent for 10 s")
        await clock.advance_us(2_000_000)
        log_.emit("coverage_fault", "error", "ann-1", "not heard in zone(s) empty")
        # listed before they are written (pending), then from the store
        assert [e.kind for e in await log_.list()] == ["endpoint_fault", "coverage_fault"]
        await log_.flush()
        rows = await store.list_events()
        assert [(r.id, r.kind, r.subject) for r in rows] == [
            (1, "endpoint_fault", "ep-1"),
            (2, "coverage_fault", "ann-1"),
        ]
        assert rows[0].at == first.at and rows[0].at.utcoffset() == timedelta(0)
        d = first.as_dict()
        assert d["at"] == first.at.isoformat() and str(d["at"]).endswith("+00:00")
        assert d["endpoint_id"] == "ep-1" and d["at_us"] == first.at_us
        since = await log_.list(since=rows[1].at)
        assert [e.id for e in since] == [2]
        assert [e.id for e in await log_.list(limit=1)] == [2]  # the newest
        # a new log (a restart) continues the ids and reads the old events
        again = await EventLog.open(clock, store, keep_days=30)
        assert again.emit("store_fault", "warning", "store", "slow").id == 3
        await again.flush()
        assert [e.kind for e in await again.list()] == [
            "endpoint_fault",
            "coverage_fault",
            "store_fault",
        ]
        # pruned by age at start
        await clock.advance_us(31 * 86400 * 1_000_000)
        pruned = await EventLog.open(clock, store, keep_days=30)
        assert await pruned.list() == []
    finally:
        await store.close()


async def test_event_writes_that_fail_are_retried_and_counted():
    clock = FakeClock()

    class FlakyStore:
        def __init__(self) -> None:
            self.fail = True
            self.rows: list[Any] = []

        async def insert_events(self, rows: list[Any]) -> None:
            if self.fail:
                raise OSError("disk full")
            self.rows += rows

    flaky = FlakyStore()
    log_ = EventLog(clock, flaky, max_pending=2)  # type: ignore[arg-type]
    task = asyncio.create_task(log_.run())
    log_.emit("a", "info", "x", "1")
    await clock.advance_us(10)
    assert log_.write_errors == 1 and flaky.rows == []
    log_.emit("b", "info", "x", "2")
    log_.emit("c", "bogus", "x", "3")  # an unknown severity is taken as an error
    assert log_.dropped == 1  # bounded: the oldest pending one gave way
    flaky.fail = False
    await clock.advance_us(1_000_000)  # the retry
    assert [r.kind for r in flaky.rows] == ["b", "c"] and flaky.rows[1].severity == "error"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_store_keeps_the_newest_events_only(tmp_path: Path):
    from broadcaster.store import EventRow, Store

    clock = FakeClock()
    store = Store.open(tmp_path / "p.db")
    try:
        now = clock.wall()
        store.insert_events(
            [
                EventRow(i, now + timedelta(seconds=i), i, "k", "info", "s", "d")
                for i in range(1, 11)
            ]
        )
        assert store.prune_events(now - timedelta(days=1), keep=4) == 6
        assert [r.id for r in store.list_events(limit=100)] == [7, 8, 9, 10]
        assert store.prune_events(now + timedelta(seconds=9), keep=100) == 2  # by age
        assert store.max_event_id() == 10
    finally:
        store.close()


async def test_a_receipt_within_one_playout_delay_after_the_end_counts():
    clock = FakeClock()
    announcer, _, metrics = make_announcer(clock, {"a": ("hall",)})
    task = asyncio.create_task(announcer.run())
    ann = announcer.submit(spec())
    await clock.advance_us(1000)
    while ann.deliveries["a"].state != "sent":  # all audio out, no receipt yet
        await clock.advance_us(10_000)
    assert not ann.state.is_final  # waiting up to a playout delay for receipts
    await clock.advance_us(100_000)
    announcer.on_playback("a", _playback(ann.id, ann.number, "started"))
    await clock.run_until_idle(limit_us=60_000_000)
    assert ann.state is AnnouncementState.FINISHED
    counted = metrics.registry.get_sample_value(
        "broadcaster_announcements_total", {"state": "finished", "band": "routine"}
    )
    assert counted == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
