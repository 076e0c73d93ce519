"""Triggers: exact firing sequences, DST in both directions, exception dates, bounds, errors.

2026 transitions used below:
* Europe/London: spring forward Sun 29 Mar 01:00 GMT -> 02:00 BST (01:00-01:59 missing);
  fall back Sun 25 Oct 02:00 BST -> 01:00 GMT (01:00-01:59 twice).
* America/New_York: spring forward Sun 8 Mar 02:00 EST -> 03:00 EDT;
  fall back Sun 1 Nov 02:00 EDT -> 01:00 EST.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broadcaster.scheduling.triggers import (
    CountingTrigger,
    CronTrigger,
    IntervalTrigger,
    OneShotTrigger,
    Trigger,
    TriggerError,
    local_to_utc,
    make_trigger,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def firings(trigger: Trigger, after: datetime, n: int) -> list[datetime | None]:
    out: list[datetime | None] = []
    cursor: datetime | None = after
    for _ in range(n):
        assert cursor is not None
        cursor = trigger.next_after(cursor)
        out.append(cursor)
    return out


def firings_until(trigger: Trigger, after: datetime, until: datetime) -> list[datetime]:
    out = []
    cursor = trigger.next_after(after)
    while cursor is not None and cursor <= until:
        out.append(cursor)
        cursor = trigger.next_after(cursor)
    return out


# --------------------------------------------------------------------------- cron, DST


def test_cron_daily_in_london_spring_forward_gap_fires_once_after_the_gap():
    t = CronTrigger("30 1 * * *", "Europe/London")
    assert firings(t, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),  # 01:30 GMT
        utc(2026, 3, 29, 1, 0),  # 01:30 does not exist -> 02:00 BST, the end of the gap
        utc(2026, 3, 30, 0, 30),  # 01:30 BST
    ]


def test_cron_daily_in_london_fall_back_overlap_fires_once_at_first_occurrence():
    t = CronTrigger("30 1 * * *", "Europe/London")
    assert firings(t, utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 24, 0, 30),  # 01:30 BST
        utc(2026, 10, 25, 0, 30),  # 01:30 BST, first of the two 01:30s; not again at 01:30 GMT
        utc(2026, 10, 26, 1, 30),  # 01:30 GMT
    ]


def test_cron_daily_in_new_york_spring_forward_gap_fires_at_three():
    t = CronTrigger("30 2 * * *", "America/New_York")
    got = firings(t, utc(2026, 3, 6, 12), 3)
    assert got == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]
    assert got[1] is not None
    assert got[1].astimezone(NEW_YORK).strftime("%H:%M %Z") == "03:00 EDT"


def test_cron_daily_in_new_york_fall_back_overlap_fires_once():
    t = CronTrigger("30 1 * * *", "America/New_York")
    assert firings(t, utc(2026, 10, 30, 12), 3) == [
        utc(2026, 10, 31, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT only (01:30 EST = 06:30Z is not fired)
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_cron_daily_at_a_time_outside_the_change_keeps_wall_time():
    t = CronTrigger("0 8 * * *", "America/New_York")
    assert firings(t, utc(2026, 3, 7, 0), 2) == [utc(2026, 3, 7, 13), utc(2026, 3, 8, 12)]
    assert firings(t, utc(2026, 10, 31, 0), 2) == [utc(2026, 10, 31, 12), utc(2026, 11, 1, 13)]


def test_cron_hourly_across_new_york_spring_forward():
    t = CronTrigger("0 * * * *", "America/New_York")
    assert firings(t, utc(2026, 3, 8, 4, 30), 4) == [
        utc(2026, 3, 8, 5),  # 00:00 EST
        utc(2026, 3, 8, 6),  # 01:00 EST
        utc(2026, 3, 8, 7),  # 02:00 missing -> 03:00 EDT, merged with 03:00 (fires once)
        utc(2026, 3, 8, 8),  # 04:00 EDT
    ]


def test_cron_hourly_across_new_york_fall_back_does_not_repeat_the_hour():
    t = CronTrigger("0 * * * *", "America/New_York")
    assert firings(t, utc(2026, 11, 1, 3, 30), 4) == [
        utc(2026, 11, 1, 4),  # 00:00 EDT
        utc(2026, 11, 1, 5),  # 01:00 EDT
        utc(2026, 11, 1, 7),  # 02:00 EST: the second 01:00 (06:00Z) was already fired
        utc(2026, 11, 1, 8),
    ]


def test_cron_hourly_across_london_changes():
    t = CronTrigger("0 * * * *", "Europe/London")
    assert firings(t, utc(2026, 3, 28, 23, 30), 3) == [
        utc(2026, 3, 29, 0),  # 00:00 GMT
        utc(2026, 3, 29, 1),  # 01:00 missing -> 02:00 BST
        utc(2026, 3, 29, 2),  # 03:00 BST
    ]
    assert firings(t, utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0),  # 01:00 BST
        utc(2026, 10, 25, 2),  # 02:00 GMT (01:00 GMT = 01:00Z is a repeat)
        utc(2026, 10, 25, 3),
    ]


def test_cron_every_15_minutes_across_london_spring_forward():
    t = CronTrigger("*/15 * * * *", "Europe/London")
    # 01:00..01:45 local do not exist: they all become 02:00 BST, which is also a match.
    assert firings(t, utc(2026, 3, 29, 0, 20), 5) == [
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 0, 45),
        utc(2026, 3, 29, 1, 0),  # 02:00 BST
        utc(2026, 3, 29, 1, 15),  # 02:15 BST
        utc(2026, 3, 29, 1, 30),
    ]


def test_cron_every_15_minutes_across_london_fall_back_skips_the_repeated_hour():
    t = CronTrigger("*/15 * * * *", "Europe/London")
    assert firings(t, utc(2026, 10, 24, 23, 50), 6) == [
        utc(2026, 10, 25, 0, 0),  # 01:00 BST
        utc(2026, 10, 25, 0, 15),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 0, 45),  # 01:45 BST
        utc(2026, 10, 25, 2, 0),  # 02:00 GMT: 01:00-01:45 GMT were already fired as BST
        utc(2026, 10, 25, 2, 15),
    ]


def test_cron_every_15_minutes_across_new_york_changes():
    t = CronTrigger("*/15 * * * *", "America/New_York")
    assert firings(t, utc(2026, 3, 8, 6, 40), 3) == [
        utc(2026, 3, 8, 6, 45),  # 01:45 EST
        utc(2026, 3, 8, 7, 0),  # 02:00-02:45 missing -> 03:00 EDT, once
        utc(2026, 3, 8, 7, 15),  # 03:15 EDT
    ]
    assert firings(t, utc(2026, 11, 1, 5, 40), 3) == [
        utc(2026, 11, 1, 5, 45),  # 01:45 EDT
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
        utc(2026, 11, 1, 7, 15),
    ]


def test_cron_next_after_from_inside_the_repeated_hour():
    t = CronTrigger("*/15 * * * *", "Europe/London")
    inside_second_pass = datetime(2026, 10, 25, 1, 20, tzinfo=LONDON, fold=1)  # 01:20 GMT
    assert t.next_after(inside_second_pass) == utc(2026, 10, 25, 2, 0)
    inside_first_pass = datetime(2026, 10, 25, 1, 20, tzinfo=LONDON, fold=0)  # 01:20 BST
    assert t.next_after(inside_first_pass) == utc(2026, 10, 25, 0, 30)


def test_cron_daily_in_the_gap_from_just_before_and_at_the_transition():
    t = CronTrigger("30 2 * * *", "America/New_York")
    assert t.next_after(utc(2026, 3, 8, 6, 59, 59)) == utc(2026, 3, 8, 7)
    assert t.next_after(utc(2026, 3, 8, 7)) == utc(2026, 3, 9, 6, 30)


def test_cron_half_hour_dst_zone_lord_howe():
    t = CronTrigger("*/15 * * * *", "Australia/Lord_Howe")
    # Fall back 5 Apr 2026 02:00 +11 -> 01:30 +10:30: 01:30 and 01:45 fire once.
    assert firings(t, utc(2026, 4, 4, 14, 20), 3) == [
        utc(2026, 4, 4, 14, 30),  # 01:30 +11
        utc(2026, 4, 4, 14, 45),  # 01:45 +11
        utc(2026, 4, 4, 15, 30),  # 02:00 +10:30
    ]
    # Spring forward 4 Oct 2026 02:00 +10:30 -> 02:30 +11: 02:00 and 02:15 become 02:30.
    assert firings(t, utc(2026, 10, 3, 15, 10), 3) == [
        utc(2026, 10, 3, 15, 15),  # 01:45 +10:30
        utc(2026, 10, 3, 15, 30),  # 02:30 +11
        utc(2026, 10, 3, 15, 45),
    ]


def test_cron_midnight_that_does_not_exist_santiago():
    # Chile springs forward at 00:00 -> 01:00 on 6 Sep 2026.
    t = CronTrigger("0 0 * * *", "America/Santiago")
    assert firings(t, utc(2026, 9, 5, 12), 2) == [utc(2026, 9, 6, 4), utc(2026, 9, 7, 3)]


def test_cron_accepts_after_in_any_zone_and_returns_utc():
    t = CronTrigger("0 9 * * *", "Europe/London")
    tokyo = datetime(2026, 6, 1, 17, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 08:00Z = 09:00 BST
    got = t.next_after(tokyo)
    assert got == utc(2026, 6, 2, 8)
    assert got is not None and got.tzinfo is UTC


def test_cron_next_after_is_strict():
    t = CronTrigger("0 8 * * *", "UTC")
    assert t.next_after(utc(2026, 1, 1, 8)) == utc(2026, 1, 2, 8)
    assert t.next_after(utc(2026, 1, 1, 8) - timedelta(microseconds=1)) == utc(2026, 1, 1, 8)


def test_cron_naive_after_is_rejected():
    with pytest.raises(ValueError):
        CronTrigger("0 8 * * *", "UTC").next_after(datetime(2026, 1, 1))


def test_cron_weekdays_and_names():
    t = CronTrigger("0 8 * * MON-FRI", "UTC")
    # 2026-01-02 is a Friday
    assert firings(t, utc(2026, 1, 2, 9), 2) == [utc(2026, 1, 5, 8), utc(2026, 1, 6, 8)]


# --------------------------------------------------------------------------- cron counting


CASES = [
    ("*/15 * * * *", "Europe/London", utc(2026, 3, 28, 20), utc(2026, 3, 30, 3, 7)),
    ("*/15 * * * *", "Europe/London", utc(2026, 10, 24, 0, 1), utc(2026, 10, 26, 5)),
    ("0 * * * *", "America/New_York", utc(2026, 3, 7, 10), utc(2026, 3, 10)),
    ("0 * * * *", "America/New_York", utc(2026, 10, 30, 23, 59), utc(2026, 11, 3, 1)),
    ("30 1 * * *", "America/New_York", utc(2026, 10, 20), utc(2026, 11, 10)),
    ("30 2 * * *", "America/New_York", utc(2026, 3, 1), utc(2026, 3, 20)),
    ("*/7 1-3 * * 0,6", "Europe/London", utc(2026, 3, 20), utc(2026, 4, 10)),
    ("*/15 * * * *", "Australia/Lord_Howe", utc(2026, 4, 3), utc(2026, 4, 7)),
]


@pytest.mark.parametrize(("expr", "zone", "lo", "hi"), CASES)
def test_cron_count_and_last_agree_with_iteration(expr: str, zone: str, lo: datetime, hi: datetime):
    t = CronTrigger(expr, zone, except_dates=frozenset({date(2026, 3, 31), date(2026, 11, 2)}))
    expected = firings_until(t, lo, hi)
    assert t.count_between(lo, hi) == len(expected)
    assert len(set(expected)) == len(expected)
    # last_at_or_before on, just before and between firings
    for f in expected[:: max(1, len(expected) // 40)]:
        assert t.last_at_or_before(f) == f
        assert t.last_at_or_before(f + timedelta(seconds=30)) == f
        previous = t.last_at_or_before(f - timedelta(microseconds=1))
        assert previous is None or previous < f
        assert previous is None or t.next_after(previous) == f
    assert expected
    assert t.last_at_or_before(hi) == expected[-1]
    # nothing fires in (lo, first): the latest firing before the first is the latest <= lo
    assert t.last_at_or_before(expected[0] - timedelta(microseconds=1)) == t.last_at_or_before(lo)


def test_cron_last_at_or_before_in_the_second_pass_of_the_repeated_hour():
    t = CronTrigger("*/15 * * * *", "Europe/London")
    at = datetime(2026, 10, 25, 1, 50, tzinfo=LONDON, fold=1)  # 01:50 GMT = 01:50Z
    assert t.last_at_or_before(at) == utc(2026, 10, 25, 0, 45)  # 01:45 BST


def test_cron_count_over_a_year_counts_whole_days():
    minutely = CronTrigger("* * * * *", "Europe/London")
    year = (utc(2025, 12, 31, 23, 59, 59), utc(2026, 12, 31, 23, 59, 59))
    # 365 days x 1440 wall minutes; the 60 missing spring minutes all become 02:00 BST
    # (one instant, shared with the 02:00 wall time), the repeated autumn hour fires once.
    assert minutely.count_between(*year) == 365 * 1440 - 60
    assert CronTrigger("* * * * *", "UTC").count_between(*year) == 365 * 1440
    weekdays = CronTrigger("0,30 8-9 * * 1-5", "America/New_York")
    assert weekdays.count_between(utc(2026, 1, 1), utc(2027, 1, 1)) == 261 * 4


# --------------------------------------------------------------------------- interval


def test_interval_is_absolute_across_spring_forward():
    t = IntervalTrigger(3600, datetime(2026, 3, 29, 0, 0, tzinfo=LONDON), "Europe/London")
    got = firings(t, utc(2026, 3, 28, 12), 4)
    assert got == [
        utc(2026, 3, 29, 0),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 2),
        utc(2026, 3, 29, 3),
    ]
    local = [g.astimezone(LONDON).strftime("%H:%M %Z") for g in got if g is not None]
    assert local == ["00:00 GMT", "02:00 BST", "03:00 BST", "04:00 BST"]


def test_interval_daily_is_24_hours_not_wall_time_across_fall_back():
    t = IntervalTrigger(86400, datetime(2026, 10, 31, 12, 0, tzinfo=NEW_YORK), "America/New_York")
    got = firings(t, utc(2026, 10, 31), 3)
    assert got == [utc(2026, 10, 31, 16), utc(2026, 11, 1, 16), utc(2026, 11, 2, 16)]
    assert got[1] is not None and got[1].astimezone(NEW_YORK).hour == 11  # 11:00 EST


def test_interval_anchor_is_first_firing_and_end_is_inclusive():
    t = IntervalTrigger(600, utc(2026, 1, 1, 8), end=utc(2026, 1, 1, 8, 20))
    assert t.next_after(utc(2025, 1, 1)) == utc(2026, 1, 1, 8)
    assert t.next_after(utc(2026, 1, 1, 8)) == utc(2026, 1, 1, 8, 10)
    assert t.next_after(utc(2026, 1, 1, 8, 10, 1)) == utc(2026, 1, 1, 8, 20)
    assert t.next_after(utc(2026, 1, 1, 8, 20)) is None
    assert t.last_at_or_before(utc(2026, 1, 1, 7)) is None
    assert t.last_at_or_before(utc(2026, 1, 1, 9)) == utc(2026, 1, 1, 8, 20)
    assert t.count_between(utc(2026, 1, 1), utc(2026, 1, 2)) == 3


def test_interval_counts_a_week_of_seconds_arithmetically():
    t = IntervalTrigger(1, utc(2026, 1, 1), except_dates=frozenset({date(2026, 1, 3)}))
    assert t.count_between(utc(2026, 1, 1) - timedelta(seconds=1), utc(2026, 1, 8)) == 6 * 86400 + 1
    assert t.last_at_or_before(utc(2026, 1, 3, 12)) == utc(2026, 1, 2, 23, 59, 59)
    assert t.next_after(utc(2026, 1, 2, 23, 59, 59)) == utc(2026, 1, 4)


# --------------------------------------------------------------------------- one-shot


def test_one_shot_fires_once():
    t = OneShotTrigger(datetime(2026, 5, 1, 9, 30, tzinfo=LONDON))
    assert t.next_after(utc(2026, 1, 1)) == utc(2026, 5, 1, 8, 30)
    assert t.next_after(utc(2026, 5, 1, 8, 30)) is None
    assert t.last_at_or_before(utc(2026, 5, 1, 8, 29)) is None
    assert t.last_at_or_before(utc(2026, 6, 1)) == utc(2026, 5, 1, 8, 30)
    assert t.count_between(utc(2026, 1, 1), utc(2027, 1, 1)) == 1
    assert isinstance(t, CountingTrigger)


def test_one_shot_requires_an_aware_instant():
    with pytest.raises(TriggerError) as err:
        OneShotTrigger(datetime(2026, 5, 1, 9, 30))
    assert err.value.field == "at"


# --------------------------------------------------------------------------- exception dates


def test_cron_except_dates_use_the_local_date_near_midnight():
    # 23:30 in New York is 03:30Z the NEXT day: the local date decides.
    t = CronTrigger("30 23 * * *", "America/New_York", except_dates=frozenset({date(2026, 6, 10)}))
    assert firings(t, utc(2026, 6, 9, 12), 3) == [
        utc(2026, 6, 10, 3, 30),  # 9 June local: kept although its UTC date is 10 June
        utc(2026, 6, 12, 3, 30),  # 11 June local (10 June local skipped)
        utc(2026, 6, 13, 3, 30),
    ]
    assert t.last_at_or_before(utc(2026, 6, 12)) == utc(2026, 6, 10, 3, 30)
    assert t.count_between(utc(2026, 6, 9, 12), utc(2026, 6, 13, 3, 30)) == 3


def test_interval_except_dates_use_the_local_date_in_tokyo():
    # Tokyo is UTC+9: local 2 Jan 2026 is 1 Jan 15:00Z .. 2 Jan 15:00Z.
    t = IntervalTrigger(
        3600, utc(2026, 1, 1, 12), "Asia/Tokyo", except_dates=frozenset({date(2026, 1, 2)})
    )
    assert firings(t, utc(2026, 1, 1, 13), 3) == [
        utc(2026, 1, 1, 14),  # 23:00 on 1 Jan local
        utc(2026, 1, 2, 15),  # 00:00 on 3 Jan local
        utc(2026, 1, 2, 16),
    ]
    assert t.count_between(utc(2026, 1, 1, 11), utc(2026, 1, 2, 16)) == 5


def test_one_shot_on_an_exception_date_never_fires():
    t = OneShotTrigger(
        utc(2026, 12, 25, 23, 30), "Pacific/Auckland", frozenset({date(2026, 12, 26)})
    )
    assert t.next_after(utc(2026, 1, 1)) is None
    # The same instant is 25 December in UTC: not excepted there.
    assert OneShotTrigger(
        utc(2026, 12, 25, 23, 30), "UTC", frozenset({date(2026, 12, 26)})
    ).next_after(utc(2026, 1, 1)) == utc(2026, 12, 25, 23, 30)


# --------------------------------------------------------------------------- bounds


def test_cron_start_and_end_bounds_are_inclusive():
    t = CronTrigger("0 8 * * *", "UTC", start=utc(2026, 1, 3, 8), end=utc(2026, 1, 5, 8))
    assert t.next_after(utc(2026, 1, 1)) == utc(2026, 1, 3, 8)
    assert firings_until(t, utc(2026, 1, 1), utc(2027, 1, 1)) == [
        utc(2026, 1, 3, 8),
        utc(2026, 1, 4, 8),
        utc(2026, 1, 5, 8),
    ]
    assert t.next_after(utc(2026, 1, 5, 8)) is None
    assert t.last_at_or_before(utc(2026, 1, 2, 23)) is None
    assert t.last_at_or_before(utc(2027, 1, 1)) == utc(2026, 1, 5, 8)
    assert t.count_between(utc(2025, 1, 1), utc(2027, 1, 1)) == 3


def test_cron_end_before_start_is_rejected():
    with pytest.raises(TriggerError) as err:
        CronTrigger("0 8 * * *", "UTC", start=utc(2026, 2, 1), end=utc(2026, 1, 1))
    assert err.value.field == "end"


# --------------------------------------------------------------------------- local_to_utc


def test_local_to_utc_gap_and_overlap():
    assert local_to_utc(datetime(2026, 3, 8, 2, 30), NEW_YORK) == utc(2026, 3, 8, 7)
    assert local_to_utc(datetime(2026, 3, 8, 2, 0), NEW_YORK) == utc(2026, 3, 8, 7)
    assert local_to_utc(datetime(2026, 3, 8, 3, 0), NEW_YORK) == utc(2026, 3, 8, 7)
    assert local_to_utc(datetime(2026, 3, 8, 1, 59), NEW_YORK) == utc(2026, 3, 8, 6, 59)
    assert local_to_utc(datetime(2026, 11, 1, 1, 30), NEW_YORK) == utc(2026, 11, 1, 5, 30)
    assert local_to_utc(datetime(2026, 11, 1, 1, 30, fold=1), NEW_YORK) == utc(2026, 11, 1, 5, 30)
    assert local_to_utc(datetime(2026, 3, 29, 1, 15), LONDON) == utc(2026, 3, 29, 1)


# --------------------------------------------------------------------------- make_trigger


def test_make_trigger_kinds():
    cron = make_trigger(cron="0 8 * * 1-5", timezone="Europe/London", except_dates=["2026-12-25"])
    assert isinstance(cron, CronTrigger)
    assert cron.except_dates == frozenset({date(2026, 12, 25)})
    every = make_trigger(every_s=600, start="2026-03-29T00:30", timezone="Europe/London")
    assert isinstance(every, IntervalTrigger)
    assert every.next_after(utc(2026, 1, 1)) == utc(2026, 3, 29, 0, 30)
    once = make_trigger(at="2026-07-01T09:00", timezone="Europe/London")
    assert once.next_after(utc(2026, 1, 1)) == utc(2026, 7, 1, 8)  # naive: London wall time (BST)
    aware = make_trigger(at="2026-07-01T09:00Z", timezone="Europe/London")
    assert aware.next_after(utc(2026, 1, 1)) == utc(2026, 7, 1, 9)
    offset = make_trigger(at=datetime(2026, 7, 1, 9, tzinfo=NEW_YORK))
    assert offset.next_after(utc(2026, 1, 1)) == utc(2026, 7, 1, 13)


def test_make_trigger_naive_at_in_a_gap_or_overlap_follows_the_cron_rules():
    gap = make_trigger(at="2026-03-08T02:30", timezone="America/New_York")
    assert gap.next_after(utc(2026, 1, 1)) == utc(2026, 3, 8, 7)  # 03:00 EDT
    overlap = make_trigger(at="2026-11-01T01:30", timezone="America/New_York")
    assert overlap.next_after(utc(2026, 1, 1)) == utc(2026, 11, 1, 5, 30)  # first 01:30


def test_make_trigger_cron_bounds_from_naive_strings():
    t = make_trigger(
        cron="0 8 * * *", timezone="America/New_York", start="2026-07-02", end="2026-07-03T08:00"
    )
    assert firings_until(t, utc(2026, 1, 1), utc(2027, 1, 1)) == [
        utc(2026, 7, 2, 12),
        utc(2026, 7, 3, 12),
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "0 8 * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "0 8 * * *", "timezone": ""}, "timezone"),
        ({"cron": "0 8 * * *", "timezone": "America"}, "timezone"),
        ({"cron": "0 8 * *"}, "cron"),
        ({"cron": "0 0 8 * * *"}, "cron"),
        ({"cron": "61 8 * * *"}, "cron"),
        ({"cron": "nonsense"}, "cron"),
        ({"cron": "0 8 30 2 *"}, "cron"),  # never happens
        ({"cron": "R 8 * * *"}, "cron"),
        ({"cron": "@fortnightly"}, "cron"),
        ({}, "cron"),
        ({"every_s": 0, "start": "2026-01-01T00:00"}, "every_s"),
        ({"every_s": -5, "start": "2026-01-01T00:00"}, "every_s"),
        ({"every_s": 1.5, "start": "2026-01-01T00:00"}, "every_s"),
        ({"every_s": 60}, "start"),
        ({"cron": "0 8 * * *", "every_s": 60}, "every_s"),
        ({"cron": "0 8 * * *", "at": "2026-01-01T08:00"}, "at"),
        ({"at": "tomorrow"}, "at"),
        ({"at": "2026-01-01T08:00", "end": "2026-02-01"}, "end"),
        ({"cron": "0 8 * * *", "except_dates": ["2026-13-01"]}, "except_dates"),
        ({"cron": "0 8 * * *", "except_dates": "2026-12-25"}, "except_dates"),
        ({"cron": "0 8 * * *", "except_dates": [datetime(2026, 12, 25)]}, "except_dates"),
        ({"cron": "0 8 * * *", "start": "2026-02-01", "end": "2026-01-01"}, "end"),
    ],
)
def test_make_trigger_errors_name_the_field(kwargs: dict[str, object], field: str):
    with pytest.raises(TriggerError) as err:
        make_trigger(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{field}: ")


def test_cron_aliases_and_whitespace():
    assert make_trigger(cron="@daily").next_after(utc(2026, 1, 1, 5)) == utc(2026, 1, 2)
    assert make_trigger(cron="  0   8 * *   * ").next_after(utc(2026, 1, 1)) == utc(2026, 1, 1, 8)


def test_describe():
    assert (
        CronTrigger("0 8 * * 1-5", "Europe/London").describe()
        == "cron '0 8 * * 1-5' in Europe/London"
    )
    assert (
        IntervalTrigger(
            600, utc(2026, 7, 1, 8), "Europe/London", frozenset({date(2026, 12, 25)})
        ).describe()
        == "every 10 min from 2026-07-01 09:00 BST, except 2026-12-25"
    )
    assert OneShotTrigger(utc(2026, 1, 1, 8)).describe() == "once at 2026-01-01 08:00 UTC"


def test_triggers_are_values():
    assert CronTrigger("0 8 * * *", "UTC") == CronTrigger("0 8 * * *", "UTC")
    assert IntervalTrigger(60, datetime(2026, 1, 1, 1, tzinfo=LONDON)) == IntervalTrigger(
        60, utc(2026, 1, 1, 1)
    )
    assert all(
        isinstance(t, CountingTrigger)
        for t in (CronTrigger("0 8 * * *", "UTC"), IntervalTrigger(60, utc(2026, 1, 1)))
    )
