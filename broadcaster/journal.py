"""Announcement records in the store: what survives a restart, and how it comes back.

:class:`StoreJournal` is the announcer's :class:`~broadcaster.announcer.Journal`
over :class:`~broadcaster.store.AsyncStore`; :func:`recover` decides what a
restart does with records that were not finished:

* ``queued``: accepted and not started: taken back (a due time or an expiry
  that has passed meanwhile is handled by the announcer as usual) — except a
  scheduled firing (prepared ahead, so stored with ``grace_until``, its misfire
  deadline) found past that deadline: it becomes ``missed`` ("missed by 42 s
  (grace 5 s), found at a restart"), as the planner would have decided had the
  server been down at its due time. An emergency firing that has not expired is
  played late, as the planner does.
* ``playing`` with the "audio all sent" mark (``audio_sent_at``): every chunk had
  gone out, the kill fell in its last playout delay: ``finished`` (a warning says
  so), never played again.
* ``playing`` otherwise: interrupted mid-air. Playing it again would play it
  twice, so it becomes ``failed`` ("interrupted by a restart") — except an
  emergency (priority at or above ``emergency_priority``) that has not expired,
  which is played again from the start: a repeated emergency bulletin is better
  than a cut-off one.

The announcer writes ``playing`` (with ``started_at``) and waits for it to land
before the first chunk of a non-emergency goes out, so a record still ``queued``
was never heard. When the store cannot write that mark, a non-emergency is not
played at all (``failed``, "store unavailable"); an emergency plays anyway, and
if the server then dies before the store has recovered, a restart finds it
``queued`` and plays it again (within its expiry): the one case of a repeat,
and only for an emergency.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from broadcaster.announcements import Announcement, Registry, spoken_texts
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
    fields["spoken"] = tuple(tuple(pair) for pair in fields.get("spoken", ()))
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
            "speech_tasks_billed",
            "speech_tasks_heard",
            "endpoints",
            "created_by",
            "coverage",
            "live",
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
        "spoken": _spoken_of(spec),
        "kind": spec.get("kind", "speech"),
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


def _spoken_of(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The stored spoken texts; made again for a record stored before they were kept."""
    pairs = spec.get("spoken")
    if not pairs:
        try:
            pairs = spoken_texts(spec_from_json(spec))
        except (TypeError, ValueError):  # not a whole spec: nothing to say
            pairs = ()
    return [{"language": lang, "text": text} for lang, text in pairs]


class StoreJournal:
    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def record_new(self, ann: Announcement) -> None:
        await self.store.insert_announcement(to_row(ann))

    async def record(self, ann: Announcement) -> None:
        await self._record(ann, starting=False)

    async def mark_started(self, ann: Announcement) -> None:
        """The "playing" mark of a new playout (clears an "all audio sent" mark left by
        an earlier, preempted stream of it)."""
        await self._record(ann, starting=True)

    async def _record(self, ann: Announcement, *, starting: bool) -> None:
        row = to_row(ann)
        extra: dict[str, Any] = {"audio_sent_at": None} if starting else {}
        updated = await self.store.update_announcement(
            ann.id,
            state=row.state,
            reason=row.reason,
            started_at=row.started_at,
            finished_at=row.finished_at,
            details=row.details,
            **extra,
        )
        if not updated:  # accepted without waiting for the journal (tests, internal use)
            await self.store.insert_announcement(row)

    async def mark_audio_sent(self, ann: Announcement, at: datetime) -> None:
        """The "audio all sent" mark (a restart then counts it finished)."""
        if not await self.store.mark_audio_sent(ann.id, at):
            await self.record(ann)  # held in memory so far: store it whole first
            await self.store.mark_audio_sent(ann.id, at)


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


def _secs(delta: timedelta) -> str:
    rounded = round(delta.total_seconds(), 1)
    return f"{int(rounded)} s" if rounded == int(rounded) else f"{rounded:.1f} s"


def stale_firing_reason(row: AnnouncementRow, now: datetime, emergency: bool) -> str | None:
    """Why a stored, not yet started scheduled firing must not play now (None: it may).

    Past its misfire deadline (``grace_until``) it is missed, unless it is an
    emergency whose expiry is set and still ahead (the planner's rule 5).
    """
    if row.grace_until is None or row.fire_at is None or now <= row.grace_until:
        return None
    if emergency and row.expires_at is not None and now < row.expires_at:
        return None
    grace = row.grace_until - row.fire_at
    return f"missed by {_secs(now - row.fire_at)} (grace {_secs(grace)}), found at a restart"


async def recover(
    store: AsyncStore, *, registry: Registry, now: datetime, now_us: int, emergency_priority: int
) -> tuple[list[Announcement], list[str]]:
    """Records to take back after a restart, and ids ended here (failed, missed, finished)."""
    to_play: list[Announcement] = []
    ended: list[str] = []
    for row in await store.unfinished_announcements():
        ann = revive(row, registry, now_us=now_us)
        emergency = ann.spec.priority >= emergency_priority
        if ann.spec.kind in ("live", "replay"):
            # A live page cannot be played again: its talker and uplink are gone (and a
            # replay's audio is not taken back either).
            await store.update_announcement(
                row.id,
                state=AnnouncementState.FAILED.value,
                reason=f"{ann.spec.kind} page interrupted by a restart",
                finished_at=now,
            )
            ended.append(row.id)
            continue
        if row.state == AnnouncementState.PLAYING.value:
            if row.audio_sent_at is not None:
                warnings = [*row.details.get("warnings", [])]
                warnings.append("server stopped during the last playout-delay of audio")
                await store.update_announcement(
                    row.id,
                    state=AnnouncementState.FINISHED.value,
                    reason=None,
                    finished_at=row.audio_sent_at,
                    details={**row.details, "warnings": warnings},
                )
                log.info("restart: %s had sent all its audio: finished", row.id)
                ended.append(row.id)
                continue
            still_valid = ann.expires_at is None or ann.expires_at > now
            if emergency and still_valid:
                ann.warnings.append("played again from the start after a restart")
                to_play.append(ann)
                continue
            await store.update_announcement(
                row.id,
                state=AnnouncementState.FAILED.value,
                reason="interrupted by a restart while playing",
                finished_at=now,
            )
            ended.append(row.id)
            continue
        stale = stale_firing_reason(row, now, emergency)
        if stale is not None:
            await store.update_announcement(
                row.id, state=AnnouncementState.MISSED.value, reason=stale, finished_at=now
            )
            log.warning("restart: schedule %s firing %s %s", row.schedule_id, row.id, stale)
            ended.append(row.id)
            continue
        if row.grace_until is not None and row.fire_at is not None and now > row.fire_at:
            grace = _secs(row.grace_until - row.fire_at)
            ann.warnings.append(
                f"late by {_secs(now - row.fire_at)} after a restart (grace {grace})"
            )
        to_play.append(ann)
    if to_play or ended:
        log.info("restart: %d announcement(s) taken back, %d ended", len(to_play), len(ended))
    return to_play, ended
