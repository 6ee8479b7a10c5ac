"""``plan.decide_rows`` (a batch, the common step decided inline) decides every row exactly as
``plan.decide_row`` does one at a time: same messages, same order, same fields, customer included.

On the demo shop with every shipped campaign, at instants around its anchor (plain steps, local
send times, waits, A/B splits, yearly and date triggers all have rows there).
"""
from __future__ import annotations

from datetime import date, timedelta

from conftest import REPO, copy_project, database_url
from engine import Reconciler, load_project
from engine.clock import parse_instant
from engine.run import plan
from engine.tools.demo import build_demo

ANCHOR = parse_instant("2025-01-10T00:00:00Z")


def _fields(message) -> tuple:
    return (message.as_dict(), message.candidates, message.customer, message.code, message.choice)


def test_decide_rows_decides_as_decide_row_one_by_one(tmp_path, monkeypatch):
    url = database_url("duckdb", tmp_path)
    build_demo(url, seed=7, customers=300, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(copy_project(tmp_path / "project")))
    batches: list = []
    decide = plan.decide_rows

    def watched(campaign, rows, now, config, layout):
        batches.append((campaign, list(rows), now, layout))
        return decide(campaign, rows, now, config, layout)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(plan, "decide_rows", watched)
            for hours in (0, 13, 24 * 40):
                for _ in reconciler.due(ANCHOR + timedelta(hours=hours)):
                    pass
        inline = compared = 0
        for campaign, rows, now, layout in batches:
            together = [_fields(m) for m in plan.decide_rows(campaign, rows, now, reconciler.config, layout)]
            one_by_one = [_fields(m) for m in (plan.decide_row(campaign, row, now, reconciler.config, layout)
                                               for row in rows) if m is not None]
            assert together == one_by_one, campaign.name
            inline += sum(1 for row in rows if row[layout.step] in layout.plain)
            compared += len(rows)
        # both paths ran: the test can fail
        assert inline > 100 and compared - inline > 20, (inline, compared)
    finally:
        reconciler.close()


#: a yearly trigger's days near the instants below (Feb 29 is Feb 28 in common years), and zones from UTC+14 to
#: UTC-11 with and without DST, an unknown one and none (the project's default)
YEARLY_DAYS = [date(2000, 2, 29), date(1990, 2, 28), date(1985, 3, 1), date(1970, 12, 31), date(1999, 1, 1),
               date(1980, 1, 10), date(1981, 1, 9), date(1979, 3, 30), date(1983, 3, 31)]
YEARLY_ZONES = ["Europe/Berlin", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York", "Asia/Kolkata",
                "Mars/Olympus", None]


def test_a_yearly_rows_timing_is_worked_out_once_per_day_and_zone(monkeypatch):
    """A yearly row's latest occurrence, due time and freshness depend on its day of the year, the step, the
    zone and the instant alone: ``decide_row`` works them out once per (day, zone) of a query
    (``RowLayout.yearly_timings``), not per row, and decides every row as with a layout of its own (no
    timing shared), at instants around the days' 09:00 local, midnight UTC, Feb 28/29 of a leap and a
    common year, New Year and the clocks going forward in Europe and the US."""
    from engine.run.plan import RowLayout, decide_row
    from engine.sql.compile import CUSTOMER_PREFIX, VARIANT_PREFIX, variant_columns

    project = load_project(REPO)
    campaign = project.campaign("birthday")
    step = campaign.steps[0].id
    fields = ("campaign", "step", "customer_id", "trigger_key", "trigger_at", "stopped_by", "anniversary",
              *(f"{VARIANT_PREFIX}{i}" for i in range(variant_columns(campaign))),
              *(f"{CUSTOMER_PREFIX}{name}" for name in ("customer_id", "email", "phone", "timezone")))
    rows, n = [], 0
    for day in YEARLY_DAYS:
        for zone in YEARLY_ZONES:
            for stopped in (None, "unsubscribed"):  # two customers of each day and zone
                n += 1
                rows.append(("birthday", step, n, "-", None, stopped, day, *([True] * variant_columns(campaign)),
                             n, f"c{n}@example.com", None, zone))
    calls = []
    found = plan.anniversary_instance

    def counted(*args):
        calls.append(args)
        return found(*args)

    monkeypatch.setattr(plan, "anniversary_instance", counted)
    instants = [parse_instant(text) for text in (
        "2025-01-10T00:01:00Z", "2025-01-09T23:59:00Z", "2025-01-10T08:00:00Z", "2025-01-10T09:00:00Z",
        "2024-02-28T08:00:00Z", "2024-02-29T08:00:00Z", "2024-02-29T20:00:00Z", "2025-02-28T08:00:00Z",
        "2025-02-28T19:00:00Z", "2025-03-01T09:00:00Z", "2024-12-31T20:00:00Z", "2025-01-01T08:00:00Z",
        "2025-01-01T20:00:00Z", "2025-03-30T07:00:00Z", "2025-03-30T08:00:00Z", "2025-03-09T14:00:00Z",
        "2025-03-31T07:30:00Z", "2025-12-31T19:00:00Z")]
    decided = 0
    for now in instants:
        layout = RowLayout(fields, campaign)
        calls.clear()
        shared = [decide_row(campaign, row, now, project.config, layout) for row in rows]
        assert 0 < len(calls) <= len(YEARLY_DAYS) * len(YEARLY_ZONES) < len(rows)  # once per (day, zone) at most
        alone = [decide_row(campaign, row, now, project.config, RowLayout(fields, campaign)) for row in rows]
        assert [m and _fields(m) for m in shared] == [m and _fields(m) for m in alone], now
        decided += sum(m is not None for m in shared)
    assert decided > 50  # due rows were decided, sent or skipped stale/stopped, not only rows left out


#: zones east and west of UTC, with and without DST, an unknown one, none (the default) and a value that is not text
SEND_AT_ZONES = ["Europe/Berlin", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York", "Asia/Kolkata",
                 "Australia/Lord_Howe", "Mars/Olympus", None, 7]


def test_a_local_send_times_rows_are_decided_inline_as_decide_row_decides_them():
    """A step with a local send time (order-follow-up's cross-sell and review request, 10:00 local) is decided
    inline (``RowLayout.plain``): its due time from the pairs of consecutive send times worked out once per
    step and zone of a query (``plan._send_times``: ``due.zone_due_times``, what the settled rows' zone table
    holds), a trigger outside them by ``decide.due_time``. Every row as ``decide_row`` decides it, at instants
    around 10:00 local, the clocks going forward and back in Europe and the US (the pairs around them left
    out), with triggers every 37 minutes over the steps' windows."""
    from engine.run.plan import RowLayout, decide_row, decide_rows
    from engine.sql.compile import CUSTOMER_PREFIX, VARIANT_PREFIX, variant_columns

    project = load_project(REPO)
    campaign = project.campaign("order-follow-up")
    zoned = [step.id for step in campaign.steps if step.send_at is not None]
    assert zoned  # the shipped campaign has local send times
    fields = ("campaign", "step", "customer_id", "trigger_key", "trigger_at", "stopped_by",
              *(f"{VARIANT_PREFIX}{i}" for i in range(variant_columns(campaign))),
              *(f"{CUSTOMER_PREFIX}{name}" for name in ("customer_id", "email", "phone", "timezone")))
    layout = RowLayout(fields, campaign)
    assert set(zoned) <= set(layout.plain)  # inline, not row by row
    instants = [parse_instant(text) for text in (
        "2025-01-10T00:00:00Z", "2025-01-10T09:00:00Z", "2025-01-10T09:30:00Z", "2025-03-30T08:00:00Z",
        "2025-03-31T08:00:00Z", "2025-04-02T09:00:00Z", "2025-03-10T14:00:00Z", "2025-10-27T09:00:00Z",
        "2025-11-03T15:00:00Z")]
    decided = inline = 0
    for now in instants:
        rows, n = [], 0
        for step in campaign.steps:
            for minutes in range(0, 60 * 24 * 24, 37):  # triggers over the last 24 days
                n += 1
                zone = SEND_AT_ZONES[n % len(SEND_AT_ZONES)]
                stopped = "unsubscribed" if n % 13 == 0 else None
                trigger = (now - timedelta(minutes=minutes)).replace(tzinfo=None)
                rows.append(("order-follow-up", step.id, n, str(n), trigger, stopped,
                             *([n % 3 != 0] * variant_columns(campaign)), n, f"c{n}@example.com", None, zone))
        layout = RowLayout(fields, campaign)
        together = [_fields(m) for m in decide_rows(campaign, rows, now, project.config, layout)]
        one_by_one = [_fields(m) for m in (decide_row(campaign, row, now, project.config, RowLayout(fields, campaign))
                                           for row in rows) if m is not None]
        assert together == one_by_one, now
        assert layout.send_times  # the pairs were worked out (the inline path ran)
        decided += len(together)
        inline += sum(1 for m in together if m[0]["step"] in zoned)
    assert inline > 1000 and decided > inline  # due rows of the zoned steps were decided, sent or skipped
