"""Announcement records and the zone arbiter: pure bookkeeping, no I/O.

An :class:`Announcement` is the server's account of one request from
acceptance to its final state; it is what ``GET /v1/announcements/{id}``
shows. The :class:`ZoneArbiter` decides which queued announcements may start:
a zone plays one announcement at a time, first come first served, and an
announcement starts only when every one of its zones is free. A later
announcement never overtakes an earlier one that waits for a shared zone.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broadcaster.config import Config, TemplateConfig
from broadcaster.model import AnnouncementSpec, AnnouncementState
from broadcaster.streaming.hub import DeliveryStats


def first_given(*values: Any) -> Any:
    """The first value that is not None (request, then template, then config default)."""
    return next((v for v in values if v is not None), None)


def spoken_language(config: Config, template: TemplateConfig | None, asked: str | None) -> str:
    language: str = first_given(
        asked, template and template.language, config.speech.default_language
    )
    return language


def compose_spec(
    config: Config,
    template: TemplateConfig | None,
    *,
    text: str,
    zones: Sequence[str],
    language: str,
    also: tuple[tuple[str, str], ...] = (),
    voice: str | None = None,
    speed: float | None = None,
    style: str | None = None,
    priority: int | None = None,
    on_preempt: str | None = None,
    chime_before: str | None = None,
    chime_after: str | None = None,
    repeats: int | None = None,
    repeat_gap_ms: int | None = None,
) -> AnnouncementSpec:
    """An announcement from what was asked, its template's defaults and the config's.

    The one place the precedence lives: a value given with the request (or the
    schedule) wins, then the template's, then the config default.
    """
    t, sp = template, config.speech
    return AnnouncementSpec(
        text=text,
        zones=tuple(zones),
        voice=first_given(voice, t and t.voice, sp.default_voice),
        language=language,
        speed=first_given(speed, t and t.speed, sp.default_speed),
        style=first_given(style, t and t.style),
        priority=first_given(priority, t and t.priority, config.announcements.default_priority),
        split=t.split if t else True,
        max_new_tokens=t.max_new_tokens if t else None,
        template=t.name if t else None,
        on_preempt=first_given(on_preempt, t and t.on_preempt, "stack"),
        chime_before=first_given(chime_before, t and t.chime_before),
        chime_after=first_given(chime_after, t and t.chime_after),
        repeats=first_given(repeats, t and t.repeats, 0),
        repeat_gap_ms=first_given(repeat_gap_ms, t and t.repeat_gap_ms, 1000),
        also=also,
    )


@dataclass(eq=False)
class Announcement:
    id: str
    number: int  # the u32 stream number in binary audio frames
    spec: AnnouncementSpec
    created_at: datetime
    accepted_us: int
    state: AnnouncementState = AnnouncementState.QUEUED
    reason: str | None = None
    engine: str | None = None
    segments: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    start_at_us: int | None = None
    first_audio_sent_us: int | None = None
    duration_ms: int | None = None
    chunks: int = 0
    underruns: int = 0
    formats: list[str] = field(default_factory=list)
    deliveries: dict[str, DeliveryStats] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: When it should start (wall clock, UTC); None: as soon as its zones are free.
    due_at: datetime | None = None
    #: After this it never starts (a queued one is dropped, state "expired").
    expires_at: datetime | None = None
    schedule_id: str | None = None
    fire_at: datetime | None = None
    cost: float | None = None  # USD, when the speech engine reports it
    #: How often a higher priority stopped it (each time it was replayed, if stacked).
    preemptions: int = 0
    speech_requests: int = 0
    cache_hits: int = 0
    #: The API token id that asked for it (None: a schedule, or made internally).
    created_by: str | None = None

    def as_dict(self) -> dict[str, object]:
        s = self.spec
        first_audio_ms = (
            None
            if self.first_audio_sent_us is None
            else round((self.first_audio_sent_us - self.accepted_us) / 1000, 1)
        )
        return {
            "id": self.id,
            "number": self.number,
            "state": self.state.value,
            "reason": self.reason,
            "text": s.text,
            "zones": list(s.zones),
            "voice": s.voice,
            "language": s.language,
            "speed": s.speed,
            "style": s.style,
            "priority": s.priority,
            "template": s.template,
            "engine": self.engine,
            "segments": self.segments,
            "created_at": self.created_at.isoformat(),
            "due_at": self.due_at.isoformat() if self.due_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "schedule_id": self.schedule_id,
            "fire_at": self.fire_at.isoformat() if self.fire_at else None,
            "created_by": self.created_by,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "first_audio_ms": first_audio_ms,
            "duration_ms": self.duration_ms,
            "chunks": self.chunks,
            "underruns": self.underruns,
            "formats": self.formats,
            "warnings": self.warnings,
            "cost_usd": self.cost,
            "preemptions": self.preemptions,
            "on_preempt": s.on_preempt,
            "chime_before": s.chime_before,
            "chime_after": s.chime_after,
            "repeats": s.repeats,
            "also": [{"language": lang, "text": text} for lang, text in s.also],
            "speech_requests": self.speech_requests,
            "cache_hits": self.cache_hits,
            "endpoints": {k: v.as_dict() for k, v in self.deliveries.items()},
        }


class Registry:
    """Announcements by id: every unfinished one, plus the latest ``history_limit`` finished.

    Bounded: when a finished announcement pushes the history past its limit,
    the oldest *finished* one is forgotten. Unfinished ones are never evicted
    (the arbiter's queue limit bounds them).
    """

    def __init__(self, history_limit: int, *, first_number: int = 1) -> None:
        self._items: OrderedDict[str, Announcement] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._history_limit = history_limit
        self._next_number = max(1, first_number % 0xFFFFFFFF)

    def create(
        self,
        spec: AnnouncementSpec,
        *,
        now: datetime,
        now_us: int,
        ann_id: str | None = None,
        number: int | None = None,
    ) -> Announcement:
        if number is None:
            number = self._next_number
            self._next_number = self._next_number % 0xFFFFFFFF + 1  # u32, never 0
        ann = Announcement(
            id=ann_id or str(uuid.uuid4()),
            number=number,
            spec=spec,
            created_at=now,
            accepted_us=now_us,
        )
        self._items[ann.id] = ann
        return ann

    def get(self, ann_id: str) -> Announcement | None:
        return self._items.get(ann_id)

    def renumber(self, ann: Announcement) -> None:
        """A new stream number (a replay is a new stream for the endpoints)."""
        ann.number = self._next_number
        self._next_number = self._next_number % 0xFFFFFFFF + 1

    def forget(self, ann_id: str) -> None:
        """Drop a record that was never accepted (its store write failed)."""
        self._items.pop(ann_id, None)

    def adopt(self, ann: Announcement) -> None:
        """Take in a record made elsewhere (restored after a restart)."""
        self._items[ann.id] = ann
        if ann.number >= self._next_number:
            self._next_number = ann.number % 0xFFFFFFFF + 1

    def unfinished(self) -> list[Announcement]:
        """Every announcement not in a final state, oldest first."""
        return [a for a in self._items.values() if not a.state.is_final]

    def recent(self, limit: int) -> list[Announcement]:
        return list(reversed(self._items.values()))[:limit]

    def finished(self, ann: Announcement) -> None:
        self._finished[ann.id] = None
        while len(self._finished) > self._history_limit:
            old, _ = self._finished.popitem(last=False)
            self._items.pop(old, None)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the arbiter wants done now."""

    start: list[str]
    #: Playing announcements to stop, with the id of the one that takes their zones.
    preempt: list[tuple[str, str]]


class ZoneArbiter:
    """Which announcements may play now, and which must give way.

    Per zone the highest priority plays. Waiting announcements are considered
    highest priority first, equal priorities first come first served. One may
    start when each of its zones is free, or held by a playing announcement of
    *lower* priority — that one is preempted (stopped everywhere; the announcer
    replays it afterwards or drops it, per its policy). A waiting announcement
    claims its zones for everything considered after it, so a later or lower
    announcement never overtakes it. Pure bookkeeping: no I/O, no clock.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[frozenset[str], int, int]] = {}  # id -> zones, prio, seq
        self._playing: dict[str, tuple[frozenset[str], int, int]] = {}
        self._busy: dict[str, str] = {}  # zone -> id playing there
        self._seq = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def submit(
        self, ann_id: str, zones: frozenset[str], priority: int = 100, *, seq: int | None = None
    ) -> None:
        """Queue an announcement. ``seq`` keeps its original place (a stacked replay)."""
        if seq is None:
            self._seq += 1
            seq = self._seq
        self._waiting[ann_id] = (zones, priority, seq)

    def seq_of(self, ann_id: str) -> int | None:
        """Its place in the queue (kept while it plays, so a stacked replay keeps it)."""
        entry = self._waiting.get(ann_id) or self._playing.get(ann_id)
        return entry[2] if entry else None

    def withdraw(self, ann_id: str) -> bool:
        """Remove a waiting announcement (cancelled or expired before start)."""
        return self._waiting.pop(ann_id, None) is not None

    def decide(self) -> Decision:
        """Start what may start, preempting lower priorities; both are applied at once."""
        start: list[str] = []
        preempt: list[tuple[str, str]] = []
        claimed: set[str] = set()
        order = sorted(self._waiting.items(), key=lambda kv: (-kv[1][1], kv[1][2]))
        for ann_id, (zones, priority, seq) in order:
            if zones.isdisjoint(claimed):
                holders = {self._busy[z] for z in zones if z in self._busy}
                if all(self._playing[h][1] < priority for h in holders):
                    for holder in sorted(holders):
                        preempt.append((holder, ann_id))
                        self._stop(holder)
                    start.append(ann_id)
                    self._waiting.pop(ann_id)
                    self._playing[ann_id] = (zones, priority, seq)
                    for zone in zones:
                        self._busy[zone] = ann_id
            # Started or not, its zones are claimed for everyone considered after it.
            claimed |= zones
        return Decision(start, preempt)

    def startable(self) -> list[str]:
        """Ids to start now (preemptions are applied but not reported; see decide())."""
        return self.decide().start

    def release(self, ann_id: str) -> None:
        """A playing announcement ended (or freed its zones early)."""
        self._stop(ann_id)

    def _stop(self, ann_id: str) -> None:
        entry = self._playing.pop(ann_id, None)
        if entry is None:
            return
        for zone in entry[0]:
            if self._busy.get(zone) == ann_id:
                del self._busy[zone]

    def holder(self, zone: str) -> str | None:
        return self._busy.get(zone)

    def queued(self) -> list[str]:
        """Ids waiting, in the order they would be considered."""
        order = sorted(self._waiting.items(), key=lambda kv: (-kv[1][1], kv[1][2]))
        return [ann_id for ann_id, _ in order]
