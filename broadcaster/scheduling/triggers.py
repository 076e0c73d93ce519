"""Triggers: the instants at which a schedule fires.

Pure code: no clock reads, no I/O. Every method takes the reference instant as
an argument and returns aware UTC datetimes.

Three kinds exist:

* :class:`CronTrigger`: a 5-field cron expression evaluated in the LOCAL wall
  time of an explicit IANA zone.
* :class:`IntervalTrigger`: ``anchor + k * every_s`` in absolute time, so the
  spacing never changes across daylight-saving changes.
* :class:`OneShotTrigger`: a single instant.

All kinds skip firings whose local date (in the trigger's zone) is one of
``except_dates`` (holidays).

Daylight-saving rules for cron (wall time -> instant)
------------------------------------------------------
* A wall time that does not exist (spring forward, e.g. 02:30 in New York on
  the second Sunday of March) fires ONCE, at the first valid instant after the
  gap (03:00 local, the transition instant). If several missing wall times
  match, or a real wall time matches at the end of the gap (03:00), they all
  map to that one instant and it fires once.
* A wall time that occurs twice (fall back, e.g. 01:30 on the first Sunday of
  November in New York) fires ONCE, at its first occurrence (daylight time).
* Consequently, hourly or minutely expressions do not fire again during the
  repeated hour: wall times already fired in the first pass are not fired in
  the second, so ``*/15 * * * *`` has no firing for one hour of real time
  (01:45 EDT is followed by 02:00 EST). Nothing is fired twice and no
  matching wall time is lost.

croniter is only used on NAIVE wall times (pure calendar arithmetic). Its
native handling of aware datetimes fires a fall-back wall time twice (once per
offset), so it is not used for the conversion; :func:`local_to_utc` is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = [
    "CountingTrigger",
    "CronTrigger",
    "IntervalTrigger",
    "OneShotTrigger",
    "Trigger",
    "TriggerError",
    "load_timezone",
    "local_to_utc",
    "make_trigger",
]

_EPS = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)

_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# croniter extensions whose results are not a pure function of the expression:
# R (random) and H (hashed, needs a hash id).
_NON_DETERMINISTIC = re.compile(r"\b[RH]\b", re.IGNORECASE)


class TriggerError(ValueError):
    """A trigger definition is invalid; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Trigger(Protocol):
    def next_after(self, after: datetime) -> datetime | None:
        """The first firing strictly after ``after`` (aware, any zone), in UTC; None if none."""
        ...

    def describe(self) -> str:
        """A short human-readable description."""
        ...


@runtime_checkable
class CountingTrigger(Trigger, Protocol):
    """Optional extension the planner uses to skip long runs of firings cheaply."""

    def count_between(self, after: datetime, until: datetime) -> int:
        """Number of firings ``f`` with ``after < f <= until``."""
        ...

    def last_at_or_before(self, at: datetime) -> datetime | None:
        """The latest firing ``<= at`` in UTC, or None."""
        ...


# --------------------------------------------------------------------------- helpers


def load_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; :class:`TriggerError` (field "timezone") if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise TriggerError("timezone", "an IANA time zone name is required, e.g. Europe/London")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise TriggerError("timezone", f"unknown time zone {name!r}") from None


def local_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """Convert a NAIVE local wall time in ``tz`` to an aware UTC instant.

    A wall time inside a spring-forward gap maps to the first valid instant
    after the gap; a wall time inside a fall-back overlap maps to its first
    occurrence. The mapping is monotonic (non-decreasing) in ``wall``.
    """
    if wall.tzinfo is not None:
        raise ValueError("local_to_utc expects a naive wall time")
    wall = wall.replace(fold=0)
    first = wall.replace(tzinfo=tz).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # exists; fold=0 is the first occurrence when ambiguous
    # In a gap: the two folds bracket the transition; find it to the second.
    whole = wall.replace(microsecond=0)
    a = whole.replace(tzinfo=tz, fold=0).astimezone(UTC)
    b = whole.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(a, b), max(a, b)
    lo_offset = lo.astimezone(tz).utcoffset()
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) // 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == lo_offset:
            lo = mid
        else:
            hi = mid
    return hi


def _local_day_start(day: date, tz: ZoneInfo) -> datetime:
    """The instant (UTC) at which local date ``day`` begins in ``tz``."""
    return local_to_utc(datetime.combine(day, time()), tz)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _aware_field(value: datetime | None, field_name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TriggerError(field_name, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TriggerError(field_name, "must be timezone-aware")
    return value.astimezone(UTC)


def _date_set(values: Iterable[date | str]) -> frozenset[date]:
    if isinstance(values, str | date):
        raise TriggerError("except_dates", "give a list of dates, not a single value")
    out: set[date] = set()
    for v in values:
        if isinstance(v, datetime):
            raise TriggerError("except_dates", f"{v!r} is a datetime; give a date (YYYY-MM-DD)")
        if isinstance(v, date):
            out.add(v)
        elif isinstance(v, str):
            try:
                out.add(date.fromisoformat(v.strip()))
            except ValueError:
                raise TriggerError("except_dates", f"{v!r} is not a date (YYYY-MM-DD)") from None
        else:
            raise TriggerError("except_dates", f"{v!r} is not a date (YYYY-MM-DD)")
    return frozenset(out)


def _fmt_local(instant: datetime, tz: ZoneInfo) -> str:
    local = instant.astimezone(tz)
    text = local.strftime("%Y-%m-%d %H:%M")
    if local.second or local.microsecond:
        text = local.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} {local.tzname()}"


def _fmt_except(dates: frozenset[date]) -> str:
    if not dates:
        return ""
    ordered = sorted(dates)
    if len(ordered) <= 3:
        return ", except " + ", ".join(d.isoformat() for d in ordered)
    return f", except {len(ordered)} dates"


def _fmt_every(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


# --------------------------------------------------------------------------- cron


def _normalise_cron(expression: str) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise TriggerError("cron", "a cron expression is required, e.g. '0 8 * * 1-5'")
    text = " ".join(expression.split())
    if text.startswith("@"):
        alias = _CRON_ALIASES.get(text.lower())
        if alias is None:
            raise TriggerError("cron", f"unknown cron alias {text!r}")
        return alias
    fields = text.split(" ")
    if len(fields) != 5:
        raise TriggerError(
            "cron",
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}",
        )
    if _NON_DETERMINISTIC.search(text):
        raise TriggerError("cron", "random (R) and hashed (H) fields are not supported")
    if not croniter.is_valid(text):
        raise TriggerError("cron", f"{text!r} is not a valid cron expression")
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise TriggerError("cron", f"{text!r} never matches a real date") from None
    return text


def _count_values(values: list[object], full: int) -> int:
    if "*" in values:
        return full
    return len(set(values))


@dataclass(frozen=True)
class CronTrigger:
    """A 5-field cron expression evaluated in local wall time of ``timezone``.

    ``start`` and ``end`` bound the firings (both inclusive). See the module
    docstring for the daylight-saving rules.
    """

    expression: str
    timezone: str
    except_dates: frozenset[date] = frozenset()
    start: datetime | None = None
    end: datetime | None = None
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _expr: str = field(init=False, repr=False, compare=False)
    _per_day: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expr = _normalise_cron(self.expression)
        object.__setattr__(self, "_expr", expr)
        object.__setattr__(self, "_tz", load_timezone(self.timezone))
        object.__setattr__(self, "except_dates", _date_set(self.except_dates))
        start = _aware_field(self.start, "start")
        end = _aware_field(self.end, "end")
        if start is not None and end is not None and end < start:
            raise TriggerError("end", "end is before start")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        expanded = croniter(expr).expanded
        per_day = _count_values(expanded[0], 60) * _count_values(expanded[1], 24)
        object.__setattr__(self, "_per_day", per_day)

    # -- raw iteration (ignores bounds and except_dates) -----------------------

    def _raw_iter(self, after: datetime) -> Iterator[datetime]:
        """Firing instants strictly after ``after`` (UTC), increasing, deduplicated."""
        wall = after.astimezone(self._tz).replace(tzinfo=None, fold=0)
        # Start a minute early: croniter is strictly-after, and the filter below
        # drops anything not after ``after`` (including repeated-hour wall times).
        it = croniter(self._expr, wall - _MINUTE)
        last = after
        while True:
            try:
                candidate: datetime = it.get_next(datetime)
            except (CroniterBadDateError, OverflowError):
                return
            instant = local_to_utc(candidate, self._tz)
            if instant > last:
                last = instant
                yield instant

    def _raw_next(self, after: datetime) -> datetime | None:
        return next(self._raw_iter(after), None)

    def _raw_last(self, at: datetime) -> datetime | None:
        """The latest firing instant ``<= at`` (UTC)."""
        local = at.astimezone(self._tz)
        wall = local.replace(tzinfo=None, fold=0)
        offsets = [
            wall.replace(tzinfo=self._tz, fold=f).utcoffset() or timedelta(0) for f in (0, 1)
        ]
        # If ``at`` is in the second pass of a repeated hour, later wall times of
        # that hour fired (at their first occurrence) before ``at``: start above them.
        start = at.replace(tzinfo=None) + max(offsets) + _MINUTE
        it = croniter(self._expr, start)
        while True:
            try:
                candidate: datetime = it.get_prev(datetime)
            except (CroniterBadDateError, OverflowError, ValueError):
                return None
            instant = local_to_utc(candidate, self._tz)
            if instant <= at:
                return instant

    def _day_of(self, instant: datetime) -> date:
        return instant.astimezone(self._tz).date()

    # -- Trigger ----------------------------------------------------------------

    def next_after(self, after: datetime) -> datetime | None:
        cursor = _utc(after, "after")
        if self.start is not None and cursor < self.start:
            cursor = self.start - _EPS
        while True:
            fire = self._raw_next(cursor)
            if fire is None or (self.end is not None and fire > self.end):
                return None
            day = self._day_of(fire)
            if day not in self.except_dates:
                return fire
            cursor = _local_day_start(day + _DAY, self._tz) - _EPS

    def last_at_or_before(self, at: datetime) -> datetime | None:
        cursor = _utc(at, "at")
        if self.end is not None and cursor > self.end:
            cursor = self.end
        while True:
            fire = self._raw_last(cursor)
            if fire is None or (self.start is not None and fire < self.start):
                return None
            day = self._day_of(fire)
            if day not in self.except_dates:
                return fire
            cursor = _local_day_start(day, self._tz) - _EPS

    def count_between(self, after: datetime, until: datetime) -> int:
        """Firings in ``(after, until]``; whole ordinary days are counted, not iterated."""
        cursor = _utc(after, "after")
        hi = _utc(until, "until")
        if self.start is not None and cursor < self.start:
            cursor = self.start - _EPS
        if self.end is not None and hi > self.end:
            hi = self.end
        count = 0
        while cursor < hi:
            fire = self._raw_next(cursor)
            if fire is None or fire > hi:
                break
            day = self._day_of(fire)
            day_start = _local_day_start(day, self._tz)
            day_end = _local_day_start(day + _DAY, self._tz)
            if day in self.except_dates:
                cursor = day_end - _EPS
                continue
            if cursor < day_start and day_end - _EPS <= hi and day_end - day_start == _DAY:
                # A whole matching day without an offset change: every
                # hour x minute combination fires exactly once.
                count += self._per_day
                cursor = day_end - _EPS
                continue
            # Partial day (range edge) or a daylight-saving day: one by one.
            for f in self._raw_iter(cursor):
                if f > hi:
                    return count
                if f >= day_end:
                    cursor = day_end - _EPS
                    break
                count += 1
            else:
                break
        return count

    def describe(self) -> str:
        text = f"cron '{self._expr}' in {self.timezone}"
        if self.start is not None:
            text += f", from {_fmt_local(self.start, self._tz)}"
        if self.end is not None:
            text += f", until {_fmt_local(self.end, self._tz)}"
        return text + _fmt_except(self.except_dates)


# --------------------------------------------------------------------------- interval


@dataclass(frozen=True)
class IntervalTrigger:
    """Fires at ``anchor + k * every_s`` (k >= 0) in absolute time; ``end`` is inclusive.

    ``timezone`` only decides which local date a firing belongs to for
    ``except_dates``; the spacing is DST-independent.
    """

    every_s: int
    anchor: datetime
    timezone: str = "UTC"
    except_dates: frozenset[date] = frozenset()
    end: datetime | None = None
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.every_s, bool) or not isinstance(self.every_s, int):
            raise TriggerError("every_s", "must be a whole number of seconds")
        if self.every_s < 1:
            raise TriggerError("every_s", "must be at least 1 second")
        object.__setattr__(self, "_tz", load_timezone(self.timezone))
        object.__setattr__(self, "except_dates", _date_set(self.except_dates))
        anchor = _aware_field(self.anchor, "anchor")
        if anchor is None:
            raise TriggerError("anchor", "an anchor (the first firing) is required")
        end = _aware_field(self.end, "end")
        if end is not None and end < anchor:
            raise TriggerError("end", "end is before the first firing")
        object.__setattr__(self, "anchor", anchor)
        object.__setattr__(self, "end", end)

    @property
    def _step(self) -> timedelta:
        return timedelta(seconds=self.every_s)

    def _index_at_or_before(self, at: datetime) -> int:
        """Number of raw firings ``<= at`` (ignoring except_dates and end)."""
        if at < self.anchor:
            return 0
        return (at - self.anchor) // self._step + 1

    def _raw_next(self, after: datetime) -> datetime:
        if after < self.anchor:
            return self.anchor
        return self.anchor + self._step * ((after - self.anchor) // self._step + 1)

    def next_after(self, after: datetime) -> datetime | None:
        cursor = _utc(after, "after")
        while True:
            fire = self._raw_next(cursor)
            if self.end is not None and fire > self.end:
                return None
            day = fire.astimezone(self._tz).date()
            if day not in self.except_dates:
                return fire
            cursor = _local_day_start(day + _DAY, self._tz) - _EPS

    def last_at_or_before(self, at: datetime) -> datetime | None:
        cursor = _utc(at, "at")
        if self.end is not None and cursor > self.end:
            cursor = self.end
        while cursor >= self.anchor:
            fire = self.anchor + self._step * ((cursor - self.anchor) // self._step)
            day = fire.astimezone(self._tz).date()
            if day not in self.except_dates:
                return fire
            cursor = _local_day_start(day, self._tz) - _EPS
        return None

    def count_between(self, after: datetime, until: datetime) -> int:
        lo = _utc(after, "after")
        hi = _utc(until, "until")
        if self.end is not None and hi > self.end:
            hi = self.end
        if hi <= lo:
            return 0
        count = self._index_at_or_before(hi) - self._index_at_or_before(lo)
        for day in self.except_dates:
            day_lo = max(lo, _local_day_start(day, self._tz) - _EPS)
            day_hi = min(hi, _local_day_start(day + _DAY, self._tz) - _EPS)
            if day_hi > day_lo:
                count -= self._index_at_or_before(day_hi) - self._index_at_or_before(day_lo)
        return count

    def describe(self) -> str:
        text = f"every {_fmt_every(self.every_s)} from {_fmt_local(self.anchor, self._tz)}"
        if self.end is not None:
            text += f", until {_fmt_local(self.end, self._tz)}"
        return text + _fmt_except(self.except_dates)


# --------------------------------------------------------------------------- one-shot


@dataclass(frozen=True)
class OneShotTrigger:
    """Fires once at ``at`` (aware) unless its local date is in ``except_dates``."""

    at: datetime
    timezone: str = "UTC"
    except_dates: frozenset[date] = frozenset()
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", load_timezone(self.timezone))
        object.__setattr__(self, "except_dates", _date_set(self.except_dates))
        at = _aware_field(self.at, "at")
        if at is None:
            raise TriggerError("at", "an instant is required")
        object.__setattr__(self, "at", at)

    @property
    def _fires(self) -> bool:
        return self.at.astimezone(self._tz).date() not in self.except_dates

    def next_after(self, after: datetime) -> datetime | None:
        return self.at if self._fires and self.at > _utc(after, "after") else None

    def last_at_or_before(self, at: datetime) -> datetime | None:
        return self.at if self._fires and self.at <= _utc(at, "at") else None

    def count_between(self, after: datetime, until: datetime) -> int:
        lo, hi = _utc(after, "after"), _utc(until, "until")
        return 1 if self._fires and lo < self.at <= hi else 0

    def describe(self) -> str:
        return f"once at {_fmt_local(self.at, self._tz)}" + _fmt_except(self.except_dates)


# --------------------------------------------------------------------------- factory


def _instant(value: datetime | str | None, tz: ZoneInfo, field_name: str) -> datetime | None:
    """Parse an instant; naive values are local wall times in ``tz`` (DST rules as for cron)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TriggerError(
                field_name, f"{value!r} is not an ISO 8601 date-time (YYYY-MM-DDTHH:MM[:SS])"
            ) from None
    if not isinstance(value, datetime):
        raise TriggerError(field_name, "must be a date-time")
    if value.tzinfo is None or value.utcoffset() is None:
        return local_to_utc(value.replace(tzinfo=None), tz)
    return value.astimezone(UTC)


def make_trigger(
    *,
    cron: str | None = None,
    every_s: int | None = None,
    at: datetime | str | None = None,
    timezone: str = "UTC",
    except_dates: Iterable[date | str] = (),
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> Trigger:
    """Build a trigger from user input; exactly one of ``cron``, ``every_s``, ``at``.

    Naive ``at``/``start``/``end`` values (datetimes or ISO strings) are local
    wall times in ``timezone``. For ``every_s``, ``start`` is the anchor (the
    first firing) and is required. ``start``/``end`` are not accepted with
    ``at``. Errors raise :class:`TriggerError` whose ``field`` names the input.
    """
    given = [
        name for name, v in (("cron", cron), ("every_s", every_s), ("at", at)) if v is not None
    ]
    if not given:
        raise TriggerError("cron", "one of cron, every_s or at is required")
    if len(given) > 1:
        raise TriggerError(given[1], f"give only one of cron, every_s or at (got {given})")
    tz = load_timezone(timezone)
    dates = _date_set(except_dates)
    start_at = _instant(start, tz, "start")
    end_at = _instant(end, tz, "end")
    if start_at is not None and end_at is not None and end_at < start_at:
        raise TriggerError("end", "end is before start")

    if cron is not None:
        return CronTrigger(cron, timezone, dates, start_at, end_at)
    if every_s is not None:
        if isinstance(every_s, bool) or not isinstance(every_s, int):
            raise TriggerError("every_s", "must be a whole number of seconds")
        if every_s < 1:
            raise TriggerError("every_s", "must be at least 1 second")
        if start_at is None:
            raise TriggerError("start", "an interval needs start: its first firing (the anchor)")
        return IntervalTrigger(every_s, start_at, timezone, dates, end_at)
    if start_at is not None or end_at is not None:
        raise TriggerError("start" if start_at is not None else "end", "not used with at")
    at_instant = _instant(at, tz, "at")
    assert at_instant is not None
    return OneShotTrigger(at_instant, timezone, dates)
