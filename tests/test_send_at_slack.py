"""The SQL window's slack for local send times is wide enough in every time zone.

compile.step_window lets a step with ``send_at`` see triggers up to
``SEND_AT_SLACK`` older than its freshness and stale horizon allow, because
the exact due time (the next moment the customer's clock shows ``send_at``)
is only known in Python. If a due time could lie further than the slack after
trigger + delay, a stale row would silently fall out of the window (a real
bug once: one day was too little on DST fall-back days). This checks the
bound where it is tightest - around every offset change of 2025-2027 in every
zone this machine knows - and that the slack is not wastefully wide.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

from engine.compile import SEND_AT_SLACK
from engine.decide import at_local_time

CLOCKS = [time(0, 0), time(0, 30), time(1, 30), time(2, 30), time(3, 0), time(10, 0), time(23, 59)]


def _offset_changes(zone: ZoneInfo) -> list[datetime]:
    """UTC days (00:00) on which ``zone``'s UTC offset differs from the day before."""
    changes, day = [], datetime(2025, 1, 1, tzinfo=timezone.utc)
    previous = day.astimezone(zone).utcoffset()
    while day.year < 2028:
        day += timedelta(days=1)
        offset = day.astimezone(zone).utcoffset()
        if offset != previous:
            changes.append(day)
        previous = offset
    return changes


def test_no_local_send_time_is_further_than_the_slack_after_its_base():
    worst = timedelta(0)
    for name in sorted(available_timezones()):
        zone = ZoneInfo(name)
        for change in _offset_changes(zone):
            instant = change - timedelta(days=2)
            while instant < change + timedelta(days=1):
                for clock in CLOCKS:
                    wait = at_local_time(instant, clock, zone) - instant
                    assert wait <= SEND_AT_SLACK, f"{name} {instant} {clock}: {wait}"
                    worst = max(worst, wait)
                instant += timedelta(minutes=30)
    assert worst > timedelta(hours=24), "the sample should reach a fall-back day (a wait longer than a day)"
    assert SEND_AT_SLACK - worst <= timedelta(hours=2), f"the slack is much wider than needed: worst {worst}"
