"""The schedule runner: plan, act on what is due, sleep until the next wake-up or edit.

All decisions are the planner's (pure); this module only reads the clock,
renders templates, hands announcements to the announcer and keeps the store
in step. A firing is acted on at most once, across restarts: its claim in the
store (primary key schedule + instant) is written in the same transaction as
the announcement it creates.

Schedules come from the config (``source = "config"``, re-read at every start)
and from the API (``source = "api"``, kept in the store). Each keeps its
``next_fire_at`` and ``paused`` state in the store, so after downtime the
planner sees exactly which firings were missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broadcaster.announcements import compose_spec, first_given
from broadcaster.announcer import AlreadyClaimed, Announcer, QueueFull
from broadcaster.clock import Clock, wait_event_or_deadline
from broadcaster.config import Config, ScheduleConfig, TemplateConfig
from broadcaster.journal import to_row
from broadcaster.model import AnnouncementState
from broadcaster.scheduling.library import TemplateLibrary
from broadcaster.scheduling.planner import Firing, SchedulePolicy, ScheduleView, plan
from broadcaster.scheduling.templates import TemplateError
from broadcaster.scheduling.triggers import Trigger
from broadcaster.store import AsyncStore, ScheduleRow, StoreError

log = logging.getLogger(__name__)

#: The runner re-plans at least this often, so a wall-clock step is noticed.
_MAX_SLEEP = timedelta(seconds=30)


class ScheduleError(ValueError):
    """A schedule that cannot be used (API); ``field`` names the problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class _Live:
    spec: ScheduleConfig
    source: str
    trigger: Trigger
    #: Looked up at each use: an API template may be edited while the schedule lives.
    library: TemplateLibrary
    next_fire_at: datetime | None
    paused: bool

    @property
    def template(self) -> TemplateConfig | None:
        """Its template (None: a schedule of free text, or its template is gone)."""
        return None if self.spec.template is None else self.library.get(self.spec.template)


class ScheduleRunner:
    def __init__(
        self,
        *,
        config: Config,
        store: AsyncStore,
        announcer: Announcer,
        clock: Clock,
        templates: TemplateLibrary | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.announcer = announcer
        self.clock = clock
        #: Where templates are looked up (the config's and the API's).
        self.templates = templates if templates is not None else TemplateLibrary(config)
        self._live: dict[str, _Live] = {}
        self._edited = asyncio.Event()
        #: Emergency firings accepted while the store could not claim them: firing ->
        #: announcement id. Their claim is written (without playing again) when it can.
        self._held: dict[tuple[str, datetime], str] = {}

    # --- loading and editing -------------------------------------------------------------

    async def load(self) -> None:
        """Config schedules (replacing stored copies) plus the API's, with their state."""
        now = self.clock.wall()
        stored = {row.id: row for row in await self.store.list_schedules()}
        for spec in self.config.schedules:
            row = stored.pop(spec.id, None)
            data = spec.stored()
            keep = row is not None and row.source == "config" and row.data == data
            live = self._make_live(spec, "config")
            if keep and row is not None:
                live.next_fire_at, live.paused = row.next_fire_at, row.paused
            else:
                live.next_fire_at = live.trigger.next_after(now)
                live.paused = spec.paused
            self._live[spec.id] = live
            await self._save(live, created=row.created_at if row else now)
        for row in stored.values():
            if row.source == "config":  # removed from the config file
                await self.store.delete_schedule(row.id)
                continue
            try:
                spec = ScheduleConfig.model_validate(row.data)
                live = self._make_live(spec, "api")
            except (ValueError, TemplateError) as exc:
                log.error("schedule %s from the store is no longer valid: %s", row.id, exc)
                continue
            live.next_fire_at, live.paused = row.next_fire_at, row.paused
            self._live[row.id] = live
        log.info("schedules: %d loaded", len(self._live))

    def _make_live(self, spec: ScheduleConfig, source: str) -> _Live:
        template = None
        if spec.template is not None:
            template = self.templates.get(spec.template)
            if template is None:
                raise ScheduleError("template", f"unknown template {spec.template!r}")
        zones = spec.zones or (template.zones if template else [])
        if not zones:
            raise ScheduleError("zones", "no zones (neither the schedule nor its template)")
        unknown = self.config.unknown_zones(zones)
        if unknown:
            raise ScheduleError(
                "zones", f"unknown zone(s): {', '.join(unknown)} (neither a zone nor a zone group)"
            )
        return _Live(spec, source, spec.trigger(), self.templates, None, spec.paused)

    def using_template(self, name: str) -> list[ScheduleConfig]:
        """The schedules that announce template ``name``."""
        return [live.spec for _, live in sorted(self._live.items()) if live.spec.template == name]

    def zones_of(self, schedule_id: str) -> list[str]:
        """A schedule's effective zones, groups expanded (its own, else its template's)."""
        live = self._live[schedule_id]
        tpl = live.template
        return self.config.expand_zones(live.spec.zones or (tpl.zones if tpl else []))

    def priority_of(self, spec: ScheduleConfig) -> int:
        """The priority a schedule's firings get (its own, else its template's, else config)."""
        tpl = None if spec.template is None else self.templates.get(spec.template)
        priority: int = first_given(
            spec.priority, tpl and tpl.priority, self.config.announcements.default_priority
        )
        return priority

    async def _save(self, live: _Live, *, created: datetime) -> None:
        now = self.clock.wall()
        await self.store.upsert_schedule(
            ScheduleRow(
                id=live.spec.id,
                data=live.spec.stored(),
                source="config" if live.source == "config" else "api",
                created_at=created,
                updated_at=now,
                paused=live.paused,
                next_fire_at=live.next_fire_at,
            )
        )

    async def create(self, spec: ScheduleConfig) -> dict[str, Any]:
        if spec.id in self._live:
            raise ScheduleError("id", f"schedule {spec.id!r} exists already")
        live = self._make_live(spec, "api")
        if live.template is not None:
            try:
                live.template.compiled().render(spec.variables, language=self._language(live))
            except TemplateError as exc:
                raise ScheduleError("variables", str(exc)) from None
        now = self.clock.wall()
        live.next_fire_at = live.trigger.next_after(now)
        await self._save(live, created=now)
        self._live[spec.id] = live
        self._edited.set()
        return self.describe(spec.id)

    async def delete(self, schedule_id: str) -> bool:
        """Delete an API schedule and cancel its firings already prepared ahead.

        A schedule defined in the config cannot be deleted here (it would come back
        at the next start, when the config is read again): ScheduleError("id"), and
        the operator removes it from the config file, or pauses it (which lasts).
        """
        live = self._live.get(schedule_id)
        if live is None:
            return False
        if live.source == "config":
            raise ScheduleError(
                "id",
                f"schedule {schedule_id!r} is defined in the config ({self.config.source}); "
                "remove it there, or pause it",
            )
        await self.store.delete_schedule(schedule_id)
        del self._live[schedule_id]
        self._cancel_prepared(schedule_id, "schedule deleted")
        self._edited.set()
        return True

    def _cancel_prepared(self, schedule_id: str, reason: str) -> None:
        cancelled = self.announcer.cancel_waiting(schedule_id, reason)
        if cancelled:
            log.info(
                "schedule %s: %s; cancelled its prepared firing(s) %s",
                schedule_id,
                reason,
                ", ".join(cancelled),
            )

    async def set_paused(self, schedule_id: str, paused: bool) -> dict[str, Any] | None:
        live = self._live.get(schedule_id)
        if live is None:
            return None
        now = self.clock.wall()
        if live.paused and not paused:
            # Resuming starts from now: firings while paused were not wanted.
            live.next_fire_at = live.trigger.next_after(now)
            await self.store.set_next_fire_at(schedule_id, live.next_fire_at, now)
        await self.store.set_schedule_paused(schedule_id, paused, now)
        live.paused = paused
        if paused:
            self._cancel_prepared(schedule_id, "schedule paused")
        self._edited.set()
        return self.describe(schedule_id)

    def describe(self, schedule_id: str, upcoming: int = 3) -> dict[str, Any]:
        live = self._live[schedule_id]
        nxt: list[str] = []
        at = live.next_fire_at
        while at is not None and len(nxt) < upcoming and not live.paused:
            nxt.append(at.isoformat())
            at = live.trigger.next_after(at)
        return {
            **live.spec.model_dump(),
            "source": live.source,
            "paused": live.paused,
            "trigger": live.trigger.describe(),
            "next_firings": nxt,
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(sid) for sid in sorted(self._live)]

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Plan and act until cancelled.

        A pass that the store refuses (disk full) is tried again after a pause
        (doubling from 1 s up to 30 s): a firing is only acted on once its claim
        is written, so it is neither lost (it is found again, late, and judged by
        its grace) nor doubled. The store's health reports the fault.
        """
        pause_us = 0
        while True:
            try:
                wake = await self.run_once()
            except StoreError as exc:
                pause_us = min(max(1_000_000, pause_us * 2), int(_MAX_SLEEP.total_seconds() * 1e6))
                log.warning(
                    "schedules: store refused a write (%s); again in %d s",
                    exc,
                    pause_us // 1_000_000,
                )
                await self.clock.sleep_us(pause_us)
                continue
            pause_us = 0
            await self._sleep_until(wake)

    async def run_once(self) -> datetime | None:
        """One planning pass; returns when to wake next."""
        sched = self.config.scheduling
        now = self.clock.wall()
        views = [
            ScheduleView(
                id=sid,
                trigger=live.trigger,
                next_fire_at=live.next_fire_at,
                paused=live.paused,
                policy=self._policy(live),
                priority=self._priority(live),
            )
            for sid, live in self._live.items()
        ]
        result = plan(views, now, prerender_s=sched.prerender_s)
        for firing in result.firings:
            live = self._live.get(firing.schedule_id)
            if live is not None:
                await self._act(live, firing, now)
        for sid, nxt in result.next_fire_at.items():
            live = self._live.get(sid)
            if live is not None and live.next_fire_at != nxt:
                # Stored first: a pass the store refused is planned again from the same
                # point (claimed firings are skipped, the others still judged by grace).
                await self.store.set_next_fire_at(sid, nxt, self.clock.wall())
                live.next_fire_at = nxt
        return result.wake_at

    async def _sleep_until(self, wake: datetime | None) -> None:
        now = self.clock.wall()
        target = now + _MAX_SLEEP if wake is None else min(wake, now + _MAX_SLEEP)
        delay_us = max(0, int((target - now).total_seconds() * 1e6))
        deadline_us = self.clock.monotonic_us() + delay_us
        await wait_event_or_deadline(self.clock, self._edited, deadline_us)

    def _policy(self, live: _Live) -> SchedulePolicy:
        """The schedule's own policy, else its template's, else [scheduling] defaults."""
        sched = self.config.scheduling
        spec, tpl = live.spec, live.template
        return SchedulePolicy(
            misfire_grace_s=first_given(
                spec.misfire_grace_s, tpl and tpl.misfire_grace_s, sched.misfire_grace_s
            ),
            coalesce=first_given(spec.coalesce, tpl and tpl.coalesce, sched.coalesce),
            expires_after_s=first_given(spec.expires_after_s, tpl and tpl.expires_after_s),
            emergency=self._priority(live) >= self.config.announcements.emergency_priority,
        )

    def _priority(self, live: _Live) -> int:
        return self.priority_of(live.spec)

    def _language(self, live: _Live) -> str:
        tpl = live.template
        language: str = first_given(
            live.spec.language, tpl and tpl.language, self.config.speech.default_language
        )
        return language

    async def _claim_held(self, schedule_id: str, firing: Firing) -> bool:
        """True if this firing was already accepted in memory (store fault): its claim
        is written now if the store can (else at a later pass); it is not played again."""
        held = self._held.get((schedule_id, firing.fire_at))
        if held is None:
            return False
        try:
            await self.store.claim_firing(
                schedule_id,
                firing.fire_at,
                decision="prepare",
                coalesced=firing.coalesced,
                reason=f"accepted as announcement {held} while the store could not write",
            )
        except StoreError:
            return True
        del self._held[(schedule_id, firing.fire_at)]
        return True

    async def _act(self, live: _Live, firing: Firing, now: datetime) -> None:
        spec = live.spec
        tpl = live.template
        language = self._language(live)
        reason = firing.reason
        text = spec.text or ""
        decision: str = firing.decision
        also: tuple[tuple[str, str], ...] = ()
        if tpl is not None:
            try:
                text, also = tpl.render_all(spec.variables, language)
            except TemplateError as exc:
                decision, reason = "failed", f"template could not be rendered: {exc}"
        elif spec.template is not None:
            decision, reason = "failed", f"template {spec.template!r} no longer exists"
        announcement = compose_spec(
            self.config,
            tpl,
            text=text or f"(template {spec.template})",
            zones=self.config.expand_zones(spec.zones or (tpl.zones if tpl else [])),
            language=language,
            also=also,
            voice=spec.voice,
            priority=self._priority(live),
            chime_before=spec.chime_before,
            chime_after=spec.chime_after,
            repeats=spec.repeats,
            repeat_gap_ms=spec.repeat_gap_ms,
        )

        # Stored with the record, so a restart that finds it not yet played knows
        # when it stopped being worth playing (journal.recover).
        grace_until = firing.fire_at + timedelta(seconds=self._policy(live).misfire_grace_s)

        async def claim(ann: Any) -> bool:
            refused = ann.state is AnnouncementState.REFUSED  # not admitted: recorded so
            row = to_row(ann)
            if decision == "prepare":
                row = dataclasses.replace(row, grace_until=grace_until)
            return await self.store.claim_firing_with_announcement(
                spec.id,
                firing.fire_at,
                decision="refused" if refused else decision,
                coalesced=firing.coalesced,
                reason=ann.reason if refused else reason,
                announcement=row,
            )

        if decision == "prepare":
            if await self._claim_held(spec.id, firing):
                return
            due_at = firing.fire_at if firing.fire_at > now else None
            try:
                ann = await self.announcer.accept(
                    announcement,
                    due_at=due_at,
                    expires_at=firing.expires_at,
                    schedule_id=spec.id,
                    fire_at=firing.fire_at,
                    persist=claim,
                )
            except StoreError as exc:
                if not self._policy(live).emergency:
                    raise  # tried again at the next pass, judged by its grace then
                # An emergency firing is not held up by the store: accepted in memory
                # (written when the store can), and remembered so it never plays twice.
                ann = await self.announcer.accept(
                    announcement,
                    due_at=due_at,
                    expires_at=firing.expires_at,
                    schedule_id=spec.id,
                    fire_at=firing.fire_at,
                )
                self._held[(spec.id, firing.fire_at)] = ann.id
                log.error(
                    "schedule %s: emergency firing %s accepted as %s although the store "
                    "cannot claim it (%s)",
                    spec.id,
                    firing.fire_at,
                    ann.id,
                    exc,
                )
                return
            except AlreadyClaimed:
                log.info("schedule %s: firing %s was already handled", spec.id, firing.fire_at)
                return
            except QueueFull as exc:
                # The firing is claimed with decision "refused" and its announcement
                # recorded as "refused" with the reason (see claim above).
                record = exc.record.id if exc.record is not None else "?"
                log.error(
                    "schedule %s: firing %s refused (announcement %s): %s",
                    spec.id,
                    firing.fire_at,
                    record,
                    exc,
                )
                return
            if reason:
                ann.warnings.append(reason)
            log.info("schedule %s: firing %s -> announcement %s", spec.id, firing.fire_at, ann.id)
            return
        # Missed (or not renderable): recorded, never played.
        state = AnnouncementState.MISSED if decision == "missed" else AnnouncementState.FAILED
        ann = self.announcer.registry.create(
            announcement, now=now, now_us=self.clock.monotonic_us()
        )
        ann.schedule_id, ann.fire_at, ann.due_at = spec.id, firing.fire_at, firing.fire_at
        ann.state, ann.reason, ann.finished_at = state, reason, now
        if not await claim(ann):
            self.announcer.registry.forget(ann.id)
            return
        self.announcer.registry.finished(ann)
        log.warning("schedule %s: firing %s %s: %s", spec.id, firing.fire_at, state.value, reason)
