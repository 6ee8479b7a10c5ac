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

from engine.sql.compile import SEND_AT_SLACK
from engine.decide import at_local_time

CLOCKS = [time(0, 0), time(0, 30), time(1, 30), time(2, 30), time(3, 0), time(10, 0), time(23, 59)]


def _instants_around_changes(zone: ZoneInfo) -> list[datetime]:
    """Two ordinary instants and instants around the zone's first two offset changes (DST)."""
    instants = [datetime(2025, 3, 1, 7, 13, tzinfo=timezone.utc), datetime(2025, 7, 4, 23, 59, tzinfo=timezone.utc)]
    for change in _offset_changes(zone)[:2]:
        instants += [change + timedelta(hours=h) for h in (-26, -3, 1, 2, 3, 9, 25)]
    return instants


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


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Antarctica/Troll", "Asia/Kathmandu",
         "Pacific/Chatham", "America/St_Johns", "Pacific/Kiritimati", "Pacific/Pago_Pago"]
STEPS = [  # (delay, send_at, freshness)
    (timedelta(0), time(9, 0), timedelta(hours=12)),
    (timedelta(days=2), time(10, 0), timedelta(days=1)),
    (timedelta(days=-1), time(18, 0), timedelta(hours=3)),
    (timedelta(days=3), time(2, 30), timedelta(days=1)),   # 02:30 does not exist on spring-forward days
    (timedelta(days=5), time(0, 0), None),
]
HORIZON = timedelta(days=7)


def test_the_per_zone_window_keeps_every_row_python_would_keep_and_little_else():
    """compile.zone_window: the due query's per-zone bounds for steps with a local send time.

    For triggers every 20 minutes around each instant, Python's own rule (due by
    now, and not past due + freshness + stale horizon) is the reference: every
    trigger it keeps must be inside the zone's window, and the window may only
    reach ``ZONE_MARGIN`` (plus a DST shift) beyond the kept triggers.
    """
    from engine.sql.compile import ZONE_MARGIN, step_window, zone_window
    from engine.decide import due_time
    from engine.model import Step

    checked = 0
    for name in ZONES:
        zone = ZoneInfo(name)
        for now in _instants_around_changes(zone):
            for delay, clock, freshness in STEPS:
                step = Step("s", delay, (), freshness=freshness, send_at=clock)
                window, plain = zone_window(step, now, HORIZON, zone), step_window(step, now, HORIZON)
                kept = []
                trigger = plain.due_cutoff + timedelta(hours=1)
                lowest = (plain.earliest if plain.earliest is not None else now - delay - timedelta(days=12)) - timedelta(days=1)
                while trigger >= lowest:
                    due = due_time(trigger, step, zone)
                    if due <= now and not (freshness is not None and now > due + freshness + HORIZON):
                        kept.append(trigger)
                        assert trigger <= window.due_cutoff, f"{name} {now} {step}: due trigger {trigger} cut off"
                        assert window.earliest is None or trigger >= window.earliest, \
                            f"{name} {now} {step}: kept trigger {trigger} before {window.earliest}"
                    trigger -= timedelta(minutes=20)
                    checked += 1
                assert kept, f"{name} {now} {step}: nothing kept in the sample"
                slack = ZONE_MARGIN + timedelta(hours=2, minutes=20)
                assert window.due_cutoff - max(kept) <= slack
                if window.earliest is not None:
                    assert min(kept) - window.earliest <= slack
                    assert window.earliest >= plain.earliest and window.due_cutoff <= plain.due_cutoff + ZONE_MARGIN
    assert checked > 100_000


def test_the_per_zone_date_window_keeps_every_date_python_would_keep_and_at_most_a_day_more():
    """compile._local_day_bound: for a date trigger (order_date: the customer's local midnight of the
    date), the per-zone bounds as dates. Every date Python keeps (due by now, not past due +
    freshness + stale horizon) must pass both bounds - compared as a date column compares with a
    timestamp, at its midnight - and no date more than a day beyond the kept ones may."""
    from engine.decide import due_time, local_midnight
    from engine.model import Step
    from engine.sql.compile import _local_day_bound, zone_window

    checked = tight = 0
    for name in ZONES + ["America/Santiago", "Asia/Beirut", "America/Havana"]:  # + a clock that skips midnight
        zone = ZoneInfo(name)
        for now in _instants_around_changes(zone):
            for delay, clock, freshness in STEPS:
                step = Step("s", delay, (), freshness=freshness, send_at=clock)
                window = zone_window(step, now, HORIZON, zone)
                latest = _local_day_bound(window, zone, "due_cutoff").replace(tzinfo=None)
                earliest = None if window.earliest is None else _local_day_bound(window, zone, "earliest").replace(tzinfo=None)
                kept, passed = [], []
                day = (now - delay).date() + timedelta(days=3)
                while day >= (now - delay).date() - timedelta(days=12):
                    midnight = datetime.combine(day, time(0))  # a date compared with a timestamp
                    inside = midnight <= latest and (earliest is None or midnight >= earliest)
                    due = due_time(local_midnight(day, zone), step, zone)
                    if due <= now and not (freshness is not None and now > due + freshness + HORIZON):
                        kept.append(day)
                        assert inside, f"{name} {now} {step}: due date {day} cut off ({earliest} - {latest})"
                    elif inside:
                        passed.append(day)
                    day -= timedelta(days=1)
                    checked += 1
                assert kept or freshness is not None and freshness < timedelta(days=1), f"{name} {now} {step}"
                if kept:  # the bounds reach at most a day beyond the kept dates on each side
                    assert all(min(kept) - timedelta(days=1) <= d <= max(kept) + timedelta(days=1) for d in passed), \
                        f"{name} {now} {step}: {passed} beyond {min(kept)} - {max(kept)}"
                    tight += not passed
    assert checked > 10_000 and tight > 100
