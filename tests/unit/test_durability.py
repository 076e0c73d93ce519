"""Journal retry, durable playout marks, store faults and restart rules (FakeClock, fakes)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broadcaster.announcements import Announcement, Registry
from broadcaster.announcer import Announcer, AudioSettings, PlayoutSettings
from broadcaster.clock import FakeClock
from broadcaster.journal import recover, spec_to_json
from broadcaster.model import AnnouncementSpec, AnnouncementState, StreamFormat
from broadcaster.store import AnnouncementRow, StoreError, StoreHealth
from broadcaster.streaming.hub import EndpointLink, Hub

from .test_announcer import FakeEngine, InlineExecutor, RecordingOutbox, spec

EMERGENCY = 224


class FlakyJournal:
    """A journal whose writes fail while ``broken`` (like a full disk), recording the rest."""

    def __init__(self) -> None:
        self.broken = False
        self.gate: asyncio.Event | None = None  # when set: writes wait for it
        self.writes: list[tuple[str, str]] = []  # (id, state) that landed
        self.attempts = 0
        self.audio_sent: list[str] = []

    async def _write(self, ann: Announcement) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise StoreError("database test: disk is full")
        self.writes.append((ann.id, ann.state.value))

    async def record_new(self, ann: Announcement) -> None:
        await self._write(ann)

    async def record(self, ann: Announcement) -> None:
        await self._write(ann)

    async def mark_started(self, ann: Announcement) -> None:
        await self._write(ann)

    async def mark_audio_sent(self, ann: Announcement, at: datetime) -> None:
        if self.broken:
            raise StoreError("database test: disk is full")
        self.audio_sent.append(ann.id)


def setup(
    journal: FlakyJournal, seconds: float = 1.0
) -> tuple[FakeClock, Announcer, RecordingOutbox]:
    clock = FakeClock()
    hub = Hub()
    box = RecordingOutbox(clock)
    hub.register(EndpointLink("ep", "s", ("z",), StreamFormat.parse("pcm_s16le/16000"), box, 0))
    announcer = Announcer(
        engine=FakeEngine(clock, seconds=seconds),
        hub=hub,
        clock=clock,
        registry=Registry(100),
        settings=PlayoutSettings(
            lead_us=300_000,
            opus_bitrate_bps=32000,
            first_segment_max_chars=100,
            queue_limit=10,
            audio=AudioSettings(normalize=False),
            emergency_priority=EMERGENCY,
            journal_retry_max_us=2_000_000,
        ),
        transcode_executor=InlineExecutor(),
        journal=journal,
    )
    return clock, announcer, box


def with_priority(priority: int, text: str = "Hello there.") -> AnnouncementSpec:
    return dataclasses.replace(spec(text), priority=priority)


async def run_for(clock: FakeClock, announcer: Announcer, seconds: float) -> asyncio.Task[None]:
    task = asyncio.create_task(announcer.run())
    await clock.advance_us(int(seconds * 1e6))
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- accept while the store fails ---------------------------------------------------------


async def test_emergency_is_accepted_and_held_when_the_store_cannot_write_routine_is_not():
    journal = FlakyJournal()
    journal.broken = True
    clock, announcer, box = setup(journal)
    with pytest.raises(StoreError):
        await announcer.accept(with_priority(100))
    assert announcer.waiting == 0 and announcer.registry.recent(10) == []  # nothing half-taken
    ann = await announcer.accept(with_priority(255))
    assert ann.state is AnnouncementState.QUEUED
    assert any("store could not write" in w for w in ann.warnings)
    task = await run_for(clock, announcer, 5)
    assert (
        ann.state is AnnouncementState.UNCONFIRMED
    )  # played to the end (fake links send no receipt) although nothing was written
    assert any("could not record its start" in w for w in ann.warnings)
    assert box.audio  # it was heard
    assert journal.writes == []
    journal.broken = False  # the disk has room again: the held record lands
    await clock.advance_us(3_000_000)
    assert journal.writes[-1] == (ann.id, "unconfirmed")
    await stop(task)


# --- journal writes are retried until they land ---------------------------------------------


async def test_failed_state_writes_are_retried_with_bounded_backoff_until_they_land():
    journal = FlakyJournal()
    clock, announcer, _ = setup(journal, seconds=0.5)
    ann = await announcer.accept(with_priority(100))
    task = await run_for(clock, announcer, 0.01)
    journal.broken = True
    await clock.advance_us(5_000_000)  # it plays (start mark landed before), final write fails
    assert ann.state is AnnouncementState.UNCONFIRMED  # all sent; fake links send no receipt
    before = journal.attempts
    await clock.advance_us(20_000_000)
    # 100 ms doubling up to the 2 s cap: about 10 tries in 20 s, not thousands
    assert 5 <= journal.attempts - before <= 14
    assert announcer.journal_failures >= journal.attempts - before
    assert len(announcer._dirty) == 1  # one pending write per record
    journal.broken = False
    await clock.advance_us(2_100_000)
    assert journal.writes[-1] == (ann.id, "unconfirmed")
    assert announcer._dirty == {}
    await stop(task)


async def test_pending_writes_stay_one_per_record_whatever_the_changes():
    journal = FlakyJournal()
    journal.broken = True
    _clock, announcer, _ = setup(journal)
    anns = [announcer.submit(with_priority(100, f"Number {i}.")) for i in range(5)]
    for _ in range(3):
        for a in anns:
            announcer._notify(a)
    assert len(announcer._dirty) == 5


# --- the durable "playing" mark -------------------------------------------------------------


async def test_no_chunk_is_sent_before_the_playing_mark_has_landed():
    journal = FlakyJournal()
    clock, announcer, box = setup(journal)
    ann = await announcer.accept(with_priority(100))
    journal.gate = asyncio.Event()  # the store is slow
    task = await run_for(clock, announcer, 3)
    assert ann.state is AnnouncementState.PLAYING
    assert box.audio == []  # synthesis went on, but no audio went out
    journal.gate.set()
    journal.gate = None
    await clock.advance_us(5_000_000)
    assert ann.state is AnnouncementState.UNCONFIRMED  # all sent; fake links send no receipt
    assert box.audio
    assert (ann.id, "playing") in journal.writes
    assert journal.audio_sent == [ann.id]  # the "audio all sent" mark
    await stop(task)


async def test_routine_is_not_played_when_its_start_cannot_be_recorded():
    journal = FlakyJournal()
    clock, announcer, box = setup(journal)
    ann = await announcer.accept(with_priority(100))
    journal.broken = True
    task = await run_for(clock, announcer, 3)
    assert ann.state is AnnouncementState.FAILED
    assert ann.reason is not None and ann.reason.startswith("store unavailable")
    assert box.audio == []  # never heard, so never heard twice
    assert box.control[-1]["type"] == "announcement_cancelled"
    await stop(task)


# --- store health ---------------------------------------------------------------------------


async def test_store_health_logs_a_fault_once_and_its_recovery(caplog: pytest.LogCaptureFixture):
    clock = FakeClock()
    health = StoreHealth("db", clock.wall)
    seen: list[bool] = []
    health.listeners.append(lambda h: seen.append(h.ok))
    with caplog.at_level(logging.WARNING, logger="broadcaster.store"):
        health.succeeded()
        for _ in range(5):
            health.failed("disk I/O error")
        assert not health.ok and health.reason == "disk I/O error" and health.failures == 5
        assert health.since == clock.wall()
        health.succeeded()  # one write got through: not yet a recovery
        await clock.advance_us(2_000_000)
        health.failed("disk I/O error")  # it was luck (a nearly full disk)
        health.succeeded()
        await clock.advance_us(2_000_000)
        health.succeeded()
        assert not health.ok and health.faults == 1
        await clock.advance_us(1_100_000)
        health.succeeded()  # writes have gone through for 3 s: recovered
        assert health.ok
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "store fault" in errors[0].getMessage()
    assert any("store recovered" in r.getMessage() for r in caplog.records)
    assert seen == [False, True]
    assert health.as_dict()["ok"] is True and health.faults == 1


# --- restart rules --------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class FakeStore:
    def __init__(self, rows: list[AnnouncementRow]) -> None:
        self.rows = {r.id: r for r in rows}
        self.updates: dict[str, dict[str, Any]] = {}

    async def unfinished_announcements(self) -> list[AnnouncementRow]:
        return list(self.rows.values())

    async def update_announcement(self, id: str, **fields: Any) -> bool:
        self.updates[id] = fields
        return True


def row(
    id: str,
    state: str = "queued",
    priority: int = 100,
    *,
    fire_at: datetime | None = None,
    grace_s: float | None = None,
    expires_at: datetime | None = None,
    audio_sent_at: datetime | None = None,
) -> AnnouncementRow:
    return AnnouncementRow(
        id=id,
        number=1,
        spec=spec_to_json(with_priority(priority)),
        state=state,
        created_at=NOW - timedelta(minutes=5),
        schedule_id="s" if fire_at else None,
        fire_at=fire_at,
        due_at=fire_at,
        expires_at=expires_at,
        started_at=NOW - timedelta(seconds=3) if state == "playing" else None,
        grace_until=fire_at + timedelta(seconds=grace_s)
        if fire_at and grace_s is not None
        else None,
        audio_sent_at=audio_sent_at,
    )


async def test_restart_rules():
    store = FakeStore(
        [
            # a firing prepared ahead, found 45 s late with a 5 s grace
            row("stale", fire_at=NOW - timedelta(seconds=45), grace_s=5),
            row("in-grace", fire_at=NOW - timedelta(seconds=3), grace_s=5),
            row("future", fire_at=NOW + timedelta(seconds=30), grace_s=5),
            # an emergency firing past its grace but not expired plays late
            row(
                "emergency-valid",
                priority=255,
                fire_at=NOW - timedelta(seconds=45),
                grace_s=5,
                expires_at=NOW + timedelta(minutes=5),
            ),
            row("emergency-stale", priority=255, fire_at=NOW - timedelta(seconds=45), grace_s=5),
            row("api-queued"),
            row("all-sent", "playing", audio_sent_at=NOW - timedelta(seconds=1)),
            row("emergency-all-sent", "playing", 255, audio_sent_at=NOW - timedelta(seconds=1)),
            row("emergency-cut", "playing", 255),
            row("routine-cut", "playing"),
        ]
    )
    to_play, ended = await recover(
        store,  # type: ignore[arg-type]
        registry=Registry(100),
        now=NOW,
        now_us=0,
        emergency_priority=EMERGENCY,
    )
    assert sorted(a.id for a in to_play) == [
        "api-queued",
        "emergency-cut",
        "emergency-valid",
        "future",
        "in-grace",
    ]
    assert sorted(ended) == [
        "all-sent",
        "emergency-all-sent",
        "emergency-stale",
        "routine-cut",
        "stale",
    ]
    played = {a.id: a for a in to_play}
    assert played["in-grace"].warnings == ["late by 3 s after a restart (grace 5 s)"]
    assert played["future"].warnings == [] and played["api-queued"].warnings == []
    u = store.updates
    assert u["stale"]["state"] == "missed"
    assert u["stale"]["reason"] == "missed by 45 s (grace 5 s), found at a restart"
    assert u["emergency-stale"]["state"] == "missed"
    assert u["all-sent"]["state"] == u["emergency-all-sent"]["state"] == "finished"
    assert u["all-sent"]["reason"] is None
    assert "last playout-delay" in u["all-sent"]["details"]["warnings"][-1]
    assert u["routine-cut"] == {
        "state": "failed",
        "reason": "interrupted by a restart while playing",
        "finished_at": NOW,
    }


# --- idempotency keys -----------------------------------------------------------------------


def test_key_checks_scope_and_fingerprint():
    from broadcaster.api.idempotency import check_key, fingerprint, scope_of

    assert check_key("3f0c2a4e-9b1d-4c1e-8f3a-2b7d9e6a1c55") is None
    assert check_key("") == check_key("x" * 129) == "must be 1 to 128 characters"
    assert check_key("a b") is not None and check_key("ключ") is not None
    assert scope_of(None) == "anonymous"
    assert scope_of(type("P", (), {"id": "tok-7"})()) == "tok-7"
    a = fingerprint("POST", "/v1/announcements", {"text": "x", "zones": ["hall"]})
    assert a == fingerprint("POST", "/v1/announcements", {"zones": ["hall"], "text": "x"})
    assert a != fingerprint("POST", "/v1/triggers/x", {"text": "x", "zones": ["hall"]})


async def test_keys_are_scoped_expire_after_their_time_and_are_pruned(tmp_path):
    from broadcaster.api.idempotency import IdempotencyKeys
    from broadcaster.store import AsyncStore

    clock = FakeClock()
    store = await AsyncStore.open(tmp_path / "s.db", wall=clock.wall)
    try:
        keys = IdempotencyKeys(store, clock, timedelta(hours=24))
        assert await keys.claim("alice", "k") is None
        await keys.save(keys.row("alice", "k", "fp", 201, "schedule:x", {"id": "x"}))
        keys.release("alice", "k")
        found = await keys.claim("alice", "k")
        assert found is not None and found.status == 201 and found.body == {"id": "x"}
        assert await keys.claim("bob", "k") is None  # another caller's key is not alice's
        keys.release("bob", "k")
        await clock.advance_us(24 * 3600 * 1_000_000 + 1)
        assert await keys.claim("alice", "k") is None  # expired: may be used afresh
        assert await store.get_idempotency("alice", "k") is None  # and pruned
    finally:
        await store.close()


async def test_a_second_request_with_a_key_in_flight_waits_for_the_first_answer():
    from broadcaster.api.idempotency import IdempotencyKeys

    clock = FakeClock()
    keys = IdempotencyKeys(None, clock, timedelta(hours=24))
    assert await keys.claim("anonymous", "k") is None  # the first owns the key
    second = asyncio.create_task(keys.claim("anonymous", "k"))
    await asyncio.sleep(0)
    assert not second.done()  # waits, does not create
    keys.remember(keys.row("anonymous", "k", "fp", 202, "announcement:a", {"id": "a"}))
    keys.release("anonymous", "k")
    got = await second
    assert got is not None and got.resource == "announcement:a"


# --- the schedule runner and a failing store -----------------------------------------------


class FakeScheduleStore:
    """What the runner uses of the store, in memory; claims fail while ``broken``."""

    def __init__(self) -> None:
        self.broken = False
        self.schedules: dict[str, Any] = {}
        self.claims: dict[tuple[str, datetime], AnnouncementRow | None] = {}

    async def list_schedules(self) -> list[Any]:
        return list(self.schedules.values())

    async def upsert_schedule(self, row: Any) -> None:
        self.schedules[row.id] = row

    async def set_next_fire_at(self, id: str, when: datetime | None, now: datetime) -> bool:
        if self.broken:
            raise StoreError("database test: disk is full")
        return True

    async def claim_firing(self, schedule_id: str, fire_at: datetime, **_: Any) -> bool:
        if self.broken:
            raise StoreError("database test: disk is full")
        if (schedule_id, fire_at) in self.claims:
            return False
        self.claims[(schedule_id, fire_at)] = None
        return True

    async def set_schedule_paused(self, id: str, paused: bool, now: datetime) -> bool:
        return True

    async def delete_schedule(self, id: str) -> bool:
        return self.schedules.pop(id, None) is not None

    async def claim_firing_with_announcement(
        self, schedule_id: str, fire_at: datetime, *, announcement: Any, **_: Any
    ) -> bool:
        if self.broken:
            raise StoreError("database test: disk is full")
        if (schedule_id, fire_at) in self.claims:
            return False
        self.claims[(schedule_id, fire_at)] = announcement
        return True


async def test_runner_keeps_going_through_a_store_fault_and_stores_the_grace_deadline():
    from broadcaster.config import ScheduleConfig, parse_config
    from broadcaster.scheduling.runner import ScheduleRunner

    config = parse_config(
        {
            "zones": [{"id": "z"}],
            "scheduling": {"prerender_s": 60, "misfire_grace_s": 7},
            "templates": [{"name": "t", "text": "Hello.", "zones": ["z"]}],
        }
    )
    clock, announcer, _ = setup(FlakyJournal())
    store = FakeScheduleStore()
    runner = ScheduleRunner(config=config, store=store, announcer=announcer, clock=clock)  # type: ignore[arg-type]
    await runner.load()
    due = clock.wall() + timedelta(seconds=20)
    await runner.create(ScheduleConfig(id="s", template="t", at=due.isoformat()))
    store.broken = True
    task = asyncio.create_task(runner.run())
    await clock.advance_us(500_000)
    assert not task.done() and store.claims == {}  # refused, not lost, not dead
    assert announcer.registry.recent(10) == []
    store.broken = False
    await clock.advance_us(1_000_000)  # tried again a second later
    [(key, stored)] = store.claims.items()
    assert key == ("s", due)
    assert stored is not None and stored.grace_until == due + timedelta(seconds=7)
    assert stored.due_at == due and stored.state == "queued"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_keys_held_in_memory_are_bounded():
    from broadcaster.api import idempotency

    keys = idempotency.IdempotencyKeys(None, FakeClock(), timedelta(hours=24))
    for i in range(idempotency._MEMORY_LIMIT + 5):
        keys.remember(keys.row("anonymous", f"k{i}", "fp", 202, f"announcement:{i}", {}))
    assert len(keys._memory) == idempotency._MEMORY_LIMIT
    assert ("anonymous", "k0") not in keys._memory  # the oldest went first
    assert ("anonymous", f"k{idempotency._MEMORY_LIMIT + 4}") in keys._memory


async def test_an_emergency_firing_plays_through_a_store_fault_once():
    from broadcaster.config import ScheduleConfig, parse_config
    from broadcaster.scheduling.runner import ScheduleRunner

    config = parse_config(
        {
            "zones": [{"id": "z"}],
            "scheduling": {"prerender_s": 60},
            "templates": [{"name": "alarm", "text": "Evacuate.", "zones": ["z"], "priority": 255}],
        }
    )
    journal = FlakyJournal()
    clock, announcer, _ = setup(journal)
    store = FakeScheduleStore()
    runner = ScheduleRunner(config=config, store=store, announcer=announcer, clock=clock)  # type: ignore[arg-type]
    await runner.load()
    due = clock.wall() + timedelta(seconds=20)
    await runner.create(ScheduleConfig(id="alarm", template="alarm", at=due.isoformat()))
    store.broken = journal.broken = True
    task = asyncio.create_task(runner.run())
    await clock.advance_us(5_000_000)  # several passes while the store fails
    [ann] = announcer.registry.recent(10)  # accepted once, from memory
    assert ann.schedule_id == "alarm" and ann.due_at == due
    assert store.claims == {}
    store.broken = journal.broken = False
    await clock.advance_us(31_000_000)
    assert list(store.claims) == [("alarm", due)]  # claimed now, without a second one
    assert store.claims[("alarm", due)] is None
    assert [a.id for a in announcer.registry.recent(10)] == [ann.id]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_new_playout_clears_the_audio_sent_mark_of_an_earlier_stream(tmp_path):
    from broadcaster.journal import StoreJournal
    from broadcaster.store import AsyncStore

    clock = FakeClock()
    store = await AsyncStore.open(tmp_path / "s.db", wall=clock.wall)
    try:
        journal = StoreJournal(store)
        ann = Registry(10).create(with_priority(100), now=clock.wall(), now_us=0)
        await journal.record_new(ann)
        ann.state = AnnouncementState.PLAYING
        await journal.mark_started(ann)
        await journal.mark_audio_sent(ann, clock.wall())
        got = await store.get_announcement(ann.id)
        assert got is not None and got.audio_sent_at == clock.wall()
        await journal.record(ann)  # a later state write keeps the mark
        got = await store.get_announcement(ann.id)
        assert got is not None and got.audio_sent_at is not None
        await journal.mark_started(ann)  # preempted, replayed: a new stream
        got = await store.get_announcement(ann.id)
        assert got is not None and got.audio_sent_at is None and got.state == "playing"
    finally:
        await store.close()
