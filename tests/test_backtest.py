"""``engine backtest``: the passes a campaign would have run over history, sending nothing.

The history is small and hand-made so that every count can be computed
independently here (``reference``) and is also written out literally. It
holds the cases that matter for a replay: a send on the right day, a series
stopped by an earlier second order, a second order placed *after* the
simulated instant (must not stop it: no look-ahead), a stale message at the
first instant, triggers outside the range, and conversions exactly at and just
past the end of the conversion window. The real ledger holds a row for one of
these messages: the backtest must ignore it and leave it as it was; no table
appears in the warehouse and nothing reaches the outbox.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.tools.backtest import BacktestError, backtest, check_backtestable
from engine.cli.main import main
from engine.state.ledger import Record, ledger_table

T0 = datetime(2025, 3, 1)  # naive UTC, as stored
EVERY = timedelta(hours=2)
END = T0 + timedelta(days=14)
DAY = timedelta(days=1)
WINDOW = timedelta(days=7)  # second-order's conversion window (the default)


def customer(i, email=True):
    return {"customer_id": i, "email": f"c{i}@example.com" if email else None, "first_name": f"C{i}",
            "created_at": T0 - timedelta(days=400)}


def order(i, customer_id, when):
    return {"order_id": i, "customer_id": customer_id, "created_at": when, "status": "completed", "total": 20.0}


CUSTOMERS = [customer(i) for i in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11)] + [customer(6, email=False)]
ORDERS = [
    order(101, 1, T0 + DAY + timedelta(hours=10)), order(102, 1, T0 + 15 * DAY + timedelta(hours=10)),  # sent; converts at +7d exactly
    order(201, 2, T0 + 2 * DAY + timedelta(hours=5, minutes=30)), order(202, 2, T0 + 12 * DAY),  # due 05:30, seen at 06:00
    order(301, 3, T0 + 3 * DAY), order(302, 3, T0 + 5 * DAY),                   # ordered again before day 7: stopped
    order(401, 4, T0 + 4 * DAY), order(402, 4, T0 + 11 * DAY + timedelta(hours=1)),  # 2nd order an hour AFTER the send
    order(501, 5, T0 + 5 * DAY), order(502, 5, T0 + 19 * DAY + timedelta(seconds=1)),  # 1 s past the window
    order(601, 6, T0 + DAY),                                                     # no email: not in the audience
    order(701, 7, T0 - 10 * DAY),                                                # due before --from: stale at once
    order(801, 8, T0 - 6 * DAY + timedelta(hours=12)),                           # due on day 1 at noon
    order(901, 9, T0 + 25 * DAY),                                                # after --to
    order(1001, 10, T0 - 60 * DAY), order(1002, 10, T0 + 2 * DAY),               # first order long past the horizon
    order(1101, 11, T0 + 8 * DAY),                                               # due after --to
]

#: Written out by hand from the comments above; ``reference`` must agree.
EXPECTED = Counter({
    ("nudge", "2025-03-01", "skipped:stale"): 1,
    ("nudge", "2025-03-02", "sent"): 1,
    ("nudge", "2025-03-09", "sent"): 1,
    ("nudge", "2025-03-10", "sent"): 1,
    ("nudge", "2025-03-11", "skipped:stopped"): 1,
    ("nudge", "2025-03-12", "sent"): 1,
    ("nudge", "2025-03-13", "sent"): 1,
})
EXPECTED_CONVERTED = Counter({("nudge", "2025-03-09"): 1, ("nudge", "2025-03-10"): 1, ("nudge", "2025-03-12"): 1})


def reference(customers, orders, start, end, every, freshness=timedelta(days=2), horizon=timedelta(days=7)):
    """second-order (first order + 7d, freshness 2d, stop ordered_again) replayed by hand, instant by instant."""
    grid = [start + i * every for i in range(int((end - start) / every) + 1)]
    with_email = {c["customer_id"] for c in customers if c["email"]}
    by_customer: dict[int, list[datetime]] = {}
    for o in sorted(orders, key=lambda o: (o["created_at"], o["order_id"])):
        by_customer.setdefault(o["customer_id"], []).append(o["created_at"])
    counts, converted = Counter(), Counter()
    for customer_id, times in by_customer.items():
        first = times[0]
        if customer_id not in with_email or first > end:
            continue
        due = first + timedelta(days=7)
        seen = next((t for t in grid if t >= due and t >= first), None)
        if seen is None or seen > due + freshness + horizon:
            continue
        day = seen.date().isoformat()
        if any(t <= seen for t in times[1:]):  # only what had happened by then; a tie is a second order too
            counts[("nudge", day, "skipped:stopped")] += 1
        elif seen >= due + freshness:
            counts[("nudge", day, "skipped:stale")] += 1
        else:
            counts[("nudge", day, "sent")] += 1
            if any(seen < t <= seen + WINDOW for t in times):
                converted[("nudge", day)] += 1
    return counts, converted


def test_the_reference_agrees_with_the_hand_written_expectation():
    assert reference(CUSTOMERS, ORDERS, T0, END, EVERY) == (EXPECTED, EXPECTED_CONVERTED)


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    """The project (shipped second-order, re-engage, inactivity and birthday campaigns) on ``backend`` with the history above,
    and a real ledger holding one row: customer 1's nudge, as if it had been sent already."""
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "re-engage", "inactivity", "birthday"):
            path.unlink()
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    load_history(url, customers=CUSTOMERS, orders=ORDERS)
    real = Reconciler(load_project(root))
    real.ledger.write_new([Record(message_key="second-order:nudge:1:101", campaign="second-order", step="nudge",
                                  customer_id="1", trigger_key="101", channel="email", status="sent")],
                          datetime(2025, 3, 9, 10, tzinfo=timezone.utc))
    real.close()
    return root, url


def _warehouse_state(url: str) -> tuple[list[str], list[dict]]:
    engine = sa.create_engine(url)
    try:
        tables = sorted(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(ledger_table).order_by(ledger_table.c.message_key)).mappings()]
    finally:
        engine.dispose()
    return tables, rows


def test_backtest_counts_sends_skips_and_conversions_per_step_and_day(shop):
    root, url = shop
    before = _warehouse_state(url)
    report = backtest(load_project(root), "second-order", T0.replace(tzinfo=timezone.utc),
                      END.replace(tzinfo=timezone.utc), EVERY)
    assert report.instants == 14 * 12 + 1
    assert report.counts == EXPECTED  # customer 1 is sent although the real ledger holds its message
    assert report.converted == EXPECTED_CONVERTED
    # the real ledger is exactly as it was, no (scratch) table appeared in the warehouse, nothing was delivered
    assert _warehouse_state(url) == before
    assert len(before[1]) == 1
    assert not (root / "var" / "outbox").exists()


def test_later_orders_do_not_leak_into_an_earlier_instant(shop):
    """At each instant the backtest decides exactly as if the warehouse held only what had happened by then.

    Customer 4's second order comes an hour after the nudge is due: with look-ahead the nudge would be
    'stopped'. Each single-instant backtest over the full history must equal one over the history cut
    at that instant (decisions only: conversions look forward on purpose)."""
    root, url = shop
    project = load_project(root)
    for instant in (T0 + 11 * DAY, T0 + 10 * DAY, T0 + 12 * DAY):
        at = instant.replace(tzinfo=timezone.utc)
        load_history(url, customers=CUSTOMERS, orders=ORDERS)
        full = backtest(project, "second-order", at, at, EVERY)
        load_history(url, customers=CUSTOMERS, orders=[o for o in ORDERS if o["created_at"] <= instant])
        cut = backtest(project, "second-order", at, at, EVERY)
        assert full.counts == cut.counts, instant
        assert full.counts == reference(CUSTOMERS, ORDERS, instant, instant, EVERY)[0]
    # at T0+11d: 2 (due 05:30 two days ago, still fresh) and 4 sent, 1 stale, 3 stopped
    assert full.counts != Counter() and cut.converted == Counter()
    load_history(url, customers=CUSTOMERS, orders=ORDERS)
    at = (T0 + 11 * DAY).replace(tzinfo=timezone.utc)
    assert backtest(project, "second-order", at, at, EVERY).counts == Counter({
        ("nudge", "2025-03-12", "sent"): 2, ("nudge", "2025-03-12", "skipped:stale"): 1,
        ("nudge", "2025-03-12", "skipped:stopped"): 1})


def test_customers_who_registered_later_get_no_birthday_greeting_earlier(shop):
    """Birthdays (greeting at 09:00 Berlin = 08:00 UTC on March 5): 20 is an old customer, 22 registered
    that morning before the greeting, 23 unsubscribes after it - all greeted; 21 registers only on
    March 11 and must not be greeted on March 5 (no look-ahead into the customers table)."""
    root, url = shop
    born = {"20": (1990, None, None), "21": (1991, T0 + 10 * DAY, None), "22": (1992, T0 + 4 * DAY + timedelta(hours=7), None),
            "23": (1993, None, T0 + 4 * DAY + timedelta(hours=12))}
    birthdays = [{**customer(int(i)), "birthday": datetime(year, 3, 5).date(), "unsubscribed_at": unsubscribed,
                  **({"created_at": created} if created else {})} for i, (year, created, unsubscribed) in born.items()]
    load_history(url, customers=CUSTOMERS + birthdays, orders=ORDERS)
    report = backtest(load_project(root), "birthday", (T0 + 4 * DAY).replace(tzinfo=timezone.utc),
                      (T0 + 5 * DAY).replace(tzinfo=timezone.utc), timedelta(hours=1))
    assert report.counts == Counter({("greeting", "2025-03-05", "sent"): 3})
    assert report.converted == Counter()


def test_later_instants_see_earlier_simulated_sends_through_the_frequency_cap(shop):
    """A cap of one message per 3 days across instants: customer 30's thanks for the order of day 1 is sent,
    the one for day 2 is capped, the one for day 5 (4 days after the first send) is sent again."""
    root, url = shop
    with open(root / "engine.yaml", "a", encoding="utf-8") as config:
        config.write("\npolicies:\n  frequency_caps: [{max: 1, per: 3d}]\n")
    write(root / "campaigns.d" / "every-order.yaml", """
        name: every-order
        trigger: {order_placed: {}}
        audience: email IS NOT NULL
        steps:
          - id: thanks
            delay: 1h
            freshness: 1d
            channel: email
            template: second-order/nudge.email.j2
    """)
    orders = [order(3001, 30, T0 + DAY), order(3002, 30, T0 + 2 * DAY), order(3005, 30, T0 + 5 * DAY),
              order(3101, 31, T0 + DAY + timedelta(minutes=30))]
    load_history(url, customers=[customer(30), customer(31)], orders=orders)
    report = backtest(load_project(root), "every-order", T0.replace(tzinfo=timezone.utc),
                      (T0 + 6 * DAY).replace(tzinfo=timezone.utc), timedelta(hours=1))
    assert report.counts == Counter({("thanks", "2025-03-02", "sent"): 2, ("thanks", "2025-03-03", "skipped:frequency_cap"): 1,
                                     ("thanks", "2025-03-06", "sent"): 1})
    # 30's first thanks (day 1, 01:00) is followed by the order of day 2; 31 and the day-5 send by none
    assert report.converted == Counter({("thanks", "2025-03-02"): 1})


@pytest.mark.parametrize("backend", ["duckdb"])
def test_cli_writes_the_report_as_csv_json_and_text(shop):
    root, _ = shop
    runner = CliRunner()
    args = ["--project", str(root), "backtest", "second-order", "--from", "2025-03-01", "--to", "2025-03-15T00:00:00Z",
            "--every", "6h"]  # a coarser grid: every message still falls on the same day
    assert reference(CUSTOMERS, ORDERS, T0, END, timedelta(hours=6)) == (EXPECTED, EXPECTED_CONVERTED)
    result = runner.invoke(main, args + ["--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["day"], r["sent"], r["converted"], r["skipped_stale"], r["skipped_stopped"]) for r in rows] == [
        ("2025-03-01", "0", "0", "1", "0"), ("2025-03-02", "1", "0", "0", "0"), ("2025-03-09", "1", "1", "0", "0"),
        ("2025-03-10", "1", "1", "0", "0"), ("2025-03-11", "0", "0", "0", "1"), ("2025-03-12", "1", "1", "0", "0"),
        ("2025-03-13", "1", "0", "0", "0")]
    assert result.stderr == ""  # not a terminal: no progress display

    data = json.loads(runner.invoke(main, args + ["--format", "json"]).stdout)
    assert (data["instants"], data["every"], data["conversion_window"]) == (57, "6h", "7d")
    assert data["steps"] == [{"step": "nudge", "sent": 5, "converted": 3, "skipped": {"stale": 1, "stopped": 1}}]

    text = runner.invoke(main, args).stdout
    assert "nothing was sent" in text and "nudge: 5 sent, 3 converted (60.0%)" in text


@pytest.mark.parametrize("backend, names", [("sqlite", ["re-engage"]), ("duckdb", ["inactivity", "vip"])])
def test_segment_and_tag_campaigns_replay_the_engines_own_state(tmp_path, backend, monkeypatch, names):
    """at_risk (segment entries) and has_tag() (tags a campaign sets) are replayed, not read from today:
    the backtest of the first campaign counts exactly what real passes at the same instants, starting
    from an empty ledger, recorded for it - entries and tags included (inactivity reads the vip tag
    that vip.yaml sets, so the backtest replays vip with it)."""
    from engine.tools.demo import build_demo

    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in names:
            path.unlink()
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=600, anchor="2025-01-10T00:00:00Z")
    # a customer whose fifth order (5 Nov) makes them vip and who is silent for 60 days after it: their
    # inactivity message depends on the tag the replayed vip campaign sets
    warehouse = sa.create_engine(url)
    with warehouse.begin() as conn:
        conn.execute(sa.text("INSERT INTO customers (customer_id, email, first_name, created_at, timezone) "
                             "VALUES (9001, 'vip9001@example.com', 'Vera', :at, 'UTC')"), {"at": datetime(2024, 1, 1)})
        for n, month in enumerate((7, 8, 9, 10, 11), 1):
            conn.execute(sa.text("INSERT INTO orders (order_id, customer_id, created_at, status, total) "
                                 "VALUES (:id, 9001, :at, 'completed', 30)"),
                         {"id": 900000 + n, "at": datetime(2024, month, 5, 8)})
    warehouse.dispose()
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    start, every = datetime(2024, 11, 5, 9, tzinfo=timezone.utc), timedelta(days=1)
    end = start + 62 * every
    project = load_project(root)
    assert not [c for c in project.campaigns if check_backtestable(project, c)]  # nothing refused
    replayed = backtest(project, names[0], start, end, every)

    live = Reconciler(load_project(root))
    try:
        now = start
        while now <= end:
            live.run_once(now)
            now += every
        with live.ledger.db.engine.connect() as conn:
            rows = conn.execute(sa.select(ledger_table.c.step, ledger_table.c.created_at, ledger_table.c.status,
                                          ledger_table.c.reason).where(ledger_table.c.campaign == names[0])).all()
    finally:
        live.close()
    recorded = Counter((step, str(created)[:10], status if status != "skipped" else f"skipped:{reason}")
                       for step, created, status, reason in rows)
    assert replayed.counts == recorded
    assert replayed.total("sent") > 0  # the replay found members (re-engage: at risk; inactivity: not vip)


@pytest.mark.parametrize("backend", ["duckdb"])
@pytest.mark.parametrize("args, message", [
    (["--from", "2025-03-02", "--to", "2025-03-01"], "is before --from"),
    (["--from", "2025-03-01", "--to", "2025-03-02", "--every", "0h"], "not a positive duration"),
    (["--from", "yesterday", "--to", "2025-03-02"], "not an ISO 8601 instant"),
    (["--from", "2025-03-01", "--to", "2025-03-02", "--campaign", "x"], "No such option"),
])
def test_bad_arguments_are_one_clear_error(shop, args, message):
    root, _ = shop
    result = CliRunner().invoke(main, ["--project", str(root), "backtest", "second-order", *args])
    assert result.exit_code in (1, 2) and message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("backend", ["duckdb"])
def test_an_unknown_campaign_is_named(shop):
    root, _ = shop
    result = CliRunner().invoke(main, ["--project", str(root), "backtest", "nope", "--from", "2025-03-01", "--to", "2025-03-02"])
    assert result.exit_code == 1 and "no campaign named 'nope'" in result.stderr
