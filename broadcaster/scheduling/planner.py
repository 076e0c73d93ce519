"""The planner: a pure function deciding which schedule firings are due.

``plan(schedules, now, prerender_s=...)`` looks at every schedule's earliest
unhandled firing (``next_fire_at``) and decides, for each firing up to
``now + prerender_s``, whether the runner should prepare an announcement for
it or record it as missed. It reads no clock and does no I/O.

Rules
-----
1. A paused schedule produces nothing and keeps its ``next_fire_at``.
2. For every other schedule, its firings from ``next_fire_at`` (which counts
   as a firing) up to ``now + prerender_s`` (inclusive) are considered by
   iterating the trigger. At most ``max_firings_per_schedule`` records are
   produced per schedule. Past firings beyond the cap are not materialised one
   by one: the newest ones are kept and the older overflow is folded into one
   record with ``coalesced = n`` (decided like rule 6, so in practice
   "missed"). Triggers implementing :class:`CountingTrigger` (all built-in
   ones) are counted arithmetically, so a 1-second interval after a week of
   downtime is cheap. Future firings beyond the cap are left for the next
   plan (``next_fire_at`` points at the first of them).
3. ``fire_at > now`` (inside the pre-render window) -> "prepare": the runner
   creates the announcement now with ``due_at = fire_at`` so audio is
   synthesised ahead and starts exactly at ``fire_at``.
4. ``now - grace <= fire_at <= now`` -> "prepare" (late but within grace: play
   now). Refinement: if the policy's ``expires_after_s`` has already elapsed
   (``fire_at + expires_after_s <= now``) the firing is "missed" instead,
   because the announcement would be born expired.
5. ``fire_at < now - grace`` is stale -> "missed" with a reason such as
   ``"missed by 42 s (grace 30 s)"``, EXCEPT for an emergency schedule whose
   ``expires_after_s`` is set and ``now < fire_at + expires_after_s`` ->
   "prepare" (still valid: play now).
6. Coalescing (``policy.coalesce``): all past firings (late or stale) of one
   schedule in one plan fold into ONE record for the most recent of them, with
   ``coalesced = n`` and the decision of rules 4/5 applied to that latest
   firing. Without coalescing each past firing gets its own record (up to the
   cap). Future (pre-render) firings never coalesce.
7. ``expires_at`` on each prepared firing is ``fire_at + expires_after_s``
   when set, else None (missed records carry None).
8. ``next_fire_at[id]`` is ``trigger.next_after(last firing considered)`` for
   schedules that had firings, and unchanged otherwise. Every input schedule
   id appears in the mapping (paused and exhausted ones too).
9. ``wake_at`` is the earliest ``next_fire_at - prerender_s`` over non-paused
   schedules (it may lie in the past; the runner clamps), None if nothing is
   scheduled.
10. ``firings`` are ordered by ``fire_at``, then priority descending, then
    emergency before non-emergency, then schedule id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from broadcaster.scheduling.triggers import CountingTrigger, Trigger

__all__ = ["Firing", "Plan", "SchedulePolicy", "ScheduleView", "plan"]

_EPS = timedelta(microseconds=1)


@dataclass(frozen=True)
class SchedulePolicy:
    misfire_grace_s: float = 30.0
    coalesce: bool = True
    expires_after_s: float | None = None
    emergency: bool = False

    def __post_init__(self) -> None:
        if self.misfire_grace_s < 0:
            raise ValueError("misfire_grace_s must be >= 0")
        if self.expires_after_s is not None and self.expires_after_s <= 0:
            raise ValueError("expires_after_s must be > 0 when set")


@dataclass(frozen=True)
class ScheduleView:
    """What the planner needs to know about one schedule.

    ``next_fire_at`` is the earliest firing not yet handled (UTC), None when
    the trigger is exhausted.
    """

    id: str
    trigger: Trigger
    next_fire_at: datetime | None
    paused: bool
    policy: SchedulePolicy
    priority: int = 100


@dataclass(frozen=True)
class Firing:
    schedule_id: str
    fire_at: datetime
    decision: Literal["prepare", "missed"]
    reason: str | None = None
    coalesced: int = 1
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Plan:
    firings: list[Firing]
    next_fire_at: dict[str, datetime | None]
    wake_at: datetime | None


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _secs(delta: timedelta | float) -> str:
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    rounded = round(seconds, 1)
    if rounded == int(rounded):
        return f"{int(rounded)} s"
    return f"{rounded:.1f} s"


def _decide(view: ScheduleView, fire_at: datetime, now: datetime, coalesced: int) -> Firing:
    """Rules 3, 4, 5 and 7 for one (possibly coalesced) firing."""
    policy = view.policy
    grace = timedelta(seconds=policy.misfire_grace_s)
    expires_at = (
        fire_at + timedelta(seconds=policy.expires_after_s)
        if policy.expires_after_s is not None
        else None
    )
    folded = f"; {coalesced} firings coalesced" if coalesced > 1 else ""

    def prepare(reason: str | None) -> Firing:
        if folded:
            reason = (reason or "on time") + folded
        return Firing(view.id, fire_at, "prepare", reason, coalesced, expires_at)

    def missed(reason: str) -> Firing:
        return Firing(view.id, fire_at, "missed", reason + folded, coalesced, None)

    if fire_at > now:
        return prepare(None)
    late = now - fire_at
    grace_text = f"grace {_secs(grace)}"
    if late <= grace:
        if expires_at is not None and expires_at <= now:
            lifetime = _secs(expires_at - fire_at)
            return missed(f"expired: late by {_secs(late)}, expires after {lifetime}")
        return prepare(f"late by {_secs(late)} ({grace_text})" if late else None)
    if policy.emergency and expires_at is not None and now < expires_at:
        return prepare(
            f"emergency late by {_secs(late)} ({grace_text}), "
            f"still valid for {_secs(expires_at - now)}"
        )
    return missed(f"missed by {_secs(late)} ({grace_text})")


def _past_firings(
    trigger: Trigger, cursor: datetime, now: datetime, keep: int
) -> tuple[int, list[datetime]]:
    """How many firings lie in ``[cursor, now]`` (``cursor`` counts) and the newest
    ``keep`` of them, oldest first. ``cursor <= now`` is required."""
    if isinstance(trigger, CountingTrigger):
        newest: list[datetime] = []
        f = trigger.last_at_or_before(now)
        while f is not None and f > cursor and len(newest) < keep:
            newest.append(f)
            f = trigger.last_at_or_before(f - _EPS)
        if f is None or f <= cursor:
            if len(newest) < keep:
                newest.append(cursor)
                return len(newest), newest[::-1]
            # Exactly ``keep`` firings after the cursor: the cursor is one more.
            return keep + 1, newest[::-1]
        older = trigger.count_between(cursor, newest[-1] - _EPS)
        return keep + older + 1, newest[::-1]
    # Generic trigger: walk forward, keeping only the newest ``keep``.
    window: deque[datetime] = deque([cursor], maxlen=keep)
    total = 1
    nxt = trigger.next_after(cursor)
    while nxt is not None and nxt <= now:
        window.append(nxt)
        total += 1
        nxt = trigger.next_after(nxt)
    return total, list(window)


def _plan_past(
    view: ScheduleView, cursor: datetime, now: datetime, cap: int
) -> tuple[list[Firing], datetime]:
    """Records for the firings in ``[cursor, now]`` and the latest of them."""
    if view.policy.coalesce:
        total, newest = _past_firings(view.trigger, cursor, now, 1)
        return [_decide(view, newest[-1], now, total)], newest[-1]
    total, newest = _past_firings(view.trigger, cursor, now, cap)
    if total <= len(newest):
        return [_decide(view, f, now, 1) for f in newest], newest[-1]
    # Over the cap: the oldest kept firing stands for itself and everything older.
    overflow = _decide(view, newest[0], now, total - (len(newest) - 1))
    records = [overflow] + [_decide(view, f, now, 1) for f in newest[1:]]
    return records, newest[-1]


def plan(
    schedules: Sequence[ScheduleView],
    now: datetime,
    *,
    prerender_s: float,
    max_firings_per_schedule: int = 1000,
) -> Plan:
    """Decide what is due at ``now``; see the module docstring for the rules."""
    now = _utc(now, "now")
    if prerender_s < 0:
        raise ValueError("prerender_s must be >= 0")
    if max_firings_per_schedule < 1:
        raise ValueError("max_firings_per_schedule must be >= 1")
    prerender = timedelta(seconds=prerender_s)
    horizon = now + prerender
    cap = max_firings_per_schedule

    firings: list[Firing] = []
    next_fire_at: dict[str, datetime | None] = {}
    rank: dict[str, tuple[int, bool]] = {}
    wake_at: datetime | None = None

    for view in schedules:
        if view.id in next_fire_at:
            raise ValueError(f"duplicate schedule id {view.id!r}")
        rank[view.id] = (view.priority, view.policy.emergency)
        nxt = view.next_fire_at
        if not view.paused and nxt is not None:
            cursor = _utc(nxt, f"next_fire_at of {view.id!r}")
            if cursor <= horizon:
                records: list[Firing] = []
                if cursor <= now:
                    records, latest = _plan_past(view, cursor, now, cap)
                    upcoming = view.trigger.next_after(latest)
                else:
                    upcoming = cursor
                while upcoming is not None and upcoming <= horizon and len(records) < cap:
                    records.append(_decide(view, upcoming, now, 1))
                    upcoming = view.trigger.next_after(upcoming)
                firings.extend(records)
                nxt = upcoming
            if nxt is not None:
                wake = nxt - prerender
                wake_at = wake if wake_at is None or wake < wake_at else wake_at
        next_fire_at[view.id] = nxt

    firings.sort(
        key=lambda f: (
            f.fire_at,
            -rank[f.schedule_id][0],
            not rank[f.schedule_id][1],
            f.schedule_id,
        )
    )
    return Plan(firings=firings, next_fire_at=next_fire_at, wake_at=wake_at)
