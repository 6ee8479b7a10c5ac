"""Time: the injected clock, instants and durations.

The engine never reads the wall clock deep inside: a ``Clock`` is passed in,
and ``--as-of`` replaces it with a fixed instant. All instants are timezone
aware UTC datetimes inside the engine; warehouses store naive UTC.
"""
from __future__ import annotations

import re
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


_DURATION_PART = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_PATTERN = r"^\s*(\d+\s*[wdhms]\s*)+$"
#: The longest duration the engine takes (delays, windows, cool-downs, timeouts): about ten years.
#: Longer ones are mistakes, and far longer ones overflow the date arithmetic of every pass.
MAX_DURATION = timedelta(days=3660)


class DurationTooLong(ValueError):
    """A well-formed duration beyond ``MAX_DURATION``."""


def parse_duration(text: str) -> timedelta:
    """Parse ``90m``, ``1h``, ``7d``, ``2w`` or combinations like ``1d12h``, at most ``MAX_DURATION``."""
    value = str(text).strip()
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(
            f"'{_shorten(str(text))}' is not a duration; write a number and a unit "
            "(m=minutes, h=hours, d=days, w=weeks), e.g. 90m, 2h, 7d, 1d12h"
        )
    parts = _DURATION_PART.findall(value)
    # a number of more than 12 digits is beyond the maximum in any unit (and int() refuses 4,300+ digits)
    seconds = sum(int(n) * _UNIT_SECONDS[u] if len(n.lstrip("0")) <= 12 else 10**18 for n, u in parts)
    if seconds > MAX_DURATION.total_seconds():
        raise DurationTooLong(
            f"'{_shorten(value)}' is longer than the longest duration the engine takes, "
            f"{MAX_DURATION.days}d (about ten years)"
        )
    return timedelta(seconds=seconds)


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_interval(text: str) -> float:
    """A loop interval in seconds: ``60s``, ``5m`` or a bare number of seconds."""
    value = str(text).strip()
    if value.isdigit():
        value += "s"
    return parse_duration(value).total_seconds()


def format_duration(value: timedelta) -> str:
    """The inverse of ``parse_duration`` for display: ``1d12h``, ``90m`` -> ``1h30m``, ``-3d``; zero is ``0s``."""
    seconds = int(value.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + ("".join(parts) or "0s")
