"""Announcement records in the store: what survives a restart, and how it comes back.

:class:`StoreJournal` is the announcer's :class:`~broadcaster.announcer.Journal`
over :class:`~broadcaster.store.AsyncStore`; :func:`recover` decides what a
restart does with records that were not finished:

* ``queued``: accepted and not started: taken back (a due time or an expiry
  that has passed meanwhile is handled by the announcer as usual).
* ``playing``: interrupted mid-air. Playing it again would play it twice, so
  it becomes ``failed`` ("interrupted by a restart") — except an emergency
  (priority at or above ``emergency_priority``) that has not expired, which is
  played again from the start: a repeated emergency bulletin is better than a
  cut-off one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from broadcaster.announcements import Announcement, Registry
from broadcaster.model import AnnouncementSpec, AnnouncementState
from broadcaster.store import AnnouncementRow, AsyncStore

log = logging.getLogger(__name__)


def spec_to_json(spec: AnnouncementSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["zones"] = list(spec.zones)
    return data


def spec_from_json(data: dict[str, Any]) -> AnnouncementSpec:
    fields = dict(data)
    fields["zones"] = tuple(fields.get("zones", ()))
    fields["also"] = tuple(tuple(pair) for pair in fields.get("also", ()))
    known = set(AnnouncementSpec.__dataclass_fields__)
    return AnnouncementSpec(**{k: v for k, v in fields.items() if k in known})


def to_row(ann: Announcement) -> AnnouncementRow:
    record = ann.as_dict()
    details = {
        k: record[k]
        for k in (
            "engine",
            "segments",
            "first_audio_ms",
            "duration_ms",
            "chunks",
            "underruns",
            "formats",
            "warnings",
            "cost_usd",
            "speech_requests",
            "cache_hits",
            "endpoints",
            "created_by",
            "coverage",
        )
    }
    return AnnouncementRow(
        id=ann.id,
        number=ann.number,
        spec=spec_to_json(ann.spec),
        state=ann.state.value,
        created_at=ann.created_at,
        reason=ann.reason,
        schedule_id=ann.schedule_id,
        fire_at=ann.fire_at,
        due_at=ann.due_at,
        expires_at=ann.expires_at,
        started_at=ann.started_at,
        finished_at=ann.finished_at,
        details=details,
    )


def row_as_dict(row: AnnouncementRow) -> dict[str, Any]:
    """A stored record shaped like ``Announcement.as_dict()`` (for history listings)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    spec = row.spec
    out: dict[str, Any] = {
        "id": row.id,
        "number": row.number,
        "state": row.state,
        "reason": row.reason,
        "text": spec.get("text"),
        "zones": spec.get("zones"),
        "voice": spec.get("voice"),
        "language": spec.get("language"),
        "speed": spec.get("speed"),
        "style": spec.get("style"),
        "priority": spec.get("priority"),
        "template": spec.get("template"),
        "created_at": iso(row.created_at),
        "due_at": iso(row.due_at),
        "expires_at": iso(row.expires_at),
        "schedule_id": row.schedule_id,
        "fire_at": iso(row.fire_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
    }
    out.update(row.details)
    return out


class StoreJournal:
    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def record_new(self, ann: Announcement) -> None:
        await self.store.insert_announcement(to_row(ann))

    async def record(self, ann: Announcement) -> None:
        row = to_row(ann)
        updated = await self.store.update_announcement(
            ann.id,
            state=row.state,
            reason=row.reason,
            started_at=row.started_at,
            finished_at=row.finished_at,
            details=row.details,
        )
        if not updated:  # accepted without waiting for the journal (tests, internal use)
            await self.store.insert_announcement(row)


def revive(row: AnnouncementRow, registry: Registry, *, now_us: int) -> Announcement:
    """An in-memory record for a stored one (not yet scheduled)."""
    ann = Announcement(
        id=row.id,
        number=row.number,
        spec=spec_from_json(row.spec),
        created_at=row.created_at,
        accepted_us=now_us,
    )
    ann.due_at, ann.expires_at = row.due_at, row.expires_at
    ann.schedule_id, ann.fire_at = row.schedule_id, row.fire_at
    created_by = row.details.get("created_by")
    ann.created_by = created_by if isinstance(created_by, str) else None
    return ann


async def recover(
    store: AsyncStore, *, registry: Registry, now: datetime, now_us: int, emergency_priority: int
) -> tuple[list[Announcement], list[str]]:
    """Records to take back after a restart, and ids marked failed (interrupted)."""
    to_play: list[Announcement] = []
    interrupted: list[str] = []
    for row in await store.unfinished_announcements():
        ann = revive(row, registry, now_us=now_us)
        if row.state == AnnouncementState.PLAYING.value:
            still_valid = ann.expires_at is None or ann.expires_at > now
            if ann.spec.priority >= emergency_priority and still_valid:
                ann.warnings.append("played again from the start after a restart")
                to_play.append(ann)
                continue
            await store.update_announcement(
                row.id,
                state=AnnouncementState.FAILED.value,
                reason="interrupted by a restart while playing",
                finished_at=now,
            )
            interrupted.append(row.id)
            continue
        to_play.append(ann)
    if to_play or interrupted:
        log.info(
            "restart: %d announcement(s) taken back, %d interrupted", len(to_play), len(interrupted)
        )
    return to_play, interrupted
