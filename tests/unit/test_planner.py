"""The planner: each rule of broadcaster.scheduling.planner, with exact instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broadcaster.scheduling.planner import Firing, Plan, SchedulePolicy, ScheduleView, plan
from broadcaster.scheduling.triggers import (
    CronTrigger,
    IntervalTrigger,
    OneShotTrigger,
    Trigger,
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: float = 0) -> datetime:
    whole = int(s)
    return datetime(y, mo, d, h, mi, whole, round((s - whole) * 1_000_000), tzinfo=UTC)


def view(
    sid: str,
    trigger: Trigger,
    next_fire_at: datetime | None,
    *,
    paused: bool = False,
    priority: int = 100,
    **policy: object,
) -> ScheduleView:
    return ScheduleView(
        id=sid,
        trigger=trigger,
        next_fire_at=next_fire_at,
        paused=paused,
        policy=SchedulePolicy(**policy),  # type: ignore[arg-type]
        priority=priority,
    )


class PlainTrigger:
    """Only the Trigger protocol (no counting): exercises the planner's generic path."""

    def __init__(self, inner: Trigger) -> None:
        self.inner = inner

    def next_after(self, after: datetime) -> datetime | None:
        return self.inner.next_after(after)

    def describe(self) -> str:
        return "plain " + self.inner.describe()


DAILY_8 = CronTrigger("0 8 * * *", "UTC")
EVERY_10_MIN = IntervalTrigger(600, utc(2026, 1, 1))


# --------------------------------------------------------------------------- the canonical case


def test_cron_at_0800_planned_at_0800_07_with_10s_grace_is_prepared():
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=10)],
        utc(2026, 1, 5, 8, 0, 7),
        prerender_s=30,
    )
    assert p.firings == [
        Firing("s", utc(2026, 1, 5, 8), "prepare", "late by 7 s (grace 10 s)", 1, None)
    ]
    assert p.next_fire_at == {"s": utc(2026, 1, 6, 8)}
    assert p.wake_at == utc(2026, 1, 6, 7, 59, 30)


def test_cron_at_0800_planned_at_0800_07_with_5s_grace_is_missed():
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=5)],
        utc(2026, 1, 5, 8, 0, 7),
        prerender_s=30,
    )
    assert p.firings == [Firing("s", utc(2026, 1, 5, 8), "missed", "missed by 7 s (grace 5 s)")]
    assert p.next_fire_at == {"s": utc(2026, 1, 6, 8)}


# --------------------------------------------------------------------------- rule 1: paused


def test_paused_schedule_produces_nothing_and_keeps_next_fire_at():
    due = utc(2026, 1, 5, 8)
    p = plan([view("s", DAILY_8, due, paused=True)], utc(2026, 1, 5, 9), prerender_s=30)
    assert p.firings == []
    assert p.next_fire_at == {"s": due}
    assert p.wake_at is None


# --------------------------------------------------------------------------- rules 2 + 3: pre-render window


def test_future_firings_inside_the_prerender_window_are_prepared_individually():
    t = IntervalTrigger(10, utc(2026, 1, 1, 8, 0, 10))
    p = plan([view("s", t, utc(2026, 1, 1, 8, 0, 10))], utc(2026, 1, 1, 8), prerender_s=30)
    assert p.firings == [
        Firing("s", utc(2026, 1, 1, 8, 0, 10), "prepare"),
        Firing("s", utc(2026, 1, 1, 8, 0, 20), "prepare"),
        Firing("s", utc(2026, 1, 1, 8, 0, 30), "prepare"),  # now + prerender is inclusive
    ]
    assert p.next_fire_at == {"s": utc(2026, 1, 1, 8, 0, 40)}
    assert p.wake_at == utc(2026, 1, 1, 8, 0, 10)


def test_firing_beyond_the_prerender_window_is_left_alone():
    nxt = utc(2026, 1, 5, 8)
    p = plan([view("s", DAILY_8, nxt)], utc(2026, 1, 5, 7, 59, 29), prerender_s=30)
    assert p.firings == []
    assert p.next_fire_at == {"s": nxt}
    assert p.wake_at == utc(2026, 1, 5, 7, 59, 30)
    p = plan([view("s", DAILY_8, nxt)], utc(2026, 1, 5, 7, 59, 30), prerender_s=30)
    assert p.firings == [Firing("s", nxt, "prepare")]
    assert p.next_fire_at == {"s": utc(2026, 1, 6, 8)}


def test_future_firings_beyond_the_cap_wait_for_the_next_plan():
    t = IntervalTrigger(1, utc(2026, 1, 1, 8, 0, 1))
    p = plan(
        [view("s", t, utc(2026, 1, 1, 8, 0, 1))],
        utc(2026, 1, 1, 8),
        prerender_s=10,
        max_firings_per_schedule=3,
    )
    assert [f.fire_at for f in p.firings] == [utc(2026, 1, 1, 8, 0, s) for s in (1, 2, 3)]
    assert all(f.decision == "prepare" for f in p.firings)
    assert p.next_fire_at == {"s": utc(2026, 1, 1, 8, 0, 4)}
    assert p.wake_at == utc(2026, 1, 1, 7, 59, 54)  # in the past: the runner replans at once


# --------------------------------------------------------------------------- rule 4: late within grace


def test_late_within_grace_boundary_is_inclusive():
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=30)],
        utc(2026, 1, 5, 8, 0, 30),
        prerender_s=0,
    )
    assert p.firings == [
        Firing("s", utc(2026, 1, 5, 8), "prepare", "late by 30 s (grace 30 s)", 1, None)
    ]
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=30)],
        utc(2026, 1, 5, 8, 0, 30.5),
        prerender_s=0,
    )
    assert p.firings == [Firing("s", utc(2026, 1, 5, 8), "missed", "missed by 30.5 s (grace 30 s)")]


def test_firing_exactly_now_is_prepared_without_reason():
    p = plan([view("s", DAILY_8, utc(2026, 1, 5, 8))], utc(2026, 1, 5, 8), prerender_s=0)
    assert p.firings == [Firing("s", utc(2026, 1, 5, 8), "prepare")]


def test_late_within_grace_but_already_expired_is_missed():
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=30, expires_after_s=10)],
        utc(2026, 1, 5, 8, 0, 20),
        prerender_s=0,
    )
    assert p.firings == [
        Firing("s", utc(2026, 1, 5, 8), "missed", "expired: late by 20 s, expires after 10 s")
    ]


# --------------------------------------------------------------------------- rule 5: stale


def test_stale_firing_is_missed_with_reason():
    p = plan(
        [view("s", DAILY_8, utc(2026, 1, 5, 8), misfire_grace_s=30)],
        utc(2026, 1, 5, 8, 0, 42),
        prerender_s=30,
    )
    assert p.firings == [Firing("s", utc(2026, 1, 5, 8), "missed", "missed by 42 s (grace 30 s)")]
    assert p.next_fire_at == {"s": utc(2026, 1, 6, 8)}


def test_emergency_still_valid_is_played_now():
    fire = utc(2026, 1, 5, 8)
    sched = view("alarm", DAILY_8, fire, misfire_grace_s=30, expires_after_s=600, emergency=True)
    p = plan([sched], utc(2026, 1, 5, 8, 5), prerender_s=30)
    assert p.firings == [
        Firing(
            "alarm",
            fire,
            "prepare",
            "emergency late by 300 s (grace 30 s), still valid for 300 s",
            1,
            utc(2026, 1, 5, 8, 10),
        )
    ]


def test_emergency_past_its_validity_is_missed():
    fire = utc(2026, 1, 5, 8)
    sched = view("alarm", DAILY_8, fire, misfire_grace_s=30, expires_after_s=600, emergency=True)
    p = plan([sched], utc(2026, 1, 5, 8, 10), prerender_s=30)  # now == fire + expires: not valid
    assert p.firings == [Firing("alarm", fire, "missed", "missed by 600 s (grace 30 s)")]


def test_stale_non_emergency_or_emergency_without_expiry_is_missed():
    fire = utc(2026, 1, 5, 8)
    now = utc(2026, 1, 5, 8, 5)
    p = plan(
        [
            view("normal", DAILY_8, fire, expires_after_s=600),
            view("alarm", DAILY_8, fire, emergency=True),
        ],
        now,
        prerender_s=0,
    )
    assert [(f.schedule_id, f.decision) for f in p.firings] == [
        ("alarm", "missed"),
        ("normal", "missed"),
    ]


# --------------------------------------------------------------------------- rule 6: coalescing


def test_downtime_of_two_hours_every_ten_minutes_is_one_missed_record():
    p = plan(
        [view("s", EVERY_10_MIN, utc(2026, 1, 1, 8, 10))],
        utc(2026, 1, 1, 10, 0, 45),
        prerender_s=30,
    )
    assert p.firings == [
        Firing(
            "s",
            utc(2026, 1, 1, 10),
            "missed",
            "missed by 45 s (grace 30 s); 12 firings coalesced",
            12,
        )
    ]
    assert p.next_fire_at == {"s": utc(2026, 1, 1, 10, 10)}


def test_downtime_with_cron_coalesces_the_same_way():
    t = CronTrigger("*/10 * * * *", "Europe/London")
    p = plan([view("s", t, utc(2026, 1, 1, 8, 10))], utc(2026, 1, 1, 10, 0, 45), prerender_s=30)
    assert [(f.fire_at, f.decision, f.coalesced) for f in p.firings] == [
        (utc(2026, 1, 1, 10), "missed", 12)
    ]


def test_coalesced_latest_within_grace_is_played_and_future_ones_stay_separate():
    p = plan(
        [view("s", EVERY_10_MIN, utc(2026, 1, 1, 8, 10), expires_after_s=120)],
        utc(2026, 1, 1, 10, 0, 10),
        prerender_s=600,
    )
    assert p.firings == [
        Firing(
            "s",
            utc(2026, 1, 1, 10),
            "prepare",
            "late by 10 s (grace 30 s); 12 firings coalesced",
            12,
            utc(2026, 1, 1, 10, 2),
        ),
        Firing("s", utc(2026, 1, 1, 10, 10), "prepare", None, 1, utc(2026, 1, 1, 10, 12)),
    ]
    assert p.next_fire_at == {"s": utc(2026, 1, 1, 10, 20)}


def test_without_coalesce_each_past_firing_gets_its_own_record():
    p = plan(
        [view("s", EVERY_10_MIN, utc(2026, 1, 1, 8, 10), coalesce=False)],
        utc(2026, 1, 1, 10, 0, 10),
        prerender_s=0,
    )
    assert [(f.fire_at, f.decision, f.coalesced) for f in p.firings] == [
        *[(utc(2026, 1, 1, 8, 10) + timedelta(minutes=10 * i), "missed", 1) for i in range(11)],
        (utc(2026, 1, 1, 10), "prepare", 1),
    ]
    assert p.firings[0].reason == "missed by 6610 s (grace 30 s)"


def test_future_firings_never_coalesce():
    t = IntervalTrigger(10, utc(2026, 1, 1))
    p = plan([view("s", t, utc(2026, 1, 1, 8, 0, 10))], utc(2026, 1, 1, 8), prerender_s=20)
    assert [(f.fire_at, f.coalesced) for f in p.firings] == [
        (utc(2026, 1, 1, 8, 0, 10), 1),
        (utc(2026, 1, 1, 8, 0, 20), 1),
    ]


def test_a_week_of_one_second_firings_is_counted_not_iterated():
    t = IntervalTrigger(1, utc(2026, 1, 1))
    now = utc(2026, 1, 8, 0, 0, 0.5)
    p = plan([view("s", t, utc(2026, 1, 1))], now, prerender_s=5)
    past, *future = p.firings
    assert past == Firing(
        "s",
        utc(2026, 1, 8),
        "prepare",
        "late by 0.5 s (grace 30 s); 604801 firings coalesced",
        604801,
    )
    assert [f.fire_at for f in future] == [utc(2026, 1, 8, 0, 0, s) for s in range(1, 6)]
    assert p.next_fire_at == {"s": utc(2026, 1, 8, 0, 0, 6)}


def test_a_week_of_one_second_firings_without_coalesce_is_capped():
    t = IntervalTrigger(1, utc(2026, 1, 1))
    now = utc(2026, 1, 8, 0, 0, 0.5)
    p = plan(
        [view("s", t, utc(2026, 1, 1), coalesce=False, misfire_grace_s=30)],
        now,
        prerender_s=5,
        max_firings_per_schedule=1000,
    )
    assert len(p.firings) == 1000
    overflow, *individual = p.firings
    # The oldest kept record stands for itself and everything before it.
    assert overflow.fire_at == utc(2026, 1, 8) - timedelta(seconds=999)
    assert overflow.decision == "missed"
    assert overflow.coalesced == 604801 - 999
    assert sum(f.coalesced for f in p.firings) == 604801
    assert [f.fire_at for f in individual] == [
        utc(2026, 1, 8) - timedelta(seconds=998 - i) for i in range(999)
    ]
    prepared = [f for f in individual if f.decision == "prepare"]
    assert [f.fire_at for f in prepared] == [
        utc(2026, 1, 8) - timedelta(seconds=29 - i) for i in range(30)
    ]
    # No room left for the pre-render window: those firings wait for the next plan.
    assert p.next_fire_at == {"s": utc(2026, 1, 8, 0, 0, 1)}
    assert p.wake_at == utc(2026, 1, 8) - timedelta(seconds=4)


def test_generic_triggers_give_the_same_plan_as_counting_ones():
    schedules: list[tuple[str, Trigger, datetime]] = [
        ("every-second", IntervalTrigger(1, utc(2026, 10, 24, 23)), utc(2026, 10, 24, 23)),
        ("cron-dst", CronTrigger("*/15 * * * *", "Europe/London"), utc(2026, 10, 24, 22)),
        ("daily-ny", CronTrigger("30 1 * * *", "America/New_York"), utc(2026, 10, 20, 5, 30)),
    ]
    now = utc(2026, 10, 25, 2, 0, 20)
    for coalesce in (True, False):
        for cap in (1, 2, 7, 1000):
            counted = plan(
                [view(i, t, n, coalesce=coalesce) for i, t, n in schedules],
                now,
                prerender_s=1800,
                max_firings_per_schedule=cap,
            )
            generic = plan(
                [view(i, PlainTrigger(t), n, coalesce=coalesce) for i, t, n in schedules],
                now,
                prerender_s=1800,
                max_firings_per_schedule=cap,
            )
            assert counted == generic, (coalesce, cap)
            assert all(
                len([f for f in counted.firings if f.schedule_id == i]) <= cap
                for i, _, _ in schedules
            )


def test_coalescing_across_the_repeated_hour_counts_each_wall_time_once():
    # Down from 00:50Z to 02:05Z on the London fall-back day: 01:00..01:45 BST fired at
    # 00:00..00:45Z, the repeated hour fires nothing, so only 02:00 GMT is past.
    t = CronTrigger("*/15 * * * *", "Europe/London")
    p = plan([view("s", t, utc(2026, 10, 24, 23, 45))], utc(2026, 10, 25, 2, 5), prerender_s=0)
    assert [(f.fire_at, f.coalesced) for f in p.firings] == [(utc(2026, 10, 25, 2), 6)]
    assert p.next_fire_at == {"s": utc(2026, 10, 25, 2, 15)}


# --------------------------------------------------------------------------- rule 7: expires_at


def test_expires_at_on_prepared_firings_only():
    t = IntervalTrigger(60, utc(2026, 1, 1))
    p = plan(
        [view("s", t, utc(2026, 1, 1, 8), expires_after_s=90, coalesce=False)],
        utc(2026, 1, 1, 8, 1, 5),
        prerender_s=60,
    )
    assert [(f.fire_at, f.decision, f.expires_at) for f in p.firings] == [
        (utc(2026, 1, 1, 8), "missed", None),
        (utc(2026, 1, 1, 8, 1), "prepare", utc(2026, 1, 1, 8, 2, 30)),
        (utc(2026, 1, 1, 8, 2), "prepare", utc(2026, 1, 1, 8, 3, 30)),
    ]
    no_expiry = plan(
        [view("s", t, utc(2026, 1, 1, 8, 2))], utc(2026, 1, 1, 8, 1, 5), prerender_s=60
    )
    assert [f.expires_at for f in no_expiry.firings] == [None]


# --------------------------------------------------------------------------- rule 8: next_fire_at


def test_next_fire_at_is_none_once_a_one_shot_is_handled():
    at = utc(2026, 1, 1, 8)
    p = plan([view("once", OneShotTrigger(at), at)], utc(2026, 1, 1, 7, 59, 50), prerender_s=30)
    assert p.firings == [Firing("once", at, "prepare")]
    assert p.next_fire_at == {"once": None}
    assert p.wake_at is None


def test_next_fire_at_unchanged_without_firings_and_kept_for_every_schedule():
    later = datetime(2026, 1, 6, 9, tzinfo=ZoneInfo("Europe/Paris"))  # 08:00Z
    p = plan(
        [
            view("later", DAILY_8, later),
            view("done", DAILY_8, None),
            view("paused", DAILY_8, utc(2026, 1, 1, 8), paused=True),
        ],
        utc(2026, 1, 5, 12),
        prerender_s=30,
    )
    assert p.firings == []
    assert p.next_fire_at == {"later": later, "done": None, "paused": utc(2026, 1, 1, 8)}
    assert p.wake_at == utc(2026, 1, 6, 7, 59, 30)


def test_fire_at_is_utc_even_when_next_fire_at_is_not():
    local = datetime(2026, 1, 5, 9, tzinfo=ZoneInfo("Europe/Paris"))
    p = plan([view("s", DAILY_8, local)], utc(2026, 1, 5, 8), prerender_s=0)
    assert p.firings[0].fire_at == utc(2026, 1, 5, 8)
    assert p.firings[0].fire_at.tzinfo is UTC


# --------------------------------------------------------------------------- rule 9: wake_at


def test_wake_at_is_the_earliest_next_fire_minus_prerender_over_unpaused_schedules():
    p = plan(
        [
            view("a", DAILY_8, utc(2026, 1, 5, 8)),
            view("b", CronTrigger("0 7 * * *", "UTC"), utc(2026, 1, 5, 7)),
            view("paused", DAILY_8, utc(2026, 1, 5, 6), paused=True),
            view("done", DAILY_8, None),
        ],
        utc(2026, 1, 5, 5),
        prerender_s=45,
    )
    assert p.wake_at == utc(2026, 1, 5, 6, 59, 15)


def test_wake_at_is_none_when_nothing_is_scheduled():
    assert plan([], utc(2026, 1, 1), prerender_s=30) == Plan([], {}, None)
    p = plan([view("p", DAILY_8, utc(2026, 1, 5, 8), paused=True)], utc(2026, 1, 1), prerender_s=30)
    assert p.wake_at is None


# --------------------------------------------------------------------------- rule 10: ordering


def test_firings_are_ordered_by_time_then_priority_then_emergency_then_id():
    at = utc(2026, 1, 5, 8)
    earlier = utc(2026, 1, 5, 7, 59, 50)
    p = plan(
        [
            view("b-normal", DAILY_8, at),
            view("a-normal", DAILY_8, at),
            view("z-emergency", DAILY_8, at, priority=200, emergency=True),
            view("y-emergency-same-priority", DAILY_8, at, emergency=True),
            view("low", DAILY_8, at, priority=10),
            view("early", CronTrigger("59 7 * * *", "UTC"), utc(2026, 1, 5, 7, 59)),
            view("earlier", IntervalTrigger(3600, earlier), earlier),
        ],
        utc(2026, 1, 5, 7, 59, 45),
        prerender_s=30,
    )
    assert [f.schedule_id for f in p.firings] == [
        "early",
        "earlier",
        "z-emergency",
        "y-emergency-same-priority",
        "a-normal",
        "b-normal",
        "low",
    ]


# --------------------------------------------------------------------------- validation


def test_invalid_arguments():
    with pytest.raises(ValueError):
        plan([], datetime(2026, 1, 1), prerender_s=0)
    with pytest.raises(ValueError):
        plan([], utc(2026, 1, 1), prerender_s=-1)
    with pytest.raises(ValueError):
        plan([], utc(2026, 1, 1), prerender_s=0, max_firings_per_schedule=0)
    with pytest.raises(ValueError):
        plan([view("s", DAILY_8, None), view("s", DAILY_8, None)], utc(2026, 1, 1), prerender_s=0)
    with pytest.raises(ValueError):
        SchedulePolicy(misfire_grace_s=-1)
    with pytest.raises(ValueError):
        SchedulePolicy(expires_after_s=0)
