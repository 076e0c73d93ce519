import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from broadcaster.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AnnouncementRow,
    AsyncStore,
    ScheduleRow,
    Store,
    StoreError,
)

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ann(
    id: str, *, number: int = 1, created: float = 0, state: str = "queued", **kw
) -> AnnouncementRow:
    return AnnouncementRow(
        id=id,
        number=number,
        spec={"text": f"hello {id}", "zones": ["a", "b"], "speed": 1.0},
        state=state,
        created_at=at(created),
        **kw,
    )


def sched(id: str, **kw) -> ScheduleRow:
    fields = {
        "data": {"cron": "*/5 * * * *", "text": "tick"},
        "source": "api",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(kw)
    return ScheduleRow(id=id, **fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "broadcaster.db"


@pytest.fixture
def store(db_path: Path):
    s = Store.open(db_path, now=T0)
    yield s
    s.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


# --- opening and migrations ---------------------------------------------------------------


def test_open_creates_folders_schema_and_records_version(db_path: Path):
    s = Store.open(db_path, now=T0)
    s.close()
    assert db_path.exists()
    with raw(db_path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {
            "announcements",
            "deliveries",
            "schedules",
            "firings",
            "schema_migrations",
        } <= tables
        indexes = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"announcements_created_at", "announcements_state"} <= indexes
        rows = c.execute(
            "SELECT version, description, applied_at FROM schema_migrations"
        ).fetchall()
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    assert [(v, a) for v, _, a in rows] == [
        (m.version, T0.isoformat(timespec="microseconds")) for m in MIGRATIONS
    ]


def test_reopening_is_idempotent_and_keeps_data(db_path: Path):
    s = Store.open(db_path)
    s.insert_announcement(ann("a"))
    s.close()
    for _ in range(2):
        s = Store.open(db_path)
        assert s.schema_version() == SCHEMA_VERSION
        assert s.get_announcement("a") is not None
        s.close()
    with raw(db_path) as c:
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_applied_at_without_now_uses_a_sortable_utc_timestamp(db_path: Path):
    Store.open(db_path).close()
    with raw(db_path) as c:
        (applied_at,) = c.execute("SELECT applied_at FROM schema_migrations").fetchone()
    parsed = datetime.fromisoformat(applied_at)
    assert parsed.utcoffset() == timedelta(0)
    assert len(applied_at) == len(T0.isoformat(timespec="microseconds"))


def test_newer_schema_version_is_refused(db_path: Path):
    Store.open(db_path).close()
    with raw(db_path) as c:
        c.execute("INSERT INTO schema_migrations VALUES (7, 'from the future', '2030-01-01')")
    with pytest.raises(
        StoreError, match=rf"is at schema version 7; this broadcaster knows up to {SCHEMA_VERSION}"
    ):
        Store.open(db_path)


def test_garbage_file_is_refused_naming_the_path(tmp_path: Path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just some bytes\n" * 200)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        Store.open(path)


def test_foreign_sqlite_database_with_clashing_tables_is_refused(tmp_path: Path):
    path = tmp_path / "other.db"
    with raw(path) as c:
        c.execute("CREATE TABLE announcements (whatever TEXT)")
    with pytest.raises(StoreError, match=re.escape(str(path))):
        Store.open(path)
    # The failed migration left nothing behind.
    with raw(path) as c:
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "deliveries" not in tables


def test_pragmas(store: Store, db_path: Path):
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    with raw(db_path) as c:  # WAL is persistent in the file
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_memory_database_works():
    s = Store.open(":memory:")
    s.insert_announcement(ann("a"))
    assert s.get_announcement("a") is not None
    s.close()


# --- announcements ------------------------------------------------------------------------


def test_insert_and_get_round_trip(store: Store):
    rec = ann(
        "a",
        number=42,
        reason=None,
        schedule_id="s1",
        fire_at=at(-1),
        due_at=at(5),
        expires_at=at(60),
        details={"engine": "qwen", "warnings": ["ü"], "cost_usd": 0.01},
    )
    store.insert_announcement(rec)
    got = store.get_announcement("a")
    assert got == rec
    assert got is not None and got.created_at.tzinfo is not None
    assert store.get_announcement("nope") is None


def test_timestamps_in_other_zones_are_stored_as_utc(store: Store):
    cest = timezone(timedelta(hours=2))
    store.insert_announcement(ann("a", due_at=datetime(2024, 5, 1, 14, 0, tzinfo=cest)))
    got = store.get_announcement("a")
    assert got is not None and got.due_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert got.due_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_rejected(store: Store):
    with pytest.raises(ValueError, match="naive"):
        store.insert_announcement(
            AnnouncementRow(
                id="a", number=1, spec={}, state="queued", created_at=datetime(2024, 1, 1)
            )
        )


def test_duplicate_id_is_a_store_error(store: Store):
    store.insert_announcement(ann("a"))
    with pytest.raises(StoreError):
        store.insert_announcement(ann("a", number=2))
    got = store.get_announcement("a")
    assert got is not None and got.number == 1


def test_update_sets_only_given_fields(store: Store):
    store.insert_announcement(ann("a", reason="why", details={"x": 1}))
    assert store.update_announcement("a", state="playing", started_at=at(1))
    got = store.get_announcement("a")
    assert got is not None
    assert (got.state, got.reason, got.started_at, got.finished_at, got.details) == (
        "playing",
        "why",
        at(1),
        None,
        {"x": 1},
    )
    assert store.update_announcement(
        "a", state="failed", reason=None, finished_at=at(2), details={"y": 2}
    )
    got = store.get_announcement("a")
    assert got is not None
    assert (got.state, got.reason, got.started_at, got.finished_at, got.details) == (
        "failed",
        None,
        at(1),
        at(2),
        {"y": 2},
    )
    assert store.update_announcement("a") is True  # nothing to change, but it exists
    assert store.update_announcement("missing", state="failed") is False


def test_list_newest_first_with_since_until_limit_states(store: Store):
    for i, state in enumerate(["finished", "queued", "failed", "playing", "finished"]):
        store.insert_announcement(ann(f"a{i}", number=i + 1, created=i, state=state))
    # Same created_at as a4: insertion order breaks the tie.
    store.insert_announcement(ann("a5", number=6, created=4, state="cancelled"))

    def ids(rows):
        return [r.id for r in rows]

    assert ids(store.list_announcements()) == ["a5", "a4", "a3", "a2", "a1", "a0"]
    assert ids(store.list_announcements(limit=2)) == ["a5", "a4"]
    assert ids(store.list_announcements(since=at(2))) == ["a5", "a4", "a3", "a2"]
    assert ids(store.list_announcements(until=at(2))) == ["a1", "a0"]
    assert ids(store.list_announcements(since=at(1), until=at(4))) == ["a3", "a2", "a1"]
    assert ids(store.list_announcements(states={"finished"})) == ["a4", "a0"]
    assert ids(store.list_announcements(states=["queued", "playing"], limit=1)) == ["a3"]
    assert store.list_announcements(states=[]) == []
    assert ids(store.unfinished_announcements()) == ["a1", "a3"]
    assert store.max_announcement_number() == 6


def test_max_number_of_empty_store_is_zero(store: Store):
    assert store.max_announcement_number() == 0
    assert store.unfinished_announcements() == []


# --- deliveries ---------------------------------------------------------------------------


def test_deliveries_upsert(store: Store):
    store.insert_announcement(ann("a"))
    store.upsert_delivery("a", "ep2", {"state": "receiving", "chunks_sent": 0})
    store.upsert_delivery("a", "ep1", {"state": "receiving", "chunks_sent": 0})
    store.upsert_delivery("a", "ep2", {"state": "sent", "chunks_sent": 50, "receipt": None})
    assert store.deliveries("a") == {
        "ep1": {"state": "receiving", "chunks_sent": 0},
        "ep2": {"state": "sent", "chunks_sent": 50, "receipt": None},
    }
    assert store.deliveries("other") == {}


def test_delivery_for_unknown_announcement_is_refused(store: Store):
    with pytest.raises(StoreError):
        store.upsert_delivery("ghost", "ep1", {})


# --- schedules ----------------------------------------------------------------------------


def test_schedules_crud_pause_and_next_fire(store: Store):
    assert store.get_schedule("s1") is None
    store.upsert_schedule(sched("s2", source="config"))
    store.upsert_schedule(sched("s1", next_fire_at=at(300)))
    assert [s.id for s in store.list_schedules()] == ["s1", "s2"]
    s1 = store.get_schedule("s1")
    assert s1 == sched("s1", next_fire_at=at(300))
    assert s1 is not None and s1.paused is False

    # Upsert replaces everything but created_at.
    store.upsert_schedule(
        sched("s1", data={"cron": "0 * * * *"}, created_at=at(99), updated_at=at(10))
    )
    s1 = store.get_schedule("s1")
    assert s1 is not None
    assert (s1.data, s1.created_at, s1.updated_at, s1.next_fire_at) == (
        {"cron": "0 * * * *"},
        T0,
        at(10),
        None,
    )

    assert store.set_schedule_paused("s1", True, at(20))
    s1 = store.get_schedule("s1")
    assert s1 is not None and s1.paused is True and s1.updated_at == at(20)
    assert store.set_schedule_paused("s1", False, at(21))
    s1 = store.get_schedule("s1")
    assert s1 is not None and s1.paused is False

    assert store.set_next_fire_at("s1", at(600), at(22))
    s1 = store.get_schedule("s1")
    assert s1 is not None and s1.next_fire_at == at(600) and s1.updated_at == at(22)
    assert store.set_next_fire_at("s1", None, at(23))
    s1 = store.get_schedule("s1")
    assert s1 is not None and s1.next_fire_at is None

    assert store.set_schedule_paused("nope", True, at(1)) is False
    assert store.set_next_fire_at("nope", None, at(1)) is False
    assert store.delete_schedule("s1") is True
    assert store.delete_schedule("s1") is False
    assert [s.id for s in store.list_schedules()] == ["s2"]


def test_schedule_source_is_checked(store: Store):
    with pytest.raises(StoreError):
        store.upsert_schedule(sched("s1", source="elsewhere"))


# --- firings ------------------------------------------------------------------------------


def test_claim_firing_only_once(store: Store):
    assert store.claim_firing(
        "s1", at(0), decision="skipped", reason="paused", announcement_id=None
    )
    assert not store.claim_firing("s1", at(0), decision="fired", coalesced=3, announcement_id=None)
    firing = store.get_firing("s1", at(0))
    assert firing is not None
    assert (firing.decision, firing.reason, firing.coalesced, firing.announcement_id) == (
        "skipped",
        "paused",
        0,
        None,
    )
    # Other fire times and other schedules are separate firings.
    assert store.claim_firing("s1", at(60), decision="fired", announcement_id=None)
    assert store.claim_firing("s2", at(0), decision="fired", announcement_id=None)
    assert [f.fire_at for f in store.list_firings("s1")] == [at(60), at(0)]


def test_claim_firing_survives_reopen(db_path: Path):
    s = Store.open(db_path)
    assert s.claim_firing("s1", at(0), decision="fired", announcement_id=None)
    s.close()
    s = Store.open(db_path)
    assert not s.claim_firing("s1", at(0), decision="fired", announcement_id=None)
    s.close()


def test_claim_firing_with_unknown_announcement_is_refused(store: Store):
    with pytest.raises(StoreError):
        store.claim_firing("s1", at(0), decision="fired", announcement_id="ghost")
    assert store.get_firing("s1", at(0)) is None


def test_claim_firing_with_announcement(store: Store):
    rec = ann("a", schedule_id="s1", fire_at=at(0))
    assert store.claim_firing_with_announcement(
        "s1", at(0), decision="fired", coalesced=2, announcement=rec
    )
    assert store.get_announcement("a") == rec
    firing = store.get_firing("s1", at(0))
    assert firing is not None and firing.announcement_id == "a" and firing.coalesced == 2

    # A second claim of the same firing inserts nothing.
    other = ann("b", schedule_id="s1", fire_at=at(0))
    assert not store.claim_firing_with_announcement(
        "s1", at(0), decision="fired", announcement=other
    )
    assert store.get_announcement("b") is None
    firing = store.get_firing("s1", at(0))
    assert firing is not None and firing.announcement_id == "a"

    # Without an announcement (e.g. skipped because expired).
    assert store.claim_firing_with_announcement(
        "s1", at(60), decision="expired", reason="too late", announcement=None
    )
    firing = store.get_firing("s1", at(60))
    assert firing is not None and firing.announcement_id is None


def test_claim_firing_with_announcement_is_atomic(store: Store):
    store.insert_announcement(ann("dup", number=7))
    with pytest.raises(StoreError):
        store.claim_firing_with_announcement(
            "s1", at(0), decision="fired", announcement=ann("dup", number=8)
        )
    # Neither the claim nor a changed announcement: the whole transaction rolled back.
    assert store.get_firing("s1", at(0)) is None
    got = store.get_announcement("dup")
    assert got is not None and got.number == 7
    # And the firing can still be claimed afterwards.
    assert store.claim_firing_with_announcement(
        "s1", at(0), decision="fired", announcement=ann("fresh")
    )


def test_claim_rolls_back_on_any_exception(store: Store):
    # Not JSON-serialisable details fail after the claim row was written.
    bad = ann("a", details={"when": T0})
    with pytest.raises(TypeError):
        store.claim_firing_with_announcement("s1", at(0), decision="fired", announcement=bad)
    assert store.get_firing("s1", at(0)) is None
    assert store.get_announcement("a") is None
    assert not store._conn.in_transaction


# --- pruning ------------------------------------------------------------------------------


def test_prune(store: Store):
    store.insert_announcement(ann("old", created=0, state="finished", finished_at=at(10)))
    store.insert_announcement(ann("old-cancelled", created=1, state="cancelled"))  # no finished_at
    store.insert_announcement(ann("new", created=2, state="failed", finished_at=at(200)))
    store.insert_announcement(ann("queued", created=0, state="queued"))
    store.insert_announcement(ann("playing", created=0, state="playing", started_at=at(1)))
    store.upsert_delivery("old", "ep1", {"state": "sent"})
    store.upsert_delivery("new", "ep1", {"state": "sent"})
    assert store.claim_firing_with_announcement(
        "s1",
        at(0),
        decision="fired",
        announcement=ann("sched", created=0, state="finished", finished_at=at(5)),
    )

    assert store.prune_announcements(at(100)) == 3
    left = {r.id for r in store.list_announcements()}
    assert left == {"new", "queued", "playing"}
    assert store.deliveries("old") == {}
    assert store.deliveries("new") == {"ep1": {"state": "sent"}}
    assert store._conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    firing = store.get_firing("s1", at(0))
    assert firing is not None and firing.announcement_id is None  # kept, unlinked
    assert not store.claim_firing("s1", at(0), decision="fired", announcement_id=None)
    assert store.prune_announcements(at(100)) == 0

    # Old firings with no announcement can be pruned separately.
    assert store.prune_firings(at(1)) == 1
    assert store.get_firing("s1", at(0)) is None


# --- durability ---------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from broadcaster.store import AnnouncementRow, Store

    s = Store.open(sys.argv[1])
    now = datetime(2024, 5, 1, tzinfo=UTC)
    s.insert_announcement(
        AnnouncementRow(id="durable", number=9, spec={"text": "hi"}, state="queued", created_at=now)
    )
    s.claim_firing("s1", now, decision="fired", announcement_id="durable")
    s.update_announcement("durable", state="playing", started_at=now)
    print("ok", flush=True)
    time.sleep(60)
    """
)


def test_acknowledged_writes_survive_kill_9(db_path: Path):
    Store.open(db_path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ok", proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    s = Store.open(db_path)
    try:
        got = s.get_announcement("durable")
        assert got is not None and got.state == "playing" and got.number == 9
        assert [r.id for r in s.unfinished_announcements()] == ["durable"]
        assert not s.claim_firing(
            "s1", datetime(2024, 5, 1, tzinfo=UTC), decision="fired", announcement_id=None
        )
    finally:
        s.close()


# --- async adapter ------------------------------------------------------------------------


async def test_async_store_round_trip(db_path: Path):
    s = await AsyncStore.open(db_path, now=T0)
    try:
        assert s.path == str(db_path)
        assert await s.schema_version() == SCHEMA_VERSION
        await s.insert_announcement(ann("a", number=3))
        assert await s.update_announcement("a", state="playing", started_at=at(1))
        got = await s.get_announcement("a")
        assert got is not None and got.state == "playing" and got.started_at == at(1)
        assert [r.id for r in await s.list_announcements(limit=5)] == ["a"]
        assert [r.id for r in await s.unfinished_announcements()] == ["a"]
        assert await s.max_announcement_number() == 3
        await s.upsert_delivery("a", "ep1", {"state": "sent"})
        assert await s.deliveries("a") == {"ep1": {"state": "sent"}}
        await s.upsert_schedule(sched("s1"))
        assert await s.set_schedule_paused("s1", True, at(2))
        schedule = await s.get_schedule("s1")
        assert schedule is not None and schedule.paused
        assert await s.claim_firing_with_announcement(
            "s1", at(0), decision="fired", announcement=ann("b", number=4)
        )
        assert not await s.claim_firing("s1", at(0), decision="fired", announcement_id=None)
        with pytest.raises(StoreError):
            await s.insert_announcement(ann("a"))
    finally:
        await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await s.get_announcement("a")

    s2 = Store.open(db_path)
    try:
        assert {r.id for r in s2.list_announcements()} == {"a", "b"}
    finally:
        s2.close()


async def test_async_store_runs_on_one_store_thread(db_path: Path):
    s = await AsyncStore.open(db_path)
    seen: set[str] = set()
    original = s._store._query

    def spy(*args):
        seen.add(threading.current_thread().name)
        return original(*args)

    s._store._query = spy  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(s.get_announcement(str(i)) for i in range(20)))
    finally:
        await s.close()
    assert len(seen) == 1
    (name,) = seen
    assert name.startswith("store") and name != threading.current_thread().name


async def test_async_open_failure_raises_store_error(tmp_path: Path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        await AsyncStore.open(path)
