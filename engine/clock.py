"""Time: the injected clock, instants and durations.

The engine never reads the wall clock deep inside: a ``Clock`` is passed in,
and ``--as-of`` replaces it with a fixed instant. All instants are timezone
aware UTC datetimes inside the engine; warehouses store naive UTC.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Protocol

UTC = timezone.utc


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, truncated to whole seconds so SQL literals stay simple."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)


class FixedClock:
    """A clock that always answers the same instant (tests, ``--as-of``)."""

    def __init__(self, instant: datetime):
        self.instant = to_utc(instant)

    def now(self) -> datetime:
        return self.instant


def to_utc(value: datetime) -> datetime:
    """Naive datetimes are UTC by convention; aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_stored_timestamp(value: object) -> datetime:
    """A timestamp as a database returns it (a datetime, or ISO text on SQLite), as aware UTC."""
    if isinstance(value, datetime):
        return to_utc(value)
    return to_utc(datetime.fromisoformat(str(value)))


def parse_stored_date(value: object) -> date:
    """A date as a database returns it (a date, a datetime, or ISO text on SQLite)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant such as ``2025-01-10T00:00:00Z`` or ``2025-01-10``."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        return to_utc(datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(
            f"'{text}' is not an ISO 8601 instant; write e.g. 2025-01-10T00:00:00Z"
        ) from None


def format_instant(value: datetime) -> str:
    """ISO 8601 in UTC with a trailing Z, the engine's one output format."""
    return to_utc(value).isoformat().replace("+00:00", "Z")


def sql_timestamp_text(value: datetime) -> str:
    """The naive-UTC text form every supported warehouse compares correctly."""
    return to_utc(value).replace(tzinfo=None).isoformat(sep=" ")


_DURATION_PART = re.compile(r"(\d+)\s*(mo|w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_PATTERN = r"^\s*(\d+\s*(mo|[wdhms])\s*)+$"
#: A month counts as 31 days against ``MAX_DURATION`` (the longest a month can be).
_MONTH_AT_MOST = timedelta(days=31)


def add_months(instant: datetime, months: int) -> datetime:
    """``instant`` moved by whole calendar months, the time of day kept; a day the target month
    lacks becomes its last day (Aug 31 + 6 months = Feb 28, or Feb 29 in a leap year; Mar 31 - 1
    month = Feb 28/29), as PostgreSQL's interval arithmetic and dateutil's relativedelta do.
    Hand-written on ``calendar.monthrange``: one clamp does not warrant a dependency."""
    index = instant.year * 12 + instant.month - 1 + months
    year, month = divmod(index, 12)
    day = min(instant.day, calendar.monthrange(year, month + 1)[1])
    return instant.replace(year=year, month=month + 1, day=day)


@dataclass(frozen=True)
class CalendarDuration:
    """A duration with calendar months (``6mo``, ``1mo15d``): an instant plus it moves by the
    months first (``add_months``, the month-end rule) and then by the fixed ``rest``; minus it
    does the reverse. Only ``instant + d`` and ``instant - d`` are defined: months have no
    fixed length, so there is no ``total_seconds`` and no ordering with a timedelta."""

    months: int
    rest: timedelta = timedelta(0)

    def __radd__(self, instant: datetime) -> datetime:
        if not isinstance(instant, datetime):
            return NotImplemented
        return add_months(instant, self.months) + self.rest

    def __rsub__(self, instant: datetime) -> datetime:
        if not isinstance(instant, datetime):
            return NotImplemented
        return add_months(instant, -self.months) - self.rest

    def __neg__(self) -> "CalendarDuration":
        return CalendarDuration(-self.months, -self.rest)

    def __bool__(self) -> bool:
        return bool(self.months or self.rest)

    def at_most(self) -> timedelta:
        """The longest this can be (months of 31 days): for bounds that must hold for any month."""
        return self.months * _MONTH_AT_MOST + self.rest

    def at_least(self) -> timedelta:
        """The shortest this can be (months of 28 days)."""
        return self.months * timedelta(days=28) + self.rest


#: A duration as the engine holds it: fixed, or with calendar months.
Duration = timedelta | CalendarDuration


class CalendarMonthsNotAccepted(ValueError):
    """``mo`` where only fixed durations make sense (timeouts, back-off, the stale horizon)."""
#: The longest duration the engine takes (delays, windows, cool-downs, timeouts): about ten years.
#: Longer ones are mistakes, and far longer ones overflow the date arithmetic of every pass.
MAX_DURATION = timedelta(days=3660)


class DurationTooLong(ValueError):
    """A well-formed duration beyond ``MAX_DURATION``."""


def parse_duration(text: str, months: bool = False) -> Duration:
    """Parse ``90m``, ``1h``, ``7d``, ``2w`` or combinations like ``1d12h``, at most ``MAX_DURATION``;
    with ``months`` also calendar months (``6mo``, ``1mo15d``) as a ``CalendarDuration``."""
    value = str(text).strip()
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(
            f"'{_shorten(str(text))}' is not a duration; write a number and a unit "
            "(s=seconds, m=minutes, h=hours, d=days, w=weeks, mo=calendar months), e.g. 90m, 2h, 7d, 1d12h, 6mo"
        )
    parts = _DURATION_PART.findall(value)
    # a number of more than 12 digits is beyond the maximum in any unit (and int() refuses 4,300+ digits)
    numbers = [(int(n) if len(n.lstrip("0")) <= 12 else 10**18, u) for n, u in parts]
    seconds = sum(n * _UNIT_SECONDS[u] for n, u in numbers if u != "mo")
    month_count = sum(n for n, u in numbers if u == "mo")
    if month_count and not months:
        raise CalendarMonthsNotAccepted(
            f"'{_shorten(value)}': calendar months (mo) are not accepted here, only fixed durations")
    if seconds + month_count * _MONTH_AT_MOST.total_seconds() > MAX_DURATION.total_seconds():
        raise DurationTooLong(
            f"'{_shorten(value)}' is longer than the longest duration the engine takes, "
            f"{MAX_DURATION.days}d (about ten years)"
        )
    if month_count:
        return CalendarDuration(month_count, timedelta(seconds=seconds))
    return timedelta(seconds=seconds)


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_interval(text: str) -> float:
    """A loop interval in seconds: ``60s``, ``5m`` or a bare number of seconds."""
    value = str(text).strip()
    if value.isdigit():
        value += "s"
    return parse_duration(value).total_seconds()


def format_duration(value: Duration) -> str:
    """The inverse of ``parse_duration`` for display: ``1d12h``, ``90m`` -> ``1h30m``, ``-3d``, ``6mo``; zero is ``0s``."""
    if isinstance(value, CalendarDuration):
        sign, months, rest = ("-", -value.months, -value.rest) if value.months < 0 else ("", value.months, value.rest)
        return f"{sign}{months}mo" + (format_duration(rest) if rest else "")
    seconds = int(value.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + ("".join(parts) or "0s")
