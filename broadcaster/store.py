"""Durable state in SQLite: announcements, their deliveries, schedules and firings.

A restart, even ``kill -9`` or a power cut, must neither lose an accepted
announcement nor play one twice. So:

* Every write is its own transaction (``BEGIN IMMEDIATE`` … ``COMMIT``),
  committed before the method returns, with ``journal_mode=WAL`` and
  ``synchronous=FULL``: once a method has returned, the write survives.
* ``firings`` has primary key ``(schedule_id, fire_at)``. Claiming a firing
  inserts that row; a second claim of the same firing finds it and returns
  False. :meth:`Store.claim_firing_with_announcement` claims the firing and
  inserts the announcement it produced in one transaction, so a crash leaves
  both or neither.

:class:`Store` is synchronous and owns one connection, used from one thread.
The service uses :class:`AsyncStore`, which runs every call on its own single
worker thread so SQLite never blocks the event loop and all access is
serialised.

Timestamps are stored as ISO-8601 UTC strings with microseconds
(``2024-05-01T12:00:00.000000+00:00``), which sort as text; datetimes passed
in must be timezone-aware and come back as aware UTC. This module never reads
the clock: callers pass ``now``. Nested data (announcement spec and details,
delivery stats, schedule definitions) is stored as JSON.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Literal, NamedTuple, ParamSpec, TypeVar, cast

from broadcaster.model import AnnouncementState

log = logging.getLogger(__name__)

JSONDict = dict[str, Any]
ScheduleSource = Literal["config", "api"]

#: States in which an announcement still has to be played (or finished) after a restart.
UNFINISHED_STATES: tuple[str, ...] = (
    AnnouncementState.QUEUED.value,
    AnnouncementState.PLAYING.value,
)
#: States in which an announcement is done and may be pruned.
FINAL_STATES: tuple[str, ...] = tuple(s.value for s in AnnouncementState if s.is_final)

BUSY_TIMEOUT_MS = 5000
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # truncate the WAL file to this after checkpoints


class StoreError(Exception):
    """The database cannot be opened or a statement failed (the cause is chained)."""


class Migration(NamedTuple):
    version: int
    description: str
    sql: str


#: Applied in order, each in one transaction. Append only: never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "announcements, deliveries, schedules, firings",
        """
        CREATE TABLE announcements (
            id          TEXT PRIMARY KEY,
            number      INTEGER NOT NULL,
            spec        TEXT NOT NULL,
            state       TEXT NOT NULL,
            reason      TEXT,
            schedule_id TEXT,
            fire_at     TEXT,
            due_at      TEXT,
            expires_at  TEXT,
            created_at  TEXT NOT NULL,
            started_at  TEXT,
            finished_at TEXT,
            details     TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX announcements_created_at ON announcements (created_at);
        CREATE INDEX announcements_state ON announcements (state);

        CREATE TABLE deliveries (
            announcement_id TEXT NOT NULL
                REFERENCES announcements (id) ON DELETE CASCADE,
            endpoint_id     TEXT NOT NULL,
            data            TEXT NOT NULL,
            PRIMARY KEY (announcement_id, endpoint_id)
        );

        CREATE TABLE schedules (
            id           TEXT PRIMARY KEY,
            data         TEXT NOT NULL,
            source       TEXT NOT NULL CHECK (source IN ('config', 'api')),
            paused       INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
            next_fire_at TEXT,
            created_at   TEXT NOT NULL,
            updated_at   TEXT NOT NULL
        );

        CREATE TABLE firings (
            schedule_id     TEXT NOT NULL,
            fire_at         TEXT NOT NULL,
            announcement_id TEXT
                REFERENCES announcements (id) ON DELETE SET NULL
                DEFERRABLE INITIALLY DEFERRED,
            decision        TEXT NOT NULL,
            coalesced       INTEGER NOT NULL DEFAULT 0,
            reason          TEXT,
            PRIMARY KEY (schedule_id, fire_at)
        );
        CREATE INDEX firings_announcement_id ON firings (announcement_id);
        """,
    ),
    Migration(
        2,
        "audit log of API calls",
        """
        CREATE TABLE audit (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            at           TEXT NOT NULL,
            principal_id TEXT,
            role         TEXT,
            source       TEXT,
            method       TEXT NOT NULL,
            path         TEXT NOT NULL,
            target_id    TEXT,
            status       INTEGER NOT NULL,
            created_id   TEXT,
            detail       TEXT
        );
        CREATE INDEX audit_at ON audit (at);
        """,
    ),
    Migration(
        3,
        "events (supervision and other faults, in wall time)",
        """
        CREATE TABLE events (
            id       INTEGER PRIMARY KEY,
            at       TEXT NOT NULL,
            at_us    INTEGER NOT NULL,
            kind     TEXT NOT NULL,
            severity TEXT NOT NULL,
            subject  TEXT NOT NULL,
            detail   TEXT NOT NULL
        );
        CREATE INDEX events_at ON events (at);
        """,
    ),
    Migration(
        4,
        "playout marks, misfire deadline, idempotency keys",
        """
        ALTER TABLE announcements ADD COLUMN grace_until TEXT;
        ALTER TABLE announcements ADD COLUMN audio_sent_at TEXT;

        CREATE TABLE idempotency_keys (
            scope       TEXT NOT NULL,
            key         TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status      INTEGER NOT NULL,
            resource    TEXT NOT NULL,
            body        TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

        CREATE TABLE store_probe (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            at TEXT NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "templates made through the API, gains set through the API",
        """
        CREATE TABLE templates (
            name       TEXT PRIMARY KEY,
            data       TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT,
            updated_at TEXT NOT NULL,
            updated_by TEXT
        );

        CREATE TABLE gains (
            kind       TEXT NOT NULL CHECK (kind IN ('zone', 'endpoint')),
            id         TEXT NOT NULL,
            gain_db    REAL NOT NULL CHECK (gain_db BETWEEN -60 AND 0),
            updated_at TEXT NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (kind, id)
        );
        """,
    ),
)

#: The newest schema version this code knows.
SCHEMA_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True, slots=True)
class AnnouncementRow:
    id: str
    number: int
    spec: JSONDict
    state: str  # an AnnouncementState value
    created_at: datetime
    reason: str | None = None
    schedule_id: str | None = None
    fire_at: datetime | None = None
    due_at: datetime | None = None
    expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    details: JSONDict = field(default_factory=dict)
    #: A scheduled firing: after this instant it is missed (its misfire grace), also
    #: when a restart finds it not yet played. None for API announcements.
    grace_until: datetime | None = None
    #: When its last chunk was sent (the "audio all sent" mark): a restart that finds
    #: it ``playing`` with this set counts it finished, never plays it again.
    audio_sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyRow:
    """The answer given to the first request with an ``Idempotency-Key``."""

    scope: str  # who asked (the caller's token id, or "anonymous")
    key: str
    fingerprint: str  # hash of method, path and body: a reuse with another body is refused
    status: int
    resource: str  # what was created: "announcement:<id>", "schedule:<id>"
    body: JSONDict
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    id: str
    data: JSONDict
    source: ScheduleSource
    created_at: datetime
    updated_at: datetime
    paused: bool = False
    next_fire_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TemplateRow:
    """A template made through the API (``data``: its fields, as TemplateConfig takes them)."""

    name: str
    data: JSONDict
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    updated_by: str | None = None


GainKind = Literal["zone", "endpoint"]


@dataclass(frozen=True, slots=True)
class GainRow:
    """A gain set through the API, overriding the config's for that zone or endpoint."""

    kind: GainKind
    id: str
    gain_db: float
    updated_at: datetime
    updated_by: str | None = None


@dataclass(frozen=True, slots=True)
class FiringRow:
    schedule_id: str
    fire_at: datetime
    decision: str
    coalesced: int
    reason: str | None
    announcement_id: str | None  # None when none was created, or it was pruned


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One API call in the audit log (see broadcaster.auth.AuditEntry)."""

    at: datetime
    method: str
    path: str
    status: int
    principal_id: str | None = None
    role: str | None = None
    source: str | None = None
    target_id: str | None = None
    created_id: str | None = None
    detail: str | None = None
    seq: int | None = None  # assigned by the store

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "principal_id": self.principal_id,
            "role": self.role,
            "source": self.source,
            "method": self.method,
            "path": self.path,
            "target_id": self.target_id,
            "status": self.status,
            "created_id": self.created_id,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: datetime  # wall time (UTC)
    at_us: int  # the server's monotonic clock
    kind: str
    severity: str  # info | warning | error
    subject: str  # what it is about: an endpoint id, an announcement id, "store", ...
    detail: str


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


# --- conversions ------------------------------------------------------------------------


def _ts(dt: datetime) -> str:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: pass timezone-aware UTC datetimes")
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _ts_opt(dt: datetime | None) -> str | None:
    return None if dt is None else _ts(dt)


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _dt_opt(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


def _dump(data: JSONDict) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _load(text: str) -> JSONDict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _announcement(r: sqlite3.Row) -> AnnouncementRow:
    return AnnouncementRow(
        id=r["id"],
        number=r["number"],
        spec=_load(r["spec"]),
        state=r["state"],
        reason=r["reason"],
        schedule_id=r["schedule_id"],
        fire_at=_dt_opt(r["fire_at"]),
        due_at=_dt_opt(r["due_at"]),
        expires_at=_dt_opt(r["expires_at"]),
        created_at=_dt(r["created_at"]),
        started_at=_dt_opt(r["started_at"]),
        finished_at=_dt_opt(r["finished_at"]),
        details=_load(r["details"]),
        grace_until=_dt_opt(r["grace_until"]),
        audio_sent_at=_dt_opt(r["audio_sent_at"]),
    )


def _idempotency(r: sqlite3.Row) -> IdempotencyRow:
    return IdempotencyRow(
        scope=r["scope"],
        key=r["key"],
        fingerprint=r["fingerprint"],
        status=r["status"],
        resource=r["resource"],
        body=_load(r["body"]),
        created_at=_dt(r["created_at"]),
    )


def _schedule(r: sqlite3.Row) -> ScheduleRow:
    return ScheduleRow(
        id=r["id"],
        data=_load(r["data"]),
        source=cast(ScheduleSource, r["source"]),
        paused=bool(r["paused"]),
        next_fire_at=_dt_opt(r["next_fire_at"]),
        created_at=_dt(r["created_at"]),
        updated_at=_dt(r["updated_at"]),
    )


def _firing(r: sqlite3.Row) -> FiringRow:
    return FiringRow(
        schedule_id=r["schedule_id"],
        fire_at=_dt(r["fire_at"]),
        decision=r["decision"],
        coalesced=r["coalesced"],
        reason=r["reason"],
        announcement_id=r["announcement_id"],
    )


def _event(r: sqlite3.Row) -> EventRow:
    return EventRow(
        id=r["id"],
        at=_dt(r["at"]),
        at_us=r["at_us"],
        kind=r["kind"],
        severity=r["severity"],
        subject=r["subject"],
        detail=r["detail"],
    )


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (``executescript`` would commit midway)."""
    out: list[str] = []
    buf = ""
    parts = script.split(";")
    for i, part in enumerate(parts):
        buf += part if i == len(parts) - 1 else part + ";"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


_INSERT_ANNOUNCEMENT = """
    INSERT INTO announcements (id, number, spec, state, reason, schedule_id, fire_at, due_at,
                               expires_at, created_at, started_at, finished_at, details,
                               grace_until, audio_sent_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _announcement_params(rec: AnnouncementRow) -> tuple[object, ...]:
    return (
        rec.id,
        rec.number,
        _dump(rec.spec),
        str(rec.state),
        rec.reason,
        rec.schedule_id,
        _ts_opt(rec.fire_at),
        _ts_opt(rec.due_at),
        _ts_opt(rec.expires_at),
        _ts(rec.created_at),
        _ts_opt(rec.started_at),
        _ts_opt(rec.finished_at),
        _dump(rec.details),
        _ts_opt(rec.grace_until),
        _ts_opt(rec.audio_sent_at),
    )


# --- the synchronous store --------------------------------------------------------------


class Store:
    """One SQLite connection. Not thread-safe: use it from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._path = path

    @classmethod
    def open(cls, path: str | Path, *, now: datetime | None = None) -> Store:
        """Open (creating folders and file as needed) and migrate to :data:`SCHEMA_VERSION`.

        ``now`` is recorded as ``applied_at`` of migrations applied now; without it
        SQLite's own clock is used (the value is informational only).
        """
        name = str(path)
        if name != ":memory:":
            try:
                Path(name).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"database {name}: cannot create its folder: {e}") from e
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                name,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # The first statement that reads the file: a non-SQLite file fails here.
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            store = cls(conn, name)
            store._migrate(now)
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"database {name}: cannot open ({e})") from e
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return store

    @property
    def path(self) -> str:
        return self._path

    def close(self) -> None:
        self._conn.close()

    # --- plumbing -----------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on exit (rolled back on any exception)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"database {self._path}: {what}: {e}") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"database {self._path}: {what}: {e}") from e
            raise

    def _query(self, what: str, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"database {self._path}: {what}: {e}") from e

    def _migrate(self, now: datetime | None) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        self._check_version()
        applied_at = (
            _ts(now)
            if now is not None
            else conn.execute(
                "SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000+00:00'"
            ).fetchone()[0]
        )
        for m in MIGRATIONS:
            with self._write(f"migration {m.version} ({m.description})") as c:
                # Re-read inside the write lock: another process may have just migrated.
                if c.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (m.version,)
                ).fetchone():
                    continue
                for statement in _statements(m.sql):
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (m.version, m.description, applied_at),
                )

    def _check_version(self) -> None:
        found = self.schema_version()
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"database {self._path} is at schema version {found}; "
                f"this broadcaster knows up to {SCHEMA_VERSION}"
            )

    def schema_version(self) -> int:
        """The highest migration recorded in the database (0 for a new one)."""
        rows = self._query("schema version", "SELECT max(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    # --- announcements ------------------------------------------------------------------

    def insert_announcement(self, rec: AnnouncementRow) -> None:
        with self._write(f"insert announcement {rec.id}") as c:
            c.execute(_INSERT_ANNOUNCEMENT, _announcement_params(rec))

    def update_announcement(
        self,
        id: str,
        *,
        state: str | _Unset = _UNSET,
        reason: str | _Unset | None = _UNSET,
        started_at: datetime | _Unset | None = _UNSET,
        finished_at: datetime | _Unset | None = _UNSET,
        details: JSONDict | _Unset = _UNSET,
        audio_sent_at: datetime | _Unset | None = _UNSET,
    ) -> bool:
        """Set only the given fields. False if there is no such announcement."""
        sets: list[str] = []
        params: list[object] = []
        if not isinstance(state, _Unset):
            sets.append("state = ?")
            params.append(str(state))
        if not isinstance(reason, _Unset):
            sets.append("reason = ?")
            params.append(reason)
        if not isinstance(started_at, _Unset):
            sets.append("started_at = ?")
            params.append(_ts_opt(started_at))
        if not isinstance(finished_at, _Unset):
            sets.append("finished_at = ?")
            params.append(_ts_opt(finished_at))
        if not isinstance(details, _Unset):
            sets.append("details = ?")
            params.append(_dump(details))
        if not isinstance(audio_sent_at, _Unset):
            sets.append("audio_sent_at = ?")
            params.append(_ts_opt(audio_sent_at))
        with self._write(f"update announcement {id}") as c:
            if not sets:
                return (
                    c.execute("SELECT 1 FROM announcements WHERE id = ?", (id,)).fetchone()
                    is not None
                )
            cur = c.execute(
                f"UPDATE announcements SET {', '.join(sets)} WHERE id = ?", (*params, id)
            )
            return cur.rowcount > 0

    def get_announcement(self, id: str) -> AnnouncementRow | None:
        rows = self._query("get announcement", "SELECT * FROM announcements WHERE id = ?", (id,))
        return _announcement(rows[0]) if rows else None

    def list_announcements(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        states: Collection[str] | None = None,
    ) -> list[AnnouncementRow]:
        """Newest first, by ``created_at``: ``since`` inclusive, ``until`` exclusive."""
        where: list[str] = []
        params: list[object] = []
        if since is not None:
            where.append("created_at >= ?")
            params.append(_ts(since))
        if until is not None:
            where.append("created_at < ?")
            params.append(_ts(until))
        if states is not None:
            if not states:
                return []
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(str(s) for s in states)
        sql = "SELECT * FROM announcements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(max(0, limit))
        return [_announcement(r) for r in self._query("list announcements", sql, tuple(params))]

    def unfinished_announcements(self) -> list[AnnouncementRow]:
        """Queued or playing, oldest first: what a restart must resume or resolve."""
        marks = ", ".join("?" * len(UNFINISHED_STATES))
        rows = self._query(
            "unfinished announcements",
            f"SELECT * FROM announcements WHERE state IN ({marks}) ORDER BY created_at, rowid",
            UNFINISHED_STATES,
        )
        return [_announcement(r) for r in rows]

    def max_announcement_number(self) -> int:
        """The highest stream number stored (0 when there is none)."""
        rows = self._query("max number", "SELECT max(number) FROM announcements")
        return int(rows[0][0] or 0)

    def prune_announcements(self, finished_before: datetime) -> int:
        """Delete final announcements that finished before the cutoff; returns how many.

        Their deliveries go with them; their firings stay, with ``announcement_id``
        NULL, so a pruned firing is still never fired again. An announcement in a
        final state with no ``finished_at`` is judged by ``created_at``.
        """
        marks = ", ".join("?" * len(FINAL_STATES))
        with self._write("prune announcements") as c:
            cur = c.execute(
                f"DELETE FROM announcements WHERE state IN ({marks})"
                " AND coalesce(finished_at, created_at) < ?",
                (*FINAL_STATES, _ts(finished_before)),
            )
            return cur.rowcount

    def mark_audio_sent(self, id: str, at: datetime) -> bool:
        """The "audio all sent" mark: its last chunk went out at ``at``."""
        with self._write(f"mark audio sent {id}") as c:
            cur = c.execute(
                "UPDATE announcements SET audio_sent_at = ? WHERE id = ?", (_ts(at), id)
            )
            return cur.rowcount > 0

    def probe(self, now: datetime) -> None:
        """A real (tiny) write: does the store take writes now? (StoreError if not.)"""
        with self._write("probe write") as c:
            c.execute(
                "INSERT INTO store_probe (id, at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (_ts(now),),
            )

    # --- idempotency keys ---------------------------------------------------------------

    def get_idempotency(self, scope: str, key: str) -> IdempotencyRow | None:
        rows = self._query(
            "get idempotency key",
            "SELECT * FROM idempotency_keys WHERE scope = ? AND key = ?",
            (scope, key),
        )
        return _idempotency(rows[0]) if rows else None

    def insert_idempotency(self, row: IdempotencyRow) -> bool:
        """Remember an answer; False (nothing changed) if the key is already taken."""
        with self._write(f"insert idempotency key {row.scope}/{row.key}") as c:
            return self._insert_idempotency(c, row)

    def insert_announcement_with_key(self, rec: AnnouncementRow, key: IdempotencyRow) -> bool:
        """The announcement and the key that created it, in one transaction.

        False, inserting nothing, if the key is already taken (a crash can never
        leave an announcement without its key, so a retry cannot double it).
        """
        with self._write(f"insert announcement {rec.id} with key {key.scope}/{key.key}") as c:
            if not self._insert_idempotency(c, key):
                return False
            c.execute(_INSERT_ANNOUNCEMENT, _announcement_params(rec))
            return True

    @staticmethod
    def _insert_idempotency(c: sqlite3.Connection, row: IdempotencyRow) -> bool:
        cur = c.execute(
            "INSERT INTO idempotency_keys"
            " (scope, key, fingerprint, status, resource, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO NOTHING",
            (
                row.scope,
                row.key,
                row.fingerprint,
                row.status,
                row.resource,
                _dump(row.body),
                _ts(row.created_at),
            ),
        )
        return cur.rowcount > 0

    def prune_idempotency(self, created_before: datetime) -> int:
        """Forget keys older than the cutoff; returns how many."""
        with self._write("prune idempotency keys") as c:
            cur = c.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (_ts(created_before),)
            )
            return cur.rowcount

    # --- deliveries ---------------------------------------------------------------------

    def upsert_delivery(self, announcement_id: str, endpoint_id: str, data: JSONDict) -> None:
        with self._write(f"upsert delivery {announcement_id}/{endpoint_id}") as c:
            c.execute(
                "INSERT INTO deliveries (announcement_id, endpoint_id, data) VALUES (?, ?, ?)"
                " ON CONFLICT (announcement_id, endpoint_id) DO UPDATE SET data = excluded.data",
                (announcement_id, endpoint_id, _dump(data)),
            )

    def deliveries(self, announcement_id: str) -> dict[str, JSONDict]:
        """Endpoint id → delivery data, in endpoint id order."""
        rows = self._query(
            "deliveries",
            "SELECT endpoint_id, data FROM deliveries WHERE announcement_id = ?"
            " ORDER BY endpoint_id",
            (announcement_id,),
        )
        return {r["endpoint_id"]: _load(r["data"]) for r in rows}

    # --- schedules ----------------------------------------------------------------------

    def upsert_schedule(self, row: ScheduleRow) -> None:
        """Insert, or replace every field but ``created_at`` of an existing schedule."""
        with self._write(f"upsert schedule {row.id}") as c:
            c.execute(
                "INSERT INTO schedules"
                " (id, data, source, paused, next_fire_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET data = excluded.data,"
                " source = excluded.source, paused = excluded.paused,"
                " next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at",
                (
                    row.id,
                    _dump(row.data),
                    row.source,
                    int(row.paused),
                    _ts_opt(row.next_fire_at),
                    _ts(row.created_at),
                    _ts(row.updated_at),
                ),
            )

    def get_schedule(self, id: str) -> ScheduleRow | None:
        rows = self._query("get schedule", "SELECT * FROM schedules WHERE id = ?", (id,))
        return _schedule(rows[0]) if rows else None

    def list_schedules(self) -> list[ScheduleRow]:
        """All schedules, by id."""
        rows = self._query("list schedules", "SELECT * FROM schedules ORDER BY id")
        return [_schedule(r) for r in rows]

    def delete_schedule(self, id: str) -> bool:
        """False if there was no such schedule. Its firings are kept."""
        with self._write(f"delete schedule {id}") as c:
            return c.execute("DELETE FROM schedules WHERE id = ?", (id,)).rowcount > 0

    def set_schedule_paused(self, id: str, paused: bool, now: datetime) -> bool:
        """False if there is no such schedule."""
        with self._write(f"pause schedule {id}") as c:
            cur = c.execute(
                "UPDATE schedules SET paused = ?, updated_at = ? WHERE id = ?",
                (int(paused), _ts(now), id),
            )
            return cur.rowcount > 0

    def set_next_fire_at(self, id: str, when: datetime | None, now: datetime) -> bool:
        """False if there is no such schedule."""
        with self._write(f"set next firing of schedule {id}") as c:
            cur = c.execute(
                "UPDATE schedules SET next_fire_at = ?, updated_at = ? WHERE id = ?",
                (_ts_opt(when), _ts(now), id),
            )
            return cur.rowcount > 0

    # --- templates and gains (API) --------------------------------------------------------

    def upsert_template(self, row: TemplateRow) -> None:
        """Insert, or replace data and the ``updated_*`` fields of an existing template."""
        with self._write(f"upsert template {row.name}") as c:
            c.execute(
                "INSERT INTO templates"
                " (name, data, created_at, created_by, updated_at, updated_by)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data,"
                " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (
                    row.name,
                    _dump(row.data),
                    _ts(row.created_at),
                    row.created_by,
                    _ts(row.updated_at),
                    row.updated_by,
                ),
            )

    def list_templates(self) -> list[TemplateRow]:
        """Every stored template, by name."""
        rows = self._query("list templates", "SELECT * FROM templates ORDER BY name")
        return [
            TemplateRow(
                name=r["name"],
                data=_load(r["data"]),
                created_at=_dt(r["created_at"]),
                created_by=r["created_by"],
                updated_at=_dt(r["updated_at"]),
                updated_by=r["updated_by"],
            )
            for r in rows
        ]

    def delete_template(self, name: str) -> bool:
        """False if there was no such template."""
        with self._write(f"delete template {name}") as c:
            return c.execute("DELETE FROM templates WHERE name = ?", (name,)).rowcount > 0

    def set_gain(self, row: GainRow) -> None:
        with self._write(f"set gain of {row.kind} {row.id}") as c:
            c.execute(
                "INSERT INTO gains (kind, id, gain_db, updated_at, updated_by)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET"
                " gain_db = excluded.gain_db, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by",
                (row.kind, row.id, float(row.gain_db), _ts(row.updated_at), row.updated_by),
            )

    def clear_gain(self, kind: GainKind, id: str) -> bool:
        """Forget a gain set through the API (the config's applies again)."""
        with self._write(f"clear gain of {kind} {id}") as c:
            cur = c.execute("DELETE FROM gains WHERE kind = ? AND id = ?", (kind, id))
            return cur.rowcount > 0

    def list_gains(self) -> list[GainRow]:
        rows = self._query("list gains", "SELECT * FROM gains ORDER BY kind, id")
        return [
            GainRow(
                kind=cast(GainKind, r["kind"]),
                id=r["id"],
                gain_db=float(r["gain_db"]),
                updated_at=_dt(r["updated_at"]),
                updated_by=r["updated_by"],
            )
            for r in rows
        ]

    # --- firings ------------------------------------------------------------------------

    def claim_firing(
        self,
        schedule_id: str,
        fire_at: datetime,
        *,
        decision: str,
        coalesced: int = 0,
        reason: str | None = None,
        announcement_id: str | None = None,
    ) -> bool:
        """Record that this firing was acted on; False (nothing changed) if it already was.

        ``announcement_id``, if given, must name an announcement already stored
        (otherwise StoreError). To create the announcement with the claim, use
        :meth:`claim_firing_with_announcement`.
        """
        with self._write(f"claim firing {schedule_id}@{_ts(fire_at)}") as c:
            return self._claim(
                c, schedule_id, fire_at, decision, coalesced, reason, announcement_id
            )

    def claim_firing_with_announcement(
        self,
        schedule_id: str,
        fire_at: datetime,
        *,
        decision: str,
        coalesced: int = 0,
        reason: str | None = None,
        announcement: AnnouncementRow | None,
    ) -> bool:
        """Claim the firing and insert its announcement in one transaction.

        False, inserting nothing, if the firing was already claimed. If the
        insert fails (StoreError) the claim is rolled back too.
        """
        ann_id = None if announcement is None else announcement.id
        with self._write(f"claim firing {schedule_id}@{_ts(fire_at)}") as c:
            if not self._claim(c, schedule_id, fire_at, decision, coalesced, reason, ann_id):
                return False
            if announcement is not None:
                c.execute(_INSERT_ANNOUNCEMENT, _announcement_params(announcement))
            return True

    @staticmethod
    def _claim(
        c: sqlite3.Connection,
        schedule_id: str,
        fire_at: datetime,
        decision: str,
        coalesced: int,
        reason: str | None,
        announcement_id: str | None,
    ) -> bool:
        # The foreign key on announcement_id is deferred to COMMIT, so the
        # announcement may be inserted after the claim in the same transaction.
        cur = c.execute(
            "INSERT INTO firings"
            " (schedule_id, fire_at, announcement_id, decision, coalesced, reason)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (schedule_id, fire_at) DO NOTHING",
            (schedule_id, _ts(fire_at), announcement_id, decision, int(coalesced), reason),
        )
        return cur.rowcount > 0

    def get_firing(self, schedule_id: str, fire_at: datetime) -> FiringRow | None:
        rows = self._query(
            "get firing",
            "SELECT * FROM firings WHERE schedule_id = ? AND fire_at = ?",
            (schedule_id, _ts(fire_at)),
        )
        return _firing(rows[0]) if rows else None

    def list_firings(self, schedule_id: str, limit: int = 100) -> list[FiringRow]:
        """A schedule's firings, newest ``fire_at`` first."""
        rows = self._query(
            "list firings",
            "SELECT * FROM firings WHERE schedule_id = ? ORDER BY fire_at DESC LIMIT ?",
            (schedule_id, max(0, limit)),
        )
        return [_firing(r) for r in rows]

    def prune_firings(self, fire_before: datetime) -> int:
        """Delete firings due before the cutoff whose announcement is gone or never was.

        Only safe for a cutoff older than anything the scheduler would still
        consider firing (catch-up window): a deleted claim can be claimed again.
        """
        with self._write("prune firings") as c:
            cur = c.execute(
                "DELETE FROM firings WHERE fire_at < ? AND announcement_id IS NULL",
                (_ts(fire_before),),
            )
            return cur.rowcount

    # --- audit log -----------------------------------------------------------------------

    def insert_audit(self, rows: Collection[AuditRow]) -> None:
        """Append audit entries (one transaction for the batch)."""
        if not rows:
            return
        with self._write(f"insert {len(rows)} audit entries") as c:
            c.executemany(
                "INSERT INTO audit (at, principal_id, role, source, method, path, target_id,"
                " status, created_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        _ts(r.at),
                        r.principal_id,
                        r.role,
                        r.source,
                        r.method,
                        r.path,
                        r.target_id,
                        r.status,
                        r.created_id,
                        r.detail,
                    )
                    for r in rows
                ],
            )

    def list_audit(self, since: datetime | None = None, limit: int = 100) -> list[AuditRow]:
        """Oldest first from ``since`` (inclusive); the newest ``limit`` without ``since``."""
        if since is not None:
            rows = self._query(
                "list audit",
                "SELECT * FROM audit WHERE at >= ? ORDER BY at, seq LIMIT ?",
                (_ts(since), max(0, limit)),
            )
        else:
            rows = self._query(
                "list audit",
                "SELECT * FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (max(0, limit),),
            )
        return [
            AuditRow(
                seq=r["seq"],
                at=_dt(r["at"]),
                principal_id=r["principal_id"],
                role=r["role"],
                source=r["source"],
                method=r["method"],
                path=r["path"],
                target_id=r["target_id"],
                status=r["status"],
                created_id=r["created_id"],
                detail=r["detail"],
            )
            for r in rows
        ]

    # --- events -------------------------------------------------------------------------

    def insert_events(self, events: Collection[EventRow]) -> None:
        """Store events (ids given by the caller); one already stored is left as it is."""
        if not events:
            return
        with self._write(f"insert {len(events)} event(s)") as c:
            c.executemany(
                "INSERT INTO events (id, at, at_us, kind, severity, subject, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [
                    (e.id, _ts(e.at), e.at_us, e.kind, e.severity, e.subject, e.detail)
                    for e in events
                ],
            )

    def list_events(self, since: datetime | None = None, limit: int = 100) -> list[EventRow]:
        """Oldest first: from ``since`` (inclusive) on, or else the newest ``limit``."""
        if since is not None:
            rows = self._query(
                "list events",
                "SELECT * FROM events WHERE at >= ? ORDER BY id LIMIT ?",
                (_ts(since), max(0, limit)),
            )
            return [_event(r) for r in rows]
        rows = self._query(
            "list events", "SELECT * FROM events ORDER BY id DESC LIMIT ?", (max(0, limit),)
        )
        return [_event(r) for r in reversed(rows)]

    def max_event_id(self) -> int:
        rows = self._query("max event id", "SELECT max(id) FROM events")
        return int(rows[0][0] or 0)

    def prune_events(self, before: datetime, keep: int) -> int:
        """Delete events older than ``before``, and all but the newest ``keep``."""
        with self._write("prune events") as c:
            cur = c.execute("DELETE FROM events WHERE at < ?", (_ts(before),))
            removed = cur.rowcount
            cur = c.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (max(0, keep),),
            )
            return removed + cur.rowcount


# --- the async adapter ------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_worker(
    method: Callable[Concatenate[Store, _P], _R], *, write: bool = False
) -> Callable[Concatenate[AsyncStore, _P], Coroutine[Any, Any, _R]]:
    """An ``async`` twin of a :class:`Store` method that runs it on the store's thread.

    A ``write`` updates :attr:`AsyncStore.health`: failing on StoreError, ok on a
    success that wrote (a method answering False or 0 changed nothing, so proves nothing).
    """

    async def call(self: AsyncStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        fn = functools.partial(method, self._store, *args, **kwargs)
        if not write:
            return await self._run(fn)
        try:
            result = await self._run(fn)
        except StoreError as exc:
            self.health.failed(str(exc))
            raise
        # False or 0: nothing to change (no such row, nothing to prune), so nothing was
        # written, and a full disk would not have shown.
        if result is not False and result != 0:
            self.health.succeeded()
        return result

    call.__name__ = method.__name__
    call.__qualname__ = f"AsyncStore.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


class StoreHealth:
    """Whether the store can write, since when, and why not: updated on every write.

    A fault is logged at ERROR once, when it starts, and its end at WARNING; each
    change is also handed to the listeners (``listeners.append(fn)``; ``fn(health)``
    runs on the event loop and must not block), so an event log or a readiness
    check can follow it.
    """

    #: A fault ends only when writes have succeeded, with no failure between, for this
    #: long: a nearly full disk lets small writes through now and then, and one lucky
    #: write must not announce a recovery (the probe writes every second meanwhile).
    RECOVER_AFTER = timedelta(seconds=3)

    def __init__(self, path: str, wall: Callable[[], datetime] | None = None) -> None:
        self._path = path
        self._wall = wall
        #: The first success after the last failure (while not ok).
        self._ok_since: datetime | None = None
        self.ok = True
        self.reason: str | None = None
        self.since: datetime | None = None
        self.failures = 0  # failed writes since the fault began
        self.faults = 0  # faults since start
        self.last_ok_at: datetime | None = None
        self.listeners: list[Callable[[StoreHealth], None]] = []
        #: Called with the reason of every failed write (metrics count them).
        self.failure_listeners: list[Callable[[str], None]] = []

    def set_wall_clock(self, wall: Callable[[], datetime]) -> None:
        self._wall = wall

    def _now(self) -> datetime | None:
        return self._wall() if self._wall is not None else None

    def failed(self, reason: str) -> None:
        self.failures += 1
        self._ok_since = None
        for count in self.failure_listeners:
            count(reason)
        if not self.ok:
            self.reason = reason
            return
        self.ok, self.reason, self.since = False, reason, self._now()
        self.faults += 1
        log.error("store fault: cannot write: %s", reason)
        self._tell()

    def succeeded(self) -> None:
        now = self._now()
        self.last_ok_at = now
        if self.ok:
            return
        if now is not None:
            if self._ok_since is None:
                self._ok_since = now
            if now - self._ok_since < self.RECOVER_AFTER:
                return
        lasted = (
            f" after {(now - self.since).total_seconds():.1f} s"
            if now is not None and self.since is not None
            else ""
        )
        log.warning(
            "store recovered: database %s writes again%s (%d write(s) had failed)",
            self._path,
            lasted,
            self.failures,
        )
        self.ok, self.reason, self.since, self.failures = True, None, now, 0
        self._tell()

    def _tell(self) -> None:
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:  # a listener's bug must not hide the fault
                log.exception("store health listener failed")

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since is not None else None,
            "failed_writes": self.failures,
            "faults": self.faults,
        }


class AsyncStore:
    """:class:`Store` for the event loop: every call runs on one dedicated worker thread.

    Calls are executed one at a time in the order they were made. A call whose
    awaiting task is cancelled may still complete (a write cannot be withdrawn
    once the thread has started it). :attr:`health` follows whether writes succeed.
    """

    def __init__(
        self,
        store: Store,
        executor: concurrent.futures.ThreadPoolExecutor,
        *,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._closed = False
        self.health = StoreHealth(store.path, wall)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        now: datetime | None = None,
        wall: Callable[[], datetime] | None = None,
    ) -> AsyncStore:
        """``wall`` (the service clock's wall time) dates the health changes."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        try:
            loop = asyncio.get_running_loop()
            store = await loop.run_in_executor(
                executor, functools.partial(Store.open, path, now=now)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor, wall=wall)

    @property
    def path(self) -> str:
        return self._store.path

    async def _run(self, fn: Callable[[], _R]) -> _R:
        if self._closed:
            raise StoreError(f"database {self._store.path}: store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        """Close after every call already made has finished. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
        finally:
            self._executor.shutdown(wait=False)

    schema_version = _in_worker(Store.schema_version)
    probe = _in_worker(Store.probe, write=True)
    insert_announcement = _in_worker(Store.insert_announcement, write=True)
    update_announcement = _in_worker(Store.update_announcement, write=True)
    mark_audio_sent = _in_worker(Store.mark_audio_sent, write=True)
    get_announcement = _in_worker(Store.get_announcement)
    list_announcements = _in_worker(Store.list_announcements)
    unfinished_announcements = _in_worker(Store.unfinished_announcements)
    max_announcement_number = _in_worker(Store.max_announcement_number)
    prune_announcements = _in_worker(Store.prune_announcements, write=True)
    get_idempotency = _in_worker(Store.get_idempotency)
    insert_idempotency = _in_worker(Store.insert_idempotency, write=True)
    insert_announcement_with_key = _in_worker(Store.insert_announcement_with_key, write=True)
    prune_idempotency = _in_worker(Store.prune_idempotency, write=True)
    upsert_delivery = _in_worker(Store.upsert_delivery, write=True)
    deliveries = _in_worker(Store.deliveries)
    upsert_schedule = _in_worker(Store.upsert_schedule, write=True)
    get_schedule = _in_worker(Store.get_schedule)
    list_schedules = _in_worker(Store.list_schedules)
    delete_schedule = _in_worker(Store.delete_schedule, write=True)
    set_schedule_paused = _in_worker(Store.set_schedule_paused, write=True)
    set_next_fire_at = _in_worker(Store.set_next_fire_at, write=True)
    claim_firing = _in_worker(Store.claim_firing, write=True)
    claim_firing_with_announcement = _in_worker(Store.claim_firing_with_announcement, write=True)
    get_firing = _in_worker(Store.get_firing)
    list_firings = _in_worker(Store.list_firings)
    prune_firings = _in_worker(Store.prune_firings, write=True)
    insert_audit = _in_worker(Store.insert_audit, write=True)
    list_audit = _in_worker(Store.list_audit)
    upsert_template = _in_worker(Store.upsert_template, write=True)
    list_templates = _in_worker(Store.list_templates)
    delete_template = _in_worker(Store.delete_template, write=True)
    set_gain = _in_worker(Store.set_gain, write=True)
    clear_gain = _in_worker(Store.clear_gain, write=True)
    list_gains = _in_worker(Store.list_gains)
    insert_events = _in_worker(Store.insert_events, write=True)
    list_events = _in_worker(Store.list_events)
    max_event_id = _in_worker(Store.max_event_id)
    prune_events = _in_worker(Store.prune_events, write=True)
