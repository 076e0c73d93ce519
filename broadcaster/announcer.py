"""Plays announcements: speech → transcode → pace → fan-out, one task per announcement.

The :class:`Announcer` owns every playout task (in its own TaskGroup), the
zone arbiter and the registry of records. Decisions live in the pure pieces
it drives (:class:`~broadcaster.announcements.ZoneArbiter`,
:class:`~broadcaster.audio.pacer.Pacer`, :class:`~broadcaster.streaming.hub.Hub`);
this module is the async glue, plus the rules for what each outcome means for
the record.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from broadcaster.announcements import (
    Admission,
    Announcement,
    Registry,
    Waiting,
    ZoneArbiter,
    coverage_outcome,
    spoken_texts,
    zone_coverage,
)
from broadcaster.audio.chimes import ChimeError, chime_pcm, load_chime_file, resolve_chime_name
from broadcaster.audio.live_level import LiveLeveler
from broadcaster.audio.loudness import LoudnessNormalizer
from broadcaster.audio.pacer import Pacer
from broadcaster.audio.transcode import MultiTranscoder
from broadcaster.clock import Clock, wait_event_or_deadline
from broadcaster.gains import Gains
from broadcaster.model import (
    AnnouncementSpec,
    AnnouncementState,
    EncodedFrame,
    SpeechRequest,
    StreamFormat,
)
from broadcaster.paging import LiveSource
from broadcaster.speech.chain import EngineChain, FallbackPolicy, SpeechOutcome
from broadcaster.speech.engine import SpeechEngine, SpeechError, SynthesisMeta
from broadcaster.speech.prepared import (
    AudioProgramme,
    ChimeMaker,
    PreparedSpeech,
    Programme,
    Sound,
    Speech,
)
from broadcaster.speech.segmenter import split_text
from broadcaster.streaming import wire
from broadcaster.streaming.hub import DeliveryStats, EndpointLink, Hub
from broadcaster.streaming.session import format_spec

log = logging.getLogger(__name__)

#: espeak at 175 words per minute speaks about 14 characters a second; used only
#: for the *estimate* in announcement_started before the audio exists.
_CHARS_PER_SECOND = 14.0

#: How often a zone without endpoints is looked at again while an announcement waits.
_ENDPOINT_POLL_US = 50_000

#: The first wait before a failed journal write is tried again (then doubling).
_RETRY_FIRST_US = 100_000

#: Batches of encoded frames the synthesis side may run ahead of the pacer.
#: Full → synthesis waits (it is faster than real time, so this only bounds memory).
_AHEAD_BATCHES = 64


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@dataclass
class _Live:
    """What a late joiner needs of a playing announcement."""

    by_format: dict[str, list[EndpointLink]]
    #: format key -> its announcement_started (without a gain; see _started_text)
    started: dict[str, wire.AnnouncementStarted]
    #: Recently queued frames per format: (play_at_us, duration_us, frame). Kept only
    #: while still fresh (play time not passed), so bounded by one playout delay.
    recent: dict[str, deque[tuple[int, int, bytes]]]
    #: (format key, gain_db) -> the announcement_started text, made once per pair
    started_text: dict[tuple[str, float], str] = field(default_factory=dict)


class QueueFull(Exception):
    """Not admitted: its band's queue is full in one of its zones; the API answers 503.

    ``record`` is the announcement's record, in state ``refused`` with the reason
    (kept in the registry and the journal like any other).
    """

    def __init__(self, reason: str, record: Announcement | None = None) -> None:
        super().__init__(reason)
        self.record = record


class EventSink(Protocol):
    """Where faults go (the service's event log): one call per event."""

    def emit(self, kind: str, severity: str, subject: str, detail: str) -> object: ...


class Observer(Protocol):
    """What the metrics want to hear of (counted at the source, read at scrape time)."""

    def announcement_final(self, ann: Announcement) -> None: ...

    def first_audio(self, engine: str, seconds: float) -> None: ...

    def speech_failed(self, engine: str) -> None: ...


class AlreadyClaimed(Exception):
    """A scheduled firing was already acted on (before a restart): not played twice."""


def _record_billing(ann: Announcement, meta: SynthesisMeta) -> None:
    """Cost (an exact decimal sum, shown as a JSON number), tasks billed and heard."""
    cost = meta.cost
    ann.cost = None if cost is None else float(cost)
    ann.speech_tasks_billed = meta.tasks_billed
    ann.speech_tasks_heard = meta.tasks_heard
    for note in meta.notes:  # faults the engine got through (e.g. a dropped link)
        if note not in ann.warnings:
            ann.warnings.append(note)


class _StartNotRecorded(Exception):
    """The "playing" mark could not be written: a non-emergency is not played."""


class Journal(Protocol):
    """Where announcement records are kept durably (the store); optional."""

    async def record_new(self, ann: Announcement) -> None:
        """Persist a new record; must be durable when it returns (before the API answers)."""
        ...

    async def record(self, ann: Announcement) -> None:
        """Persist the current state of a record."""
        ...

    async def mark_started(self, ann: Announcement) -> None:
        """Persist that a playout of it starts (state ``playing``); awaited before its
        first chunk is sent."""
        ...

    async def mark_audio_sent(self, ann: Announcement, at: datetime) -> None:
        """Persist that its last chunk was sent at ``at`` (a restart counts it finished)."""
        ...


@dataclass(frozen=True, slots=True)
class PlayoutSettings:
    lead_us: int
    opus_bitrate_bps: int
    first_segment_max_chars: int
    #: Waiting announcements per zone and band (background, routine, operational).
    queue_limit: int
    #: How long an announcement waits for an endpoint when its zones have none.
    wait_for_endpoints_us: int = 0
    #: Waiting emergencies per zone.
    emergency_queue_limit: int = 1000
    #: At or above: an emergency (own admission bound; accepted and played even when
    #: the store cannot write).
    emergency_priority: int = 224
    audio: AudioSettings = field(default_factory=lambda: AudioSettings())
    #: Failed journal writes are retried after 100 ms, doubling up to this.
    journal_retry_max_us: int = 5_000_000


@dataclass(frozen=True, slots=True)
class AudioSettings:
    normalize: bool = True
    target_lufs: float = -16.0
    true_peak_dbtp: float = -1.0
    #: Speech and chimes are normalized this far below ``true_peak_dbtp`` (make-up
    #: gain keeps their loudness) to leave room for what the codecs in use add to the
    #: peaks (``transcode.encoder_headroom_db``); each format's own limiter then holds
    #: the ceiling in the audio endpoints decode.
    encoder_headroom_db: float = 0.0
    #: Where a chime named by a bare "file:NAME" is looked up; limits on chime files.
    chime_dir: str | None = None
    chime_max_kb: int = 2048
    chime_max_s: float = 10.0


def _source_ceiling(audio: AudioSettings) -> float:
    """The true-peak ceiling for speech and chimes at the engine's rate."""
    return max(-24.0, audio.true_peak_dbtp - audio.encoder_headroom_db)


class Announcer:
    def __init__(
        self,
        *,
        engine: SpeechEngine,
        fallback: SpeechEngine | None = None,
        fallback_policy: FallbackPolicy | None = None,
        hub: Hub,
        clock: Clock,
        settings: PlayoutSettings,
        registry: Registry,
        transcode_executor: Executor | None = None,
        journal: Journal | None = None,
        events: EventSink | None = None,
        observer: Observer | None = None,
        gains: Gains | None = None,
    ) -> None:
        #: Zone and endpoint gains, sent to each endpoint in announcement_started.
        self.gains = gains
        self.engine = engine
        self.speech = EngineChain(engine, fallback, clock=clock, policy=fallback_policy)
        self.hub = hub
        self.clock = clock
        self.settings = settings
        self.registry = registry
        self.arbiter = ZoneArbiter()
        self.admission = Admission(
            band_limit=settings.queue_limit,
            emergency_limit=settings.emergency_queue_limit,
            emergency_priority=settings.emergency_priority,
        )
        self.events = events
        self.observer = observer
        #: When speech was asked for, for announcements not prepared ahead (metrics).
        self._speech_asked_us: dict[str, int] = {}
        #: Why the latest announcement spoken was spoken by the fallback engine (None:
        #: by the primary); for readiness.
        self.speech_fallback_reason: str | None = None
        #: Per endpoint: when its output last started a stream, minus when that stream
        #: was to start (server clock, from its playback receipt): its sync error.
        self.playback_skew_us: dict[str, int] = {}
        # PyAV work leaves the event loop for these threads (tests may pass an inline one).
        self._executor = transcode_executor or ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="transcode"
        )
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, str] = {}
        #: Playing announcements being preempted -> (the announcement taking their
        #: zones, their place in the queue for a stacked replay).
        self._preempted: dict[str, tuple[str, int | None]] = {}
        #: The very connections each playing announcement was started on: a cancel
        #: must reach those, not a newer connection of the same endpoint id.
        self._audiences: dict[str, list[EndpointLink]] = {}
        #: Playing announcements whose audio is still being sent (late joins attach here).
        self._live: dict[str, _Live] = {}
        #: Announcements whose announcement_ended was sent (audio all queued).
        self._ended: set[str] = set()
        self.journal = journal
        #: Announcements waiting for their due time: id -> when to hand them to the
        #: arbiter (server clock: one lead time before they are due).
        self._timers: dict[str, int] = {}
        #: Speech being made ahead for announcements that are not playing yet.
        self._prepared: dict[str, AudioProgramme] = {}
        #: Live pages' sources (their audio comes from a paging uplink).
        self._live_sources: dict[str, LiveSource] = {}
        #: Who waits for a record's final state (a paging uplink): resolved in _settle.
        self._watchers: dict[str, list[asyncio.Future[Announcement]]] = {}
        #: Records whose state changed and is not yet in the journal.
        self._dirty: dict[str, Announcement] = {}
        self._dirty_event = asyncio.Event()
        #: Journal writes that failed (each is retried until it lands).
        self.journal_failures = 0

    # --- requests from the API --------------------------------------------------------------

    async def accept(
        self,
        spec: AnnouncementSpec,
        *,
        due_at: datetime | None = None,
        expires_at: datetime | None = None,
        schedule_id: str | None = None,
        fire_at: datetime | None = None,
        persist: Callable[[Announcement], Awaitable[bool]] | None = None,
        created_by: str | None = None,
        live: LiveSource | None = None,
    ) -> Announcement:
        """Accept an announcement durably (journal first), then schedule it.

        ``live``: a live page (``spec.kind == "live"``) whose audio is this source
        instead of speech; it plays through the same admission, arbiter and playout.

        ``persist`` replaces the journal's insert (the scheduler stores the record
        together with its firing claim; it returns False when that firing was
        already claimed, and then :class:`AlreadyClaimed` is raised). Raises
        :class:`QueueFull`, or the store's error when the record cannot be stored
        (then nothing was accepted).
        """
        ann = self._create(spec, due_at=due_at, expires_at=expires_at)
        ann.schedule_id, ann.fire_at = schedule_id, fire_at
        ann.created_by = created_by
        if live is not None:
            ann.live = live.stats
        verdict = self.admission.admit(ann.id, spec.zones, spec.priority)
        if not verdict.admitted:
            reason = verdict.reason or "not admitted"
            await asyncio.shield(self._store_refused(ann, reason, persist))
            raise QueueFull(reason, ann)
        if live is not None:
            self._attach_live(ann, live)
        # Shielded: once the write has begun, the record is scheduled even if the
        # caller goes away (an HTTP client hanging up), so stored == in memory.
        try:
            await asyncio.shield(self._store_and_schedule(ann, persist, verdict.push_out))
        except BaseException:
            self._prepared.pop(ann.id, None)
            self._live_sources.pop(ann.id, None)
            raise
        return ann

    def _attach_live(self, ann: Announcement, live: LiveSource) -> None:
        """A live page plays its source: chimes and the live leveler as configured."""
        audio = self.settings.audio
        rate = live.sample_rate_hz
        live.configure(
            before=self._chime_maker(ann.spec.chime_before, rate),
            after=self._chime_maker(ann.spec.chime_after, rate),
            leveler=LiveLeveler(
                rate, target_lufs=audio.target_lufs, true_peak_dbtp=audio.true_peak_dbtp
            )
            if audio.normalize
            else None,
        )
        self._prepared[ann.id] = live
        self._live_sources[ann.id] = live

    def watch(self, ann_id: str) -> asyncio.Future[Announcement]:
        """A future resolved with the record when it reaches a final state."""
        future: asyncio.Future[Announcement] = asyncio.get_running_loop().create_future()
        ann = self.registry.get(ann_id)
        if ann is not None and ann.state.is_final:
            future.set_result(ann)
        else:
            self._watchers.setdefault(ann_id, []).append(future)
        return future

    async def _store_and_schedule(
        self,
        ann: Announcement,
        persist: Callable[[Announcement], Awaitable[bool]] | None,
        push_out: tuple[Waiting, ...] = (),
    ) -> None:
        try:
            if persist is not None:
                if not await persist(ann):
                    raise AlreadyClaimed(ann.fire_at)
            elif self.journal is not None:
                try:
                    await self.journal.record_new(ann)
                except Exception as exc:
                    if ann.spec.priority < self.settings.emergency_priority:
                        raise
                    # An emergency is never refused for the store's sake: it is held in
                    # memory and written by the journal writer once the store can.
                    log.error(
                        "announcement %s (emergency, priority %d) accepted although the "
                        "store cannot write (%s): kept in memory until it can",
                        ann.id,
                        ann.spec.priority,
                        exc,
                    )
                    ann.warnings.append(
                        "accepted while the store could not write; kept in memory until it could"
                    )
                    self._mark_dirty(ann)
        except BaseException:
            self.registry.forget(ann.id)
            self.admission.remove(ann.id)
            for entry in push_out:  # not admitted after all: they keep their places
                if self._is_waiting(entry.id):
                    self.admission.put(entry)
            raise
        self._schedule(ann)
        self._push_out(push_out, ann)

    async def _store_refused(
        self,
        ann: Announcement,
        reason: str,
        persist: Callable[[Announcement], Awaitable[bool]] | None,
    ) -> None:
        """Keep a record of a refusal (with its firing claim, for a schedule's firing)."""
        self._settle(ann, AnnouncementState.REFUSED, reason)
        if ann.spec.priority >= self.settings.emergency_priority:
            self._emit("emergency_refused", "error", ann.id, reason)
        try:
            if persist is not None:
                if not await persist(ann):
                    self.registry.forget(ann.id)
                    raise AlreadyClaimed(ann.fire_at)
            elif self.journal is not None:
                await self.journal.record_new(ann)
        except AlreadyClaimed:
            raise
        except Exception:
            log.exception("could not record refused announcement %s", ann.id)

    def _is_waiting(self, ann_id: str) -> bool:
        return ann_id in self._timers or ann_id in self.arbiter.queued()

    def _push_out(self, victims: tuple[Waiting, ...], winner: Announcement) -> None:
        """Drop waiting announcements pushed out of a full queue by ``winner``."""
        band = self.admission.band(winner.spec.priority)
        for entry in victims:
            ann = self.registry.get(entry.id)
            if ann is None or ann.state.is_final:
                continue
            # It may have started meanwhile (the winner's write took a moment): then it
            # is no longer waiting and keeps playing.
            if self._timers.pop(entry.id, None) is None and not self.arbiter.withdraw(entry.id):
                continue
            self._drop_prepared(entry.id)
            shared = sorted(entry.zones & frozenset(winner.spec.zones))
            reason = (
                f"pushed out by {band} announcement {winner.id} (priority "
                f"{winner.spec.priority}): queue full in zone(s) {', '.join(shared)}"
            )
            self._finish(ann, AnnouncementState.DROPPED, reason)
            self._emit("announcement_dropped", "warning", ann.id, reason)

    def submit(
        self,
        spec: AnnouncementSpec,
        *,
        due_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> Announcement:
        """Accept an announcement without waiting for the journal (tests, no store)."""
        ann = self._create(spec, due_at=due_at, expires_at=expires_at)
        verdict = self.admission.admit(ann.id, spec.zones, spec.priority)
        if not verdict.admitted:
            reason = verdict.reason or "not admitted"
            self._settle(ann, AnnouncementState.REFUSED, reason)
            self._notify(ann)
            raise QueueFull(reason, ann)
        self._schedule(ann)
        self._push_out(verdict.push_out, ann)
        if self.journal is not None:
            self._mark_dirty(ann)
        return ann

    def restore(self, ann: Announcement) -> None:
        """Take back an unfinished record after a restart (it is already in the journal)."""
        self.registry.adopt(ann)
        self.admission.admit(ann.id, ann.spec.zones, ann.spec.priority, force=True)
        self._schedule(ann)

    def _create(
        self, spec: AnnouncementSpec, *, due_at: datetime | None, expires_at: datetime | None
    ) -> Announcement:
        ann = self.registry.create(spec, now=self.clock.wall(), now_us=self.clock.monotonic_us())
        ann.due_at, ann.expires_at = due_at, expires_at
        return ann

    def playing_ids(self) -> list[str]:
        """Announcements with a playout task now."""
        return list(self._tasks)

    @property
    def waiting(self) -> int:
        """Announcements accepted and not yet playing."""
        return len(self.arbiter) + len(self._timers)

    def _schedule(self, ann: Announcement) -> None:
        spec = ann.spec
        now_wall = self.clock.wall()
        if ann.expires_at is not None and ann.expires_at <= now_wall:
            self._finish(ann, AnnouncementState.EXPIRED, "expired before it could start")
            return
        lead = self.settings.lead_us
        if ann.due_at is not None and self._mono(ann.due_at) - lead > self.clock.monotonic_us():
            # Scheduled: make the speech now, join the zone queue one lead before due.
            self._timers[ann.id] = self._mono(ann.due_at) - lead
            self._prepare(ann)
            when = f"due {ann.due_at.isoformat()}"
        else:
            self.arbiter.submit(ann.id, frozenset(spec.zones), spec.priority)
            when = "now"
        log.info(
            "announcement %s accepted (%s): zones=%s priority=%d chars=%d",
            ann.id,
            when,
            ",".join(spec.zones),
            spec.priority,
            len(spec.text),
        )
        self._wake.set()

    def _mono(self, when: datetime) -> int:
        """A wall-clock instant on the server clock (for due times)."""
        delta = when - self.clock.wall()
        return self.clock.monotonic_us() + int(delta.total_seconds() * 1e6)

    def _prepare(self, ann: Announcement) -> AudioProgramme:
        prepared = self._prepared.get(ann.id)
        if prepared is None:
            spec = ann.spec
            ann.segments = 0
            parts = []
            for language, text in spoken_texts(spec):
                segments = self._segments(spec, text)
                ann.segments += len(segments)
                parts.append(
                    Speech(
                        [
                            SpeechRequest(
                                text=segment,
                                voice=spec.voice,
                                language=language,
                                speed=spec.speed,
                                style=spec.style,
                                max_new_tokens=spec.max_new_tokens,
                            )
                            for segment in segments
                        ]
                    )
                )
            audio = self.settings.audio
            rate = int(getattr(self.engine, "sample_rate_hz", 24000))
            programme = Programme(
                before=self._chime_maker(spec.chime_before, rate),
                speech=parts,
                repeats=spec.repeats,
                repeat_gap_ms=spec.repeat_gap_ms,
                after=self._chime_maker(spec.chime_after, rate),
            )
            normalizer = (
                LoudnessNormalizer(audio.target_lufs, _source_ceiling(audio))
                if audio.normalize
                else None
            )
            prepared = PreparedSpeech(
                self.speech,
                programme,
                priority=spec.priority,
                outcome=SpeechOutcome(engine=self.engine.name),
                normalize=normalizer.normalize if normalizer is not None else None,
            )
            prepared.start()
            self._prepared[ann.id] = prepared
        return prepared

    def _chime_maker(self, name: str | None, rate: int) -> ChimeMaker | None:
        """What makes a chime's audio at the speech rate (run in a worker thread)."""
        if not name:
            return None
        return lambda: self._chime(name, rate)

    def _chime(self, name: str, rate: int) -> Sound | None:
        """A chime's audio; a bad file is logged and skipped (the speech still plays)."""
        audio = self.settings.audio
        try:
            if name.startswith("file:"):
                path = name.removeprefix("file:")
                if audio.chime_dir is not None and os.sep not in path:
                    # A bare name (the only kind an API request may give) is looked up
                    # in the chime folder again now: the file may have changed.
                    path = str(resolve_chime_name(audio.chime_dir, path))
                pcm = load_chime_file(
                    path,
                    rate,
                    target_lufs=audio.target_lufs if audio.normalize else None,
                    true_peak_dbtp=_source_ceiling(audio),
                    max_bytes=audio.chime_max_kb * 1024,
                    max_duration_s=audio.chime_max_s,
                )
            else:
                pcm = chime_pcm(
                    name, rate, target_lufs=audio.target_lufs, true_peak_dbtp=_source_ceiling(audio)
                )
        except (ChimeError, ValueError) as exc:
            log.error("chime %s cannot be played: %s", name, exc)
            return None
        return Sound(pcm, rate)

    def _segments(self, spec: AnnouncementSpec, text: str) -> list[str]:
        whole_limit = getattr(self.engine, "max_request_chars", self.engine.max_text_chars)
        if not spec.split and len(text) <= whole_limit:
            return [text]  # one take, as asked
        return split_text(text, self.engine.max_text_chars, self.settings.first_segment_max_chars)

    def cancel(self, ann_id: str, reason: str = "cancelled by operator") -> Announcement | None:
        ann = self.registry.get(ann_id)
        if ann is None or ann.state.is_final:
            return ann
        if self.arbiter.withdraw(ann_id) or self._timers.pop(ann_id, None) is not None:
            self._drop_prepared(ann_id)
            self._finish(ann, AnnouncementState.CANCELLED, reason)
            return ann
        task = self._tasks.get(ann_id)
        if task is not None:
            self._cancel_reasons[ann_id] = reason
            task.cancel()
        return ann

    def cancel_waiting(self, schedule_id: str, reason: str) -> list[str]:
        """Cancel a schedule's announcements not yet playing (waiting for their due
        time, their speech made ahead, or queued for their zones); their ids."""
        ids = [
            ann_id
            for ann_id in [*self._timers, *self.arbiter.queued()]
            if (ann := self.registry.get(ann_id)) is not None
            and ann.schedule_id == schedule_id
            and ann.state is AnnouncementState.QUEUED
        ]
        for ann_id in ids:
            self.cancel(ann_id, reason)
        return ids

    def on_receipt(self, endpoint_id: str, receipt: wire.Receipt) -> None:
        ann = self.registry.get(receipt.announcement_id)
        if ann is None or endpoint_id not in ann.deliveries or receipt.stream != ann.number:
            # (a receipt for an earlier, preempted stream of it is not this delivery's)
            log.debug("receipt from %s for unknown announcement", endpoint_id)
            return
        ann.deliveries[endpoint_id].receipt = receipt.model_dump(exclude={"type"})
        if self.journal is not None:
            self._mark_dirty(ann)  # receipts usually come after the final state

    def on_playback(self, endpoint_id: str, msg: wire.Playback) -> None:
        """A playback receipt: the endpoint started or finished playing a stream."""
        ann = self.registry.get(msg.announcement_id)
        stats = ann.deliveries.get(endpoint_id) if ann is not None else None
        if ann is None or stats is None or msg.stream != ann.number:
            return  # an earlier (preempted) stream of it, or unknown
        if msg.event == "started":
            stats.started_at_us = msg.at_us
            if msg.at_us is not None and ann.start_at_us is not None and not stats.late_join:
                self.playback_skew_us[endpoint_id] = msg.at_us - ann.start_at_us
            if stats.state in ("queued", "sent", "missed"):
                stats.state = "started"
        else:
            stats.finished_at_us = msg.at_us
            if stats.state in ("queued", "started", "sent", "missed"):
                stats.state = "finished"
        if ann.state in (AnnouncementState.UNCONFIRMED, AnnouncementState.PARTIAL):
            # A receipt that came after the end: the coverage (and state) it proves.
            ann.coverage = zone_coverage(ann.spec.zones, ann.deliveries, ann.endpoint_zones)
            state, reason = coverage_outcome(ann.coverage)
            if state is not ann.state and state is not AnnouncementState.FAILED:
                ann.state, ann.reason = state, reason
        if self.journal is not None:
            self._mark_dirty(ann)

    def _started_text(self, live: _Live, link: EndpointLink, ann: Announcement) -> str:
        """The announcement_started text for ``link``: its format, and its gain (the
        endpoint's plus the highest of the announcement's zones it has joined)."""
        key = link.format.key
        gain = 0.0
        if self.gains is not None:
            gain = self.gains.for_endpoint(link.endpoint_id, ann.endpoint_zones[link.endpoint_id])
        text = live.started_text.get((key, gain))
        if text is None:
            text = live.started_text[(key, gain)] = wire.dump(
                live.started[key].model_copy(update={"gain_db": gain})
            )
        return text

    def on_join(self, link: EndpointLink) -> None:
        """An endpoint joined: attach it to what is playing in its zones, from the live point.

        It gets the announcement_started message and the audio already queued for
        the others that has not played yet, then follows the stream. Only for a
        format the announcement is already encoded in; otherwise it hears the next one.
        """
        now = self.clock.monotonic_us()
        for ann_id, live in list(self._live.items()):
            ann = self.registry.get(ann_id)
            if ann is None or set(ann.spec.zones).isdisjoint(link.zones):
                continue
            key = link.format.key
            if key not in live.started:
                log.info(
                    "endpoint %s joined during %s but %s is not among its formats (%s)",
                    link.endpoint_id,
                    ann_id,
                    key,
                    ",".join(live.started),
                )
                continue
            stats = DeliveryStats(link.endpoint_id, key, late_join=True)
            ann.deliveries[link.endpoint_id] = stats
            ann.endpoint_zones[link.endpoint_id] = tuple(
                z for z in ann.spec.zones if z in link.zones
            )
            link.outbox.put_control(self._started_text(live, link, ann))
            for play_at, duration, frame in live.recent[key]:
                if play_at > now:
                    link.outbox.put_audio(
                        frame, play_at_us=play_at, duration_us=duration, now_us=now, stats=stats
                    )
            live.by_format[key].append(link)
            self._audiences.setdefault(ann_id, []).append(link)
            log.info("endpoint %s joined announcement %s mid-air", link.endpoint_id, ann_id)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Start announcements as they fall due and their zones free up, until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                if self.journal is not None:
                    tg.create_task(self._journal_writer(), name="announcement-journal")
                while True:
                    self._tick(tg)
                    await self._sleep_until_wake(self._next_deadline_us())
        finally:
            for prepared in self._prepared.values():
                await prepared.close()
            self._prepared.clear()
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _tick(self, tg: asyncio.TaskGroup) -> None:
        now = self.clock.monotonic_us()
        for ann_id, at in sorted(self._timers.items(), key=lambda kv: kv[1]):
            if at <= now:
                del self._timers[ann_id]
                ann = self.registry.get(ann_id)
                if ann is not None:
                    self.arbiter.submit(ann_id, frozenset(ann.spec.zones), ann.spec.priority)
        self._expire_waiting()
        decision = self.arbiter.decide()
        for loser, winner in decision.preempt:
            task = self._tasks.get(loser)
            loser_ann = self.registry.get(loser)
            if task is not None and loser_ann is not None:
                # Told now, before the winner's start message, so speakers stop first.
                self._preempted[loser] = (winner, self.arbiter.seq_of(loser))
                self._flush_preempted(loser_ann, winner)
                task.cancel()
        for ann_id in decision.start:
            self.admission.remove(ann_id)  # playing: no longer waiting
            ann = self.registry.get(ann_id)
            if ann is None:  # pragma: no cover - registry keeps unfinished ones
                self.arbiter.release(ann_id)
                continue
            self._tasks[ann_id] = tg.create_task(self._play(ann), name=f"playout-{ann_id}")

    def _expire_waiting(self) -> None:
        now_wall = self.clock.wall()
        for ann_id in [*self._timers, *self.arbiter.queued()]:
            ann = self.registry.get(ann_id)
            if ann is not None and ann.expires_at is not None and ann.expires_at <= now_wall:
                self._timers.pop(ann_id, None)
                self.arbiter.withdraw(ann_id)
                self._drop_prepared(ann_id)
                self._finish(ann, AnnouncementState.EXPIRED, "expired while waiting to start")

    def _next_deadline_us(self) -> int | None:
        candidates = list(self._timers.values())
        for ann_id in [*self._timers, *self.arbiter.queued()]:
            ann = self.registry.get(ann_id)
            if ann is not None and ann.expires_at is not None:
                candidates.append(self._mono(ann.expires_at))
        return min(candidates) if candidates else None

    async def _sleep_until_wake(self, deadline_us: int | None) -> None:
        """Wait for a change (submit, cancel, zone freed) or the deadline, whichever first."""
        await wait_event_or_deadline(self.clock, self._wake, deadline_us)

    def _drop_prepared(self, ann_id: str) -> None:
        prepared = self._prepared.pop(ann_id, None)
        if prepared is not None:
            prepared.cancel()

    async def _journal_writer(self) -> None:
        """Write changed records to the journal, in the order they changed.

        A write that fails is retried until it lands: the record stays pending (one
        entry per record; a later change is the same entry) and the writer waits
        100 ms, doubling up to ``journal_retry_max_us``, on the service clock.
        """
        assert self.journal is not None
        delay_us = 0
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            while self._dirty:
                ann_id = next(iter(self._dirty))
                ann = self._dirty.pop(ann_id)
                try:
                    await self.journal.record(ann)
                except Exception as exc:
                    self._dirty.setdefault(ann_id, ann)  # still to write
                    self.journal_failures += 1
                    delay_us = min(
                        max(_RETRY_FIRST_US, delay_us * 2), self.settings.journal_retry_max_us
                    )
                    log.debug(
                        "announcement %s not recorded (%s); retrying in %d ms",
                        ann_id,
                        exc,
                        delay_us // 1000,
                    )
                    await self.clock.sleep_us(delay_us)
                    continue
                delay_us = 0

    @property
    def pending_writes(self) -> int:
        """Records changed and not yet in the journal (one per record)."""
        return len(self._dirty)

    def take_dirty(self) -> list[Announcement]:
        """Records changed and not yet written (for a final write at shutdown)."""
        pending = list(self._dirty.values())
        self._dirty.clear()
        return pending

    def _mark_dirty(self, ann: Announcement) -> None:
        self._dirty[ann.id] = ann
        self._dirty_event.set()

    # --- one announcement -------------------------------------------------------------------

    async def _play(self, ann: Announcement) -> None:
        try:
            await self._play_inner(ann)
        except asyncio.CancelledError:
            preempted = self._preempted.pop(ann.id, None)
            reason = self._cancel_reasons.pop(ann.id, None)
            if preempted is not None and reason is None:
                self._on_preempted(ann, *preempted)
                return
            if reason is None:
                if ann.id in self._ended:
                    # Every chunk was already sent; only the endpoints' buffers remained.
                    ann.warnings.append("server stopped during the last playout-delay of audio")
                    self._finish(ann, AnnouncementState.FINISHED, None)
                else:
                    self._abort(ann, AnnouncementState.FAILED, "server shutting down")
                raise
            self._abort(ann, AnnouncementState.CANCELLED, reason)
        except Exception as exc:
            # The producer runs in a TaskGroup, so its errors arrive wrapped in a group.
            cause = _leaf(exc)
            if isinstance(cause, _StartNotRecorded):
                log.error("announcement %s not played: %s", ann.id, cause)
                self._abort(ann, AnnouncementState.FAILED, str(cause))
            elif isinstance(cause, SpeechError):
                log.error("announcement %s: speech engine %s failed: %s", ann.id, ann.engine, cause)
                if self.observer is not None:
                    self.observer.speech_failed(ann.engine or self.engine.name)
                self._abort(ann, AnnouncementState.FAILED, f"speech engine failed: {cause}")
            else:  # a bug must not take the server down, but must be visible
                log.error("announcement %s failed", ann.id, exc_info=cause)
                self._abort(ann, AnnouncementState.FAILED, f"internal error: {cause!r}")
        finally:
            prepared = self._prepared.pop(ann.id, None)
            if prepared is not None:
                await prepared.close()
            self._tasks.pop(ann.id, None)
            self._audiences.pop(ann.id, None)
            self._live.pop(ann.id, None)
            self._ended.discard(ann.id)
            self.arbiter.release(ann.id)
            self._wake.set()

    def _preemption_reason(self, winner_id: str) -> str:
        winner = self.registry.get(winner_id)
        by = f"announcement {winner_id}" + (
            f" (priority {winner.spec.priority})" if winner is not None else ""
        )
        return f"preempted by {by}"

    def _flush_preempted(self, ann: Announcement, winner_id: str) -> None:
        """Stop its endpoints at once: drop its queued audio, tell them to flush theirs."""
        reason = self._preemption_reason(winner_id)
        for link in self._audiences.get(ann.id, []):
            stats = ann.deliveries[link.endpoint_id]
            if self.hub.is_current(link):
                link.outbox.discard_audio(stats)
                link.outbox.put_control(
                    wire.dump(
                        wire.AnnouncementCancelled(
                            announcement_id=ann.id,
                            stream=ann.number,
                            reason=reason,
                            preempted_by=winner_id,
                        )
                    )
                )
            stats.state = "preempted"
        self._audiences.pop(ann.id, None)  # nothing more goes to them for this stream
        self._live.pop(ann.id, None)

    def _on_preempted(self, ann: Announcement, winner_id: str, seq: int | None) -> None:
        """After the playout stopped: replay it later (stacked) or drop it."""
        reason = self._preemption_reason(winner_id)
        log.warning("announcement %s %s", ann.id, reason)
        if ann.spec.on_preempt == "drop":
            self._finish(ann, AnnouncementState.CANCELLED, f"{reason}; dropped by its policy")
            return
        # Stacked: it plays again from the start once the zones are free, in its
        # original place in the queue, as a new stream (new stream number).
        ann.warnings.append(f"{reason}; replayed afterwards")
        ann.preemptions += 1
        self.registry.renumber(ann)
        ann.state = AnnouncementState.QUEUED
        ann.first_audio_sent_us = None
        self.admission.admit(ann.id, ann.spec.zones, ann.spec.priority, force=True)
        self.arbiter.submit(ann.id, frozenset(ann.spec.zones), ann.spec.priority, seq=seq)
        self._notify(ann)

    async def _play_inner(self, ann: Announcement) -> None:
        spec = ann.spec
        clock = self.clock
        ann.engine = self.engine.name
        audience = self.hub.audience(spec.zones)
        if not audience and self.settings.wait_for_endpoints_us > 0:
            # Endpoints may be reconnecting (after a network blip or a restart of this
            # server): give them a moment before giving up on the zone.
            deadline = clock.monotonic_us() + self.settings.wait_for_endpoints_us
            while not audience and clock.monotonic_us() < deadline:
                await clock.sleep_us(_ENDPOINT_POLL_US)
                audience = self.hub.audience(spec.zones)
        ann.endpoint_zones = {}
        if not audience:
            ann.coverage = zone_coverage(spec.zones, ann.deliveries, ann.endpoint_zones)
            reason = f"no endpoint connected in zone(s) {', '.join(spec.zones)}"
            self._finish(ann, AnnouncementState.FAILED, reason)
            self._coverage_event(ann)
            return
        by_format: dict[str, list[EndpointLink]] = {}
        formats: dict[str, StreamFormat] = {}
        for link in audience:
            by_format.setdefault(link.format.key, []).append(link)
            formats[link.format.key] = link.format
            ann.deliveries[link.endpoint_id] = DeliveryStats(link.endpoint_id, link.format.key)
            ann.endpoint_zones[link.endpoint_id] = tuple(z for z in spec.zones if z in link.zones)
        ann.formats = sorted(formats)
        self._audiences[ann.id] = audience

        if ann.id not in self._prepared:  # not made ahead: its first audio is timed
            self._speech_asked_us[ann.id] = clock.monotonic_us()
        prepared = self._prepare(ann)
        now = clock.monotonic_us()
        start_us = now + self.settings.lead_us
        if ann.due_at is not None:
            # Scheduled: the first chunk plays at the due instant, not a lead after now.
            start_us = max(start_us, self._mono(ann.due_at))
        pacer = Pacer(start_us=start_us, lead_us=self.settings.lead_us)
        prepared.attach(pacer)  # each segment is now due when the playout needs it
        ann.state = AnnouncementState.PLAYING
        ann.started_at = clock.wall()
        ann.start_at_us = pacer.start_us
        self._notify(ann)
        estimate_ms = (
            int(len(spec.text) / _CHARS_PER_SECOND / spec.speed * 1000)
            if spec.kind == "speech"
            else 0  # a live page: its length is up to the talker
        )
        live = _Live(by_format=by_format, started={}, recent={k: deque() for k in formats})
        self._live[ann.id] = live
        for key, links in by_format.items():
            live.started[key] = wire.AnnouncementStarted(
                announcement_id=ann.id,
                stream=ann.number,
                text=spec.text,
                priority=spec.priority,
                zones=list(spec.zones),
                format=format_spec(formats[key]),
                start_at_us=pacer.start_us,
                expected_duration_ms=estimate_ms,
                captions=_captions(spec),
            )
            for link in links:
                link.outbox.put_control(self._started_text(live, link, ann))
        log.info(
            "announcement %s playing: %d endpoint(s), formats %s, %d segment(s)",
            ann.id,
            len(audience),
            ",".join(ann.formats),
            ann.segments,
        )

        queue: asyncio.Queue[list[tuple[int, str, EncodedFrame]] | None] = asyncio.Queue(
            _AHEAD_BATCHES
        )
        seq: dict[str, int] = dict.fromkeys(formats, 0)
        end_us: dict[str, int] = dict.fromkeys(formats, 0)  # per format: chunks are rounded up
        async with asyncio.TaskGroup() as tg:
            # The durable "playing" mark is written while the first audio is made,
            # and waited for before the first chunk goes out.
            start_mark: asyncio.Task[str | None] | None = (
                tg.create_task(self._record_start(ann)) if self.journal is not None else None
            )
            tg.create_task(self._produce(ann, prepared, list(formats.values()), queue))
            while (batch := await queue.get()) is not None:
                for offset_us, key, frame in batch:
                    if start_mark is not None:
                        failure = await start_mark
                        start_mark = None
                        if failure is not None:
                            if spec.priority < self.settings.emergency_priority:
                                raise _StartNotRecorded(
                                    "store unavailable: its start could not be recorded, "
                                    f"so it was not played ({failure})"
                                )
                            ann.warnings.append(
                                "played although the store could not record its start"
                            )
                    slot = pacer.place(offset_us, clock.monotonic_us())
                    await clock.sleep_until_us(slot.send_at_us)
                    flags = 0
                    if seq[key] == 0:
                        flags |= wire.FLAG_FIRST
                    if slot.discontinuity:
                        flags |= wire.FLAG_DISCONTINUITY
                    data = wire.pack_audio_frame(
                        stream=ann.number,
                        seq=seq[key],
                        play_at_us=slot.play_at_us,
                        duration_us=frame.duration_us,
                        payload=frame.payload,
                        flags=flags,
                    )
                    seq[key] += 1
                    ann.chunks = max(ann.chunks, seq[key])
                    now = clock.monotonic_us()
                    if ann.first_audio_sent_us is None:
                        ann.first_audio_sent_us = now
                    recent = live.recent[key]
                    recent.append((slot.play_at_us, frame.duration_us, data))
                    while recent and recent[0][0] + recent[0][1] <= now:
                        recent.popleft()
                    ws_frame = wire.websocket_binary_frame(data)  # once for all of them
                    for link in by_format[key]:
                        if self.hub.is_current(link):
                            link.outbox.put_audio(
                                data,
                                play_at_us=slot.play_at_us,
                                duration_us=frame.duration_us,
                                now_us=now,
                                stats=ann.deliveries[link.endpoint_id],
                                ws_frame=ws_frame,
                            )
                    end_us[key] = max(end_us[key], offset_us + frame.duration_us)

        self._live.pop(ann.id, None)  # all audio is out: nothing left to join
        ann.underruns = pacer.underruns
        # Late answers of tasks given up on (a fallback, a timeout) bill while it plays.
        _record_billing(ann, prepared.outcome.meta)
        end_offset_us = max(end_us.values())
        ann.duration_ms = end_offset_us // 1000
        end_at_us = pacer.play_at(end_offset_us)
        for key, links in by_format.items():
            ended = wire.dump(
                wire.AnnouncementEnded(
                    announcement_id=ann.id,
                    stream=ann.number,
                    chunks=seq[key],
                    duration_ms=end_us[key] // 1000,
                    end_at_us=pacer.play_at(end_us[key]),
                )
            )
            for link in links:
                if self.hub.is_current(link):
                    link.outbox.put_control(ended)
        self._ended.add(ann.id)
        async with asyncio.TaskGroup() as tail:
            if self.journal is not None:
                # The "audio all sent" mark: a kill from now on is a finish, not a failure.
                tail.create_task(self._record_audio_sent(ann))
            # Free the zones one lead time before the end, so the next announcement's
            # first chunk plays right as this one's last chunk ends.
            await clock.sleep_until_us(end_at_us - self.settings.lead_us)
            self.arbiter.release(ann.id)
            self._wake.set()
            await clock.sleep_until_us(end_at_us)
        for link in self._audiences.get(ann.id, audience):
            stats = ann.deliveries[link.endpoint_id]
            if stats.state in ("started", "finished"):
                continue  # the endpoint's own receipts say it
            # No receipt (yet): all audio went out to a connected endpoint, or it left.
            stats.state = "sent" if self.hub.is_current(link) else "missed"
        # The state says what is verified: heard (playback receipts) in every zone or not.
        ann.coverage = zone_coverage(spec.zones, ann.deliveries, ann.endpoint_zones)
        final, why = coverage_outcome(ann.coverage)
        # Playback receipts travel back over the network: give a missing one up to a
        # playout delay (a later one still upgrades the state, see on_playback).
        grace_end_us = clock.monotonic_us() + self.settings.lead_us
        while final is AnnouncementState.UNCONFIRMED and clock.monotonic_us() < grace_end_us:
            await clock.sleep_us(min(_ENDPOINT_POLL_US, grace_end_us - clock.monotonic_us()))
            ann.coverage = zone_coverage(spec.zones, ann.deliveries, ann.endpoint_zones)
            final, why = coverage_outcome(ann.coverage)
        self._finish(ann, final, why)
        self._coverage_event(ann)

    def _coverage_event(self, ann: Announcement) -> None:
        """A fault event for zones nobody heard (error level for an emergency)."""
        emergency = ann.spec.priority >= self.settings.emergency_priority
        missed = [z for z, c in ann.coverage.items() if c["heard"] is False]
        unconfirmed = [z for z, c in ann.coverage.items() if c["heard"] == "unconfirmed"]
        what = "emergency" if emergency else "announcement"
        if missed:
            self._emit(
                "coverage_fault",
                "error" if emergency else "warning",
                ann.id,
                f"{what} not heard in zone(s) {', '.join(missed)} ({ann.state.value})",
            )
        elif unconfirmed and emergency:
            self._emit(
                "coverage_unconfirmed",
                "warning",
                ann.id,
                f"{what}: no playback receipt from zone(s) {', '.join(unconfirmed)}",
            )

    def _note_speech_warnings(self, ann: Announcement, outcome: SpeechOutcome) -> bool:
        """Copy the speech's new warnings (which segment the fallback spoke, and why) to
        the record; the operator is told once, at the first. True if the fallback spoke."""
        new = [w for w in outcome.warnings if w not in ann.warnings]
        if (
            new
            and outcome.fallback_reason
            and not any(w.startswith("segment ") and " spoken by " in w for w in ann.warnings)
        ):
            self._emit_fallback(ann, outcome)
        ann.warnings.extend(new)
        return outcome.fallback_reason is not None

    def _emit_fallback(self, ann: Announcement, outcome: SpeechOutcome) -> None:
        """The operator is told when the fallback engine speaks (an emergency: at error)."""
        severity = "error" if ann.spec.priority >= self.settings.emergency_priority else "warning"
        first = next((w for w in outcome.warnings if " spoken by " in w), None)
        detail = first or f"{outcome.engine} spoke instead: {outcome.fallback_reason}"
        self._emit("speech_fallback", severity, ann.id, detail)

    def _emit(self, kind: str, severity: str, subject: str, detail: str) -> None:
        if self.events is not None:
            self.events.emit(kind, severity, subject, detail)

    async def _record_start(self, ann: Announcement) -> str | None:
        """Write the "playing" mark now; None when it landed, else why not."""
        assert self.journal is not None
        self._dirty.pop(ann.id, None)  # written here; on failure the writer retries it
        try:
            await self.journal.mark_started(ann)
        except Exception as exc:
            self._mark_dirty(ann)
            return str(exc) or type(exc).__name__
        return None

    async def _record_audio_sent(self, ann: Announcement) -> None:
        assert self.journal is not None
        try:
            await self.journal.mark_audio_sent(ann, self.clock.wall())
        except Exception as exc:  # the final state still follows through the writer
            log.warning("announcement %s: 'audio all sent' mark not written: %s", ann.id, exc)

    async def _produce(
        self,
        ann: Announcement,
        prepared: AudioProgramme,
        formats: list[StreamFormat],
        queue: asyncio.Queue[list[tuple[int, str, EncodedFrame]] | None],
    ) -> None:
        """Take the speech as it is made and encode each PCM block once per format."""
        loop = asyncio.get_running_loop()
        multi: MultiTranscoder | None = None
        rate = 0
        base_us = 0  # offset of the current transcoder's first sample (engine switch)

        def tag(out: dict[str, list[EncodedFrame]]) -> list[tuple[int, str, EncodedFrame]]:
            items = [(base_us + f.offset_us, k, f) for k, frames in out.items() for f in frames]
            items.sort(key=lambda t: t[0])
            return items

        async def flush() -> int:
            assert multi is not None
            out = await loop.run_in_executor(self._executor, multi.flush)
            batch = tag(out)
            if batch:
                await queue.put(batch)
            return max((o + f.duration_us for o, _, f in batch), default=base_us)

        outcome = prepared.outcome
        try:
            async for block in prepared.blocks():
                asked_us = self._speech_asked_us.pop(ann.id, None)
                if asked_us is not None and self.observer is not None:
                    waited_s = (self.clock.monotonic_us() - asked_us) / 1e6
                    self.observer.first_audio(outcome.engine, waited_s)
                ann.engine = outcome.engine
                self._note_speech_warnings(ann, outcome)
                if multi is None or block.sample_rate_hz != rate:
                    if multi is not None:
                        base_us = await flush()
                    rate = block.sample_rate_hz
                    multi = MultiTranscoder(
                        formats,
                        source_rate_hz=rate,
                        opus_bitrate_bps=self.settings.opus_bitrate_bps,
                        # each format's limiter holds the ceiling in what endpoints decode
                        true_peak_dbtp=(
                            self.settings.audio.true_peak_dbtp
                            if self.settings.audio.normalize
                            else None
                        ),
                    )
                out = await loop.run_in_executor(self._executor, multi.push, block.samples)
                batch = tag(out)
                if batch:
                    await queue.put(batch)
        finally:
            ann.engine = outcome.engine
            if ann.spec.kind == "speech":  # (a live page says nothing of the engines)
                self.speech_fallback_reason = outcome.fallback_reason
            if self._note_speech_warnings(ann, outcome) and self.observer is not None:
                self.observer.speech_failed(self.engine.name)
            _record_billing(ann, outcome.meta)
            ann.speech_requests = outcome.meta.requests
            ann.cache_hits = outcome.meta.cache_hits
        if multi is not None:
            await flush()
        await queue.put(None)

    # --- outcomes ---------------------------------------------------------------------------

    def _abort(self, ann: Announcement, state: AnnouncementState, reason: str) -> None:
        """End a playing announcement early: tell its endpoints and drop their queued audio.

        After ``announcement_ended`` this still goes out: the endpoints may hold up to
        a playout delay of audio, and "cancelled" tells them to drop it.
        """
        for link in self._audiences.get(ann.id, []):
            stats = ann.deliveries[link.endpoint_id]
            if not self.hub.is_current(link):
                stats.state = "missed"
                continue
            link.outbox.discard_audio(stats)
            stats.state = "cancelled"
            link.outbox.put_control(
                wire.dump(
                    wire.AnnouncementCancelled(
                        announcement_id=ann.id, stream=ann.number, reason=reason
                    )
                )
            )
        self._finish(ann, state, reason)

    def _finish(self, ann: Announcement, state: AnnouncementState, reason: str | None) -> None:
        if ann.state.is_final:
            return
        self._settle(ann, state, reason)
        self._notify(ann)

    def _settle(self, ann: Announcement, state: AnnouncementState, reason: str | None) -> None:
        """Give a record its final state (the journal write is the caller's)."""
        ann.state = state
        ann.reason = reason
        ann.finished_at = self.clock.wall()
        source = self._live_sources.pop(ann.id, None)
        if source is not None:
            source.note_end("preempted" if ann.reason and "preempted by" in ann.reason else "ended")
            if source.stats.get("ended_by") == "uplink_lost":
                ann.warnings.append("the talker's uplink was lost: the page was cut off there")
        for future in self._watchers.pop(ann.id, []):
            if not future.done():
                future.set_result(ann)
        self.admission.remove(ann.id)
        self._speech_asked_us.pop(ann.id, None)
        self.registry.finished(ann)
        level = logging.INFO if state is AnnouncementState.FINISHED else logging.WARNING
        log.log(level, "announcement %s %s%s", ann.id, state.value, f": {reason}" if reason else "")
        if self.observer is not None:
            self.observer.announcement_final(ann)

    def _notify(self, ann: Announcement) -> None:
        if self.journal is not None:
            self._mark_dirty(ann)


def _captions(spec: AnnouncementSpec) -> list[wire.Caption]:
    """Each language's written text in the order spoken, for displays (captions)."""
    pairs = ((spec.language, spec.text), *spec.also)
    return [wire.Caption(language=language, text=text) for language, text in pairs]
