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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broadcaster.config import Config, TemplateConfig
from broadcaster.model import AnnouncementSpec, AnnouncementState, priority_band
from broadcaster.speech import textprep
from broadcaster.streaming.hub import DeliveryStats


def first_given(*values: Any) -> Any:
    """The first value that is not None (request, then template, then config default)."""
    return next((v for v in values if v is not None), None)


def spoken_language(config: Config, template: TemplateConfig | None, asked: str | None) -> str:
    language: str = first_given(
        asked, template and template.language, config.speech.default_language
    )
    return language


def prepare_spoken(
    language: str, text: str, also: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """Each language's text as it will be spoken: the one place free text and rendered
    templates become what the speech engine is given (times, phone numbers, codes,
    platforms, fractions read per language by :func:`textprep.prepare_text`).

    The caption and the record's ``text`` stay as the operator wrote them.
    """
    return tuple(
        (lang, textprep.prepare_text(part, lang)) for lang, part in ((language, text), *also)
    )


def spoken_texts(spec: AnnouncementSpec) -> tuple[tuple[str, str], ...]:
    """(language, text) pairs the engine speaks for ``spec``, in order."""
    return spec.spoken or prepare_spoken(spec.language, spec.text, spec.also)


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
    spoken: tuple[tuple[str, str], ...] | None = None,
) -> AnnouncementSpec:
    """An announcement from what was asked, its template's defaults and the config's.

    The one place the precedence lives: a value given with the request (or the
    schedule) wins, then the template's, then the config default. ``spoken``: the
    result of :func:`prepare_spoken` for these texts, when the caller made it off the
    event loop (a long text takes milliseconds); made here otherwise.
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
        spoken=spoken if spoken is not None else prepare_spoken(language, text, also),
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
    #: Provider tasks that may be billed (abandoned, timed out and superseded ones
    #: included; ``cost`` is their exact decimal sum) and how many were heard.
    speech_tasks_billed: int = 0
    speech_tasks_heard: int = 0
    #: The API token id that asked for it (None: a schedule, or made internally).
    created_by: str | None = None
    #: Per endpoint of its audience: which of *its* zones that endpoint plays in.
    endpoint_zones: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Per zone: who played it and whether anyone is known to have heard it
    #: (see :func:`zone_coverage`); filled in when it ends.
    coverage: dict[str, dict[str, object]] = field(default_factory=dict)
    #: A live page's uplink figures (frames, dropped, latency; see broadcaster.paging).
    live: dict[str, object] | None = None

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
            "spoken": [{"language": lang, "text": text} for lang, text in spoken_texts(s)],
            "speech_requests": self.speech_requests,
            "cache_hits": self.cache_hits,
            "speech_tasks_billed": self.speech_tasks_billed,
            "speech_tasks_heard": self.speech_tasks_heard,
            "endpoints": {k: v.as_dict() for k, v in self.deliveries.items()},
            "coverage": self.coverage,
            "kind": s.kind,
            "live": self.live,
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


# --- admission ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiting:
    """An admitted announcement that has not started yet, as admission counts it."""

    id: str
    zones: frozenset[str]
    priority: int
    seq: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admission's answer: admitted (maybe pushing others out), or refused with a reason."""

    admitted: bool
    reason: str | None = None
    #: Waiting announcements of lower priority pushed out to make room (to be dropped).
    push_out: tuple[Waiting, ...] = ()


class Admission:
    """Which announcements may wait, per zone and priority band. Pure: no I/O, no clock.

    Each (zone, band) has its own bound on waiting announcements (accepted, not
    yet playing, including those waiting for a due time): ``band_limit`` for the
    background, routine and operational bands, ``emergency_limit`` for the
    emergency band. Load in one band or zone therefore never refuses an
    announcement of another band or zone. When an arrival finds its (zone, band)
    full, the lowest-priority waiting announcement of that band there (the
    youngest among equals) is pushed out if its priority is lower than the
    arrival's; otherwise the arrival is refused. An announcement in several zones
    counts once in each.
    """

    def __init__(
        self, *, band_limit: int, emergency_limit: int, emergency_priority: int = 224
    ) -> None:
        self.band_limit = band_limit
        self.emergency_limit = emergency_limit
        self.emergency_priority = emergency_priority
        self._waiting: dict[str, tuple[Waiting, str]] = {}  # id -> (entry, band)
        self._buckets: dict[tuple[str, str], dict[str, Waiting]] = {}
        self._seq = 0

    def band(self, priority: int) -> str:
        if priority >= self.emergency_priority:
            return "emergency"
        name = priority_band(priority)
        return "operational" if name == "emergency" else name

    def limit(self, band: str) -> int:
        return self.emergency_limit if band == "emergency" else self.band_limit

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, ann_id: object) -> bool:
        return ann_id in self._waiting

    def admit(
        self, ann_id: str, zones: Iterable[str], priority: int, *, force: bool = False
    ) -> Verdict:
        """Admit (and count) an announcement, or refuse it; ``force`` always admits.

        ``force`` is for announcements admitted before (restored after a restart,
        replayed after a preemption): counted again, never refused, pushing none out.
        """
        zone_set = frozenset(zones)
        band = self.band(priority)
        limit = self.limit(band)
        victims: dict[str, Waiting] = {}
        if not force:
            for zone in sorted(zone_set):
                bucket = self._buckets.get((zone, band), {})
                members = [w for w in bucket.values() if w.id not in victims]
                if len(members) < limit:
                    continue
                lower = [w for w in members if w.priority < priority]
                if not lower:
                    return Verdict(
                        False,
                        f"zone {zone}: {len(members)} {band} announcement(s) already waiting "
                        f"(limit {limit} per zone and band), none of lower priority than "
                        f"{priority}",
                    )
                victim = min(lower, key=lambda w: (w.priority, -w.seq))
                victims[victim.id] = victim
        for victim in victims.values():
            self.remove(victim.id)
        self._seq += 1
        # One admitted before (a replay, a restored record) counts as the oldest of its
        # priority: pushed out last among equals.
        self.put(Waiting(ann_id, zone_set, priority, 0 if force else self._seq))
        return Verdict(True, push_out=tuple(victims.values()))

    def put(self, entry: Waiting) -> None:
        """Count an entry as waiting again (undo of a push-out whose arrival failed)."""
        self.remove(entry.id)
        band = self.band(entry.priority)
        self._waiting[entry.id] = (entry, band)
        for zone in entry.zones:
            self._buckets.setdefault((zone, band), {})[entry.id] = entry

    def remove(self, ann_id: str) -> bool:
        """No longer waiting (started, cancelled, expired, dropped)."""
        found = self._waiting.pop(ann_id, None)
        if found is None:
            return False
        entry, band = found
        for zone in entry.zones:
            bucket = self._buckets.get((zone, band))
            if bucket is not None:
                bucket.pop(ann_id, None)
                if not bucket:
                    del self._buckets[(zone, band)]
        return True

    def depths(self) -> dict[tuple[str, str], int]:
        """Waiting announcements per (zone, band), for metrics and the API."""
        return {key: len(bucket) for key, bucket in self._buckets.items()}

    def band_depths(self) -> dict[str, int]:
        """Waiting announcements per band (each counted once)."""
        out: dict[str, int] = {}
        for _, band in self._waiting.values():
            out[band] = out.get(band, 0) + 1
        return out


# --- coverage -------------------------------------------------------------------------------

#: Delivery states in which the endpoint itself said its output started playing.
_HEARD = ("started", "finished")


def zone_coverage(
    zones: Sequence[str],
    deliveries: Mapping[str, DeliveryStats],
    endpoint_zones: Mapping[str, Iterable[str]],
) -> dict[str, dict[str, object]]:
    """Per zone: its endpoints, how many started/finished playing, and whether it was heard.

    ``heard`` is True when at least one endpoint of the zone reported (playback
    receipt) that its output started; "unconfirmed" when none did but the whole
    audio was sent to at least one endpoint there that is still connected
    (delivery state ``sent``: an endpoint that sends no playback receipts);
    False otherwise (no endpoint, or all of them left, were cancelled or missed it).
    """
    out: dict[str, dict[str, object]] = {}
    for zone in zones:
        eps = sorted(eid for eid, zs in endpoint_zones.items() if zone in zs and eid in deliveries)
        states = [deliveries[eid].state for eid in eps]
        started = sum(1 for s in states if s in _HEARD)
        sent = sum(1 for s in states if s == "sent")
        heard: bool | str = True if started else ("unconfirmed" if sent else False)
        out[zone] = {
            "endpoints": eps,
            "started": started,
            "finished": sum(1 for s in states if s == "finished"),
            "sent_unconfirmed": sent,
            "heard": heard,
        }
    return out


def coverage_outcome(
    coverage: Mapping[str, Mapping[str, object]],
) -> tuple[AnnouncementState, str | None]:
    """The final state of an announcement that played, from its zone coverage.

    finished: heard (verified) in every zone; unconfirmed: every zone got the
    audio but some has no playback receipt; partial: nobody heard it in some
    zone (but somebody did or may have elsewhere); failed: in none.
    """
    missed = [z for z, c in coverage.items() if c["heard"] is False]
    unconfirmed = [z for z, c in coverage.items() if c["heard"] == "unconfirmed"]
    if missed and len(missed) == len(coverage):
        return AnnouncementState.FAILED, f"heard in none of its zones ({', '.join(missed)})"
    if missed:
        why = [
            f"{z} ({'no endpoint' if not coverage[z]['endpoints'] else 'every endpoint missed it'})"
            for z in missed
        ]
        return AnnouncementState.PARTIAL, f"not heard in zone(s) {', '.join(why)}"
    if unconfirmed:
        return (
            AnnouncementState.UNCONFIRMED,
            f"audio sent but no playback receipt from zone(s) {', '.join(unconfirmed)}",
        )
    return AnnouncementState.FINISHED, None
