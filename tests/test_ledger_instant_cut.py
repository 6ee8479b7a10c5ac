"""A due query's anti-join reads only the ledger rows whose trigger instant can lie in its steps' windows
(``Dialect.ledger_instant_cut``, ``TriggerKind.instant_drift``, ``compile.ledger_since``), and that cut
changes no plan: a kind whose instant moves (a delivery date pushed back) is never cut, so its old ledger
row still blocks the instance in its new window; the kinds whose instant stays (orders, checkouts, events)
plan the same rows with and without the cut, pass after pass, a minute, a day and a month apart.

The kinds whose instant moves are cut otherwise (session 27): a delivery date's ledger rows by when they were
written - not before the earliest placement among the orders in the windows (``ledger_created_since``) - and
an at-risk entry's by its instant, the entry's own (``instant_drift`` 0; re-engage's letter step, which has no
window, keeps every row of its own); a test moves delivery dates and has at-risk customers order again between
passes, and shows a wrong bound planning a resend.

Real DuckDB and SQLite files (the demo shop); the cut is declared for the backend in each test (DuckDB
declares it as shipped). Each test also shows that it fails when the cut is wrong: applied to the
delivery date, or cutting above the window's start.
"""
from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from conftest import REPO, copy_project, database_url
from engine import Reconciler, load_project, render_sql
from engine.clock import parse_instant
from engine.dialects import DIALECTS
from engine.sql import compile as compile_, prepared
from engine.sql.compile import ledger_since, step_window
from engine.sql.due import due_query
from engine.sql.triggers import order_date
from engine.sql.triggers.registry import kind_of
from engine.state.ledger import ledger_table
from engine.tools.demo import build_demo

NOW = parse_instant("2025-01-10T00:00:00Z")


def _declare(monkeypatch, backend: str, on: bool = True) -> None:
    """``Dialect.ledger_instant_cut`` of ``backend`` on or off, and the compiled due queries forgotten."""
    monkeypatch.setitem(DIALECTS, backend, dataclasses.replace(DIALECTS[backend], ledger_instant_cut=on))
    prepared.forget()


def _plan(reconciler: Reconciler, now, campaigns=None) -> list[tuple]:
    return sorted((m.key, m.action, m.reason, m.channel, m.variant, str(m.due_at))
                  for batch in reconciler.due(now, campaigns=campaigns) for m in batch)


def _reconciler(tmp_path, monkeypatch, backend: str) -> Reconciler:
    url = database_url(backend, tmp_path)
    build_demo(url, seed=42, customers=2000, anchor="2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return Reconciler(load_project(copy_project(tmp_path / "project")))


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_moved_delivery_date_is_still_blocked_by_its_ledger_row_from_before_the_window(tmp_path, monkeypatch, backend):
    """An email sent two days after an order's planned delivery; then the delivery date moves eight weeks
    later. Eight weeks after the first pass the instance (the same order) is due again in the step's window,
    while its ledger row holds the old date, far below that window: the row must still block a resend -
    the delivery date is a moving instant, so its ledger rows are never cut by their instant."""
    _declare(monkeypatch, backend)
    reconciler = _reconciler(tmp_path, monkeypatch, backend)
    moved = timedelta(weeks=8)  # the same weekday and, before March's DST changes, the same local times
    try:
        report = reconciler.run_once(NOW)
        assert not report.failed_campaigns and not report.errors
        ledger = ledger_table.c
        with reconciler.ledger.db.engine.connect() as conn:
            key, order_id, recorded_at = conn.execute(
                sa.select(ledger.message_key, ledger.trigger_key, ledger.trigger_at)
                .where(ledger.campaign == "delivery", ledger.step == "did-it-arrive", ledger.status == "sent")
                .order_by(ledger.message_key).limit(1)).one()
        db = reconciler.warehouse
        with db.engine.begin() as conn:
            planned = conn.execute(sa.text("SELECT delivery_date FROM orders WHERE order_id = :id"),
                                   {"id": int(order_id)}).scalar_one()
            planned = date.fromisoformat(planned) if isinstance(planned, str) else planned
            conn.execute(sa.text("UPDATE orders SET delivery_date = :day WHERE order_id = :id"),
                         {"day": planned + moved, "id": int(order_id)})
        later = NOW + moved
        campaign = reconciler.project.campaign("delivery")
        window = step_window(campaign.step("did-it-arrive"), later, reconciler.config.stale_horizon)
        assert parse_instant(str(recorded_at).replace(" ", "T") + "Z") < window.earliest - timedelta(days=7)
        assert key not in {row[0] for row in _plan(reconciler, later, [campaign])}
        # the same cut applied to the delivery date (as if its instant never moved) sends the email again:
        # the assertion above can fail
        monkeypatch.setattr(order_date.KIND, "instant_drift", lambda trigger: timedelta(0))
        prepared.forget()
        assert (key, "send") in {row[:2] for row in _plan(reconciler, later, [campaign])}
    finally:
        prepared.forget()
        reconciler.close()


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_the_cut_plans_the_same_rows_pass_after_pass_a_minute_a_day_and_a_month_apart(tmp_path, monkeypatch, backend):
    """The demo shop lived from a month before its anchor: passes at that instant, a minute later, a day
    later and at the anchor (a month later), each recording what it plans. Before each pass the plan with
    the cut and without it are the same rows, though by the last pass most of the order, checkout and event
    campaigns' ledger rows lie below their cut; a cut above the window's start plans other rows."""
    reconciler = _reconciler(tmp_path, monkeypatch, backend)
    start = NOW - timedelta(days=30)
    instants = [start, start + timedelta(minutes=1), start + timedelta(days=1), NOW]
    planned = []
    try:
        for now in instants:
            _declare(monkeypatch, backend, True)
            cut = _plan(reconciler, now)
            _declare(monkeypatch, backend, False)
            assert cut == _plan(reconciler, now), now
            _declare(monkeypatch, backend, True)
            report = reconciler.run_once(now)
            assert not report.failed_campaigns and not report.errors
            planned.append(len(cut))
        # rows to compare: the first pass's history, a minute's deferrals, a day's and a month's new rows
        assert planned[0] > 500 and planned[1] > 0 and planned[2] > 50 and planned[3] > 200, planned
        # the ledger holds rows below the cut of their campaign at the last instant: the cut was exercised
        below = 0
        ledger = ledger_table.c
        with reconciler.ledger.db.engine.connect() as conn:
            for campaign in reconciler.campaigns():
                windows = [step_window(s, NOW, reconciler.config.stale_horizon) for s in campaign.steps]
                drift = kind_of(campaign.trigger).instant_drift(campaign.trigger)
                bounds = [ledger_since(w.earliest, drift) for w in windows]
                if None in bounds:
                    continue
                below += conn.execute(sa.select(sa.func.count()).select_from(ledger_table).where(
                    ledger.campaign == campaign.name, ledger.trigger_at < min(bounds).replace(tzinfo=None))).scalar_one()
        assert below > 100
        # a cut above the window's start leaves out ledger rows of instances still in it: other rows
        later = NOW + timedelta(minutes=1)
        _declare(monkeypatch, backend, True)
        right = _plan(reconciler, later)
        monkeypatch.setattr(compile_, "LEDGER_INSTANT_SLACK", -timedelta(days=3))
        _declare(monkeypatch, backend, True)
        assert _plan(reconciler, later) != right
    finally:
        prepared.forget()
        reconciler.close()


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_ledger_row_without_an_instant_is_never_cut(tmp_path, monkeypatch, backend):
    """The ledger's ``trigger_at`` allows NULL (this engine always writes it): a row without one still blocks
    its instance, though no instant of it lies in the window."""
    _declare(monkeypatch, backend)
    reconciler = _reconciler(tmp_path, monkeypatch, backend)
    try:
        report = reconciler.run_once(NOW)
        assert not report.failed_campaigns and not report.errors
        ledger = ledger_table.c
        with reconciler.ledger.db.engine.begin() as conn:
            keys = [key for key, in conn.execute(sa.select(ledger.message_key).where(
                ledger.campaign.in_(("order-follow-up", "second-order")), ledger.status == "sent"))]
            conn.execute(ledger_table.update().where(ledger.message_key.in_(keys)).values(trigger_at=None))
        assert len({key.split(":")[0] for key in keys}) == 2  # a campaign with the CTE, one reading the table
        later = NOW + timedelta(minutes=1)
        assert not set(keys) & {row[0] for row in _plan(reconciler, later)}
    finally:
        prepared.forget()
        reconciler.close()


def test_the_cut_keeps_every_due_query_compiled_once(monkeypatch):
    """The cut's bounds are instants of the pass like the windows': each shipped campaign's due query whose
    statement is compiled once without the cut is compiled once with it (a bound made but not rendered, as
    a per-step bound beside the campaign's CTE would be, makes the query built at every pass)."""
    project = load_project(REPO)

    def compiled(on: bool) -> set[tuple[str, str]]:
        _declare(monkeypatch, "duckdb", on)
        return {(campaign.name, settled) for campaign in project.campaigns for settled in ("exclude", "count", "only")
                if prepared.prepare(lambda now: due_query(campaign, project.config, now, settled=settled,
                                                          exclude_ledger=True, shared_facts=True), "duckdb")}

    try:
        without = compiled(False)
        assert len(without) > 30
        assert compiled(True) == without
    finally:
        prepared.forget()


def test_a_kind_that_declares_a_drift_keeps_the_plain_window():
    """``ledger_since`` starts from the windows' ``earliest``: a kind with its own ``window`` conditions (a date
    widened by the zones, a yearly instance) could keep instances before it, so it must declare no drift."""
    from engine.sql.triggers.base import TriggerKind
    from engine.sql.triggers.registry import KINDS

    declaring = [kind for kind in KINDS if type(kind).instant_drift is not TriggerKind.instant_drift]
    assert len(declaring) >= 5, [kind.name for kind in declaring]
    assert [kind.name for kind in declaring if type(kind).window is not TriggerKind.window] == []


def _moved_and_reordered(reconciler: Reconciler, now, round_: int) -> None:
    """What a shop does between passes: a few recent orders' delivery dates move a few days (later or earlier; a
    moved date's ledger row keeps the old date under the same key), and a few customers the at-risk segment entered
    order again (their entry's key is their last order: a new order stops it, and a later entry has
    another key). The orders are placed before ``now``; no order's placement is rewritten."""
    with reconciler.warehouse.engine.begin() as conn:
        moved = conn.execute(sa.text(
            "SELECT order_id, delivery_date FROM orders WHERE delivery_date IS NOT NULL AND created_at <= :now "
            "AND created_at >= :since ORDER BY (order_id * 7919 + :round) % 1009 LIMIT 12"),
            {"now": now.replace(tzinfo=None), "since": (now - timedelta(days=5)).replace(tzinfo=None), "round": round_}).all()
        for i, (order_id, day) in enumerate(moved):
            day = date.fromisoformat(day) if isinstance(day, str) else day
            conn.execute(sa.text("UPDATE orders SET delivery_date = :day WHERE order_id = :id"),
                         {"day": day + timedelta(days=(1, 3, 6, -1)[i % 4]), "id": order_id})
        entered = [customer for customer, in conn.execute(sa.text(
            "SELECT customer_id FROM engine_entries WHERE campaign = 're-engage' ORDER BY customer_id LIMIT 5"))]
        top = conn.execute(sa.text("SELECT max(order_id) FROM orders")).scalar_one()
        for i, customer in enumerate(entered):
            conn.execute(sa.text(
                "INSERT INTO orders (order_id, customer_id, created_at, status, total, payment_method, delivery_date) "
                "VALUES (:id, :customer, :at, 'completed', 42, 'card', :day)"),
                {"id": top + 1 + i, "customer": int(customer), "at": (now - timedelta(hours=2)).replace(tzinfo=None),
                 "day": (now + timedelta(days=2)).date()})


@pytest.mark.parametrize("campaign_name", ["delivery", "re-engage"])
def test_the_moving_kinds_cuts_plan_the_same_rows_as_dates_move_and_customers_order_again(tmp_path, monkeypatch,
                                                                                          campaign_name):
    """delivery (``order_date``: its ledger rows cut by when they were written, ``ledger_created_since``) and
    re-engage (``at_risk``: by their instant, the entry's, except the letter step's, which has no window): passes
    from a month before the anchor to a day before it, then a plan a minute after it, delivery dates moved and at-risk customers ordering
    again between them. Before each pass the campaign's plan with the cut and without it are the same rows;
    by the end the ledger holds rows the cut leaves out; a wrong cut - delivery's bound taken from the
    orders' delivery dates, at_risk declaring its instant may lie ten days later than its ledger row's -
    plans other rows (a moved delivery's email, an entry's second message, sent again)."""
    reconciler = _reconciler(tmp_path, monkeypatch, "duckdb")
    campaign = reconciler.project.campaign(campaign_name)
    start = NOW - timedelta(days=30)
    instants = [start, start + timedelta(minutes=1), start + timedelta(days=3), start + timedelta(days=10),
                start + timedelta(days=15), start + timedelta(days=20), NOW - timedelta(days=1)]
    try:
        for round_, now in enumerate(instants):
            if round_:
                _moved_and_reordered(reconciler, now, round_)
            _declare(monkeypatch, "duckdb", True)
            cut = _plan(reconciler, now, [campaign])
            _declare(monkeypatch, "duckdb", False)
            assert cut == _plan(reconciler, now, [campaign]), now
            _declare(monkeypatch, "duckdb", True)
            report = reconciler.run_once(now)
            assert not report.failed_campaigns and not report.errors
        later = NOW + timedelta(minutes=1)  # the demo's orders end at NOW: today's windows hold unmoved ones too
        _moved_and_reordered(reconciler, later, len(instants))
        _declare(monkeypatch, "duckdb", True)
        right = _plan(reconciler, later, [campaign])
        _declare(monkeypatch, "duckdb", False)
        assert right == _plan(reconciler, later, [campaign])
        # the due query cuts the campaign's ledger rows: by when they were written, by their instant
        _declare(monkeypatch, "duckdb", True)
        sql = render_sql(due_query(campaign, reconciler.config, later, exclude_ledger=True), "duckdb")
        assert ("l.created_at >= " if campaign_name == "delivery" else "l.trigger_at >= ") in sql
        # the ledger holds rows the cut leaves out
        ledger = ledger_table.c
        with reconciler.ledger.db.engine.connect() as conn:
            if campaign_name == "delivery":
                placed = conn.execute(sa.text(
                    "SELECT min(created_at) FROM orders WHERE delivery_date BETWEEN :low AND :high"),
                    {"low": (later - timedelta(days=8)).date(), "high": (later + timedelta(days=2)).date()}).scalar_one()
                below = ledger.created_at < placed
            else:
                bound = min(ledger_since(step_window(s, later, reconciler.config.stale_horizon).earliest, timedelta(0))
                            for s in campaign.steps if s.freshness is not None)
                below = sa.and_(ledger.trigger_at < bound.replace(tzinfo=None), ledger.step != "letter")
            assert conn.execute(sa.select(sa.func.count()).select_from(ledger_table).where(
                ledger.campaign == campaign_name, below)).scalar_one() > 20
        # a wrong cut plans other rows
        if campaign_name == "delivery":
            # the order of the oldest did-it-arrive row, its date moved into that step's window now: its
            # placement takes the bound below its row, which still blocks it
            with reconciler.ledger.db.engine.connect() as conn:
                key, order_id = conn.execute(sa.select(ledger.message_key, ledger.trigger_key).where(
                    ledger.campaign == "delivery", ledger.step == "did-it-arrive")
                    .order_by(ledger.created_at, ledger.message_key).limit(1)).one()
            with reconciler.warehouse.engine.begin() as conn:
                conn.execute(sa.text("UPDATE orders SET delivery_date = :day WHERE order_id = :id"),
                             {"day": (later - timedelta(days=3)).date(), "id": int(order_id)})
            _declare(monkeypatch, "duckdb", True)
            right = _plan(reconciler, later, [campaign])
            _declare(monkeypatch, "duckdb", False)
            assert right == _plan(reconciler, later, [campaign])
            assert key not in {row[0] for row in right}
            from sqlglot import exp

            placement = order_date.KIND.ledger_created_since

            def by_date(builder, campaign_):  # the earliest delivery date in the windows, not placement
                bound = placement(builder, campaign_)
                bound.find(exp.Min).set("this", exp.column(campaign_.trigger.column, "o"))
                return bound
            monkeypatch.setattr(order_date.KIND, "ledger_created_since", by_date)
            _declare(monkeypatch, "duckdb", True)
            assert key in {row[0] for row in _plan(reconciler, later, [campaign])}
        else:
            from engine.sql.triggers import at_risk
            monkeypatch.setattr(at_risk.KIND, "instant_drift", lambda trigger: -timedelta(days=10))
        _declare(monkeypatch, "duckdb", True)
        assert _plan(reconciler, later, [campaign]) != right
    finally:
        prepared.forget()
        reconciler.close()
