"""Due sets of the shipped campaigns on small hand-built histories, at exact boundaries.

Each test loads its history into a real database file, once per backend
(DuckDB and SQLite), and asks the reconciler what is due at chosen instants.
The expectations are literal: who, which step, send or skip and why.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from conftest import copy_project, database_url, load_history, recorded_outcomes
from engine import Reconciler, load_project

T0 = datetime(2025, 1, 1, 12, 0, 0)
UTC_T0 = T0.replace(tzinfo=__import__("datetime").timezone.utc)


def at(**delta) -> datetime:
    """An instant relative to T0, timezone-aware (what the reconciler takes)."""
    return UTC_T0 + timedelta(**delta)


def customer(customer_id, email=True, phone=False):
    return {"customer_id": customer_id, "email": f"c{customer_id}@example.com" if email else None,
            "phone": f"+4915100000{customer_id:03d}" if phone else None, "first_name": f"C{customer_id}",
            "last_name": "Test", "created_at": T0 - timedelta(days=400), "city": "Berlin"}


def order(order_id, customer_id, when, status="completed", total=10):
    return {"order_id": order_id, "customer_id": customer_id, "created_at": when, "status": status, "total": total}


def checkout(checkout_id, customer_id, when, completed=None):
    return {"checkout_id": checkout_id, "customer_id": customer_id, "created_at": when, "completed_at": completed, "total": 20}


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    """Returns load(rows) -> Reconciler over the shipped project and a fresh shop database."""
    project_root = copy_project(tmp_path / "project")
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    opened = []

    def load(customers=(), orders=(), checkouts=(), order_items=(), checkout_items=()) -> Reconciler:
        load_history(url, customers=customers, orders=orders, checkouts=checkouts,
                     order_items=order_items, checkout_items=checkout_items)
        reconciler = Reconciler(load_project(project_root))
        opened.append(reconciler)
        return reconciler

    yield load
    for reconciler in opened:
        reconciler.close()


def due(reconciler: Reconciler, now: datetime, campaign: str) -> set[tuple]:
    """{(step, customer_id, trigger_key, action or action:reason)} due at ``now``."""
    selected = [reconciler.project.campaign(campaign)]
    return {
        (m.step, m.customer_id, m.trigger_key, m.action if m.action == "send" else f"skip:{m.reason}")
        for batch in reconciler.due(now, selected) for m in batch
    }


# --- R-C1 second order --------------------------------------------------------


def test_second_order_is_due_exactly_seven_days_after_the_first_order(shop):
    r = shop(customers=[customer(1)], orders=[order(10, 1, T0)])
    assert due(r, at(days=6, hours=23, minutes=59, seconds=59), "second-order") == set()
    assert due(r, at(days=7), "second-order") == {("nudge", "1", "10", "send")}
    # freshness 2d is the half-open window [due, due + 2d): the last second is in, due + 2d is not
    assert due(r, at(days=8, hours=23, minutes=59, seconds=59), "second-order") == {("nudge", "1", "10", "send")}
    assert due(r, at(days=9), "second-order") == {("nudge", "1", "10", "skip:stale")}


def test_second_order_is_skipped_as_stale_after_its_freshness_window(shop):
    r = shop(customers=[customer(1)], orders=[order(10, 1, T0)])
    assert due(r, at(days=9, seconds=1), "second-order") == {("nudge", "1", "10", "skip:stale")}
    # beyond the stale horizon (7d) the old trigger is not even reported
    assert due(r, at(days=16, seconds=1), "second-order") == set()


def test_second_order_stops_when_the_customer_ordered_again(shop):
    r = shop(customers=[customer(1), customer(2)],
             orders=[order(10, 1, T0), order(11, 1, T0 + timedelta(days=3)), order(20, 2, T0)])
    # the stopped series is reported (and recorded by a run) as skipped, with the reason
    assert due(r, at(days=7), "second-order") == {("nudge", "2", "20", "send"), ("nudge", "1", "10", "skip:stopped")}


def test_an_order_after_now_does_not_stop_the_series_yet(shop):
    r = shop(customers=[customer(1)], orders=[order(10, 1, T0), order(11, 1, T0 + timedelta(days=8))])
    assert due(r, at(days=7), "second-order") == {("nudge", "1", "10", "send")}
    assert due(r, at(days=8), "second-order") == {("nudge", "1", "10", "skip:stopped")}


def test_only_the_first_order_triggers_and_the_audience_filter_applies(shop):
    r = shop(customers=[customer(1), customer(2, email=False)],
             orders=[order(10, 1, T0 - timedelta(days=30)), order(11, 1, T0), order(20, 2, T0)])
    # customer 1's first order is too old; customer 2 has no email (audience: email IS NOT NULL)
    assert due(r, at(days=7), "second-order") == set()


# --- R-C2 abandoned cart ------------------------------------------------------


def test_abandoned_cart_window_is_one_to_two_hours(shop):
    r = shop(customers=[customer(1)], checkouts=[checkout(5, 1, T0)])
    assert due(r, at(minutes=59), "abandoned-cart") == set()
    assert due(r, at(hours=1), "abandoned-cart") == {("reminder", "1", "5", "send")}
    assert due(r, at(hours=1, minutes=59, seconds=59), "abandoned-cart") == {("reminder", "1", "5", "send")}
    assert due(r, at(hours=2), "abandoned-cart") == {("reminder", "1", "5", "skip:stale")}  # [due, due + 1h)


def test_completed_checkouts_and_later_orders_end_the_cart_reminder(shop):
    r = shop(
        customers=[customer(1), customer(2), customer(3), customer(4)],
        checkouts=[
            checkout(1, 1, T0, completed=T0 + timedelta(minutes=30)),  # completed before due
            checkout(2, 2, T0, completed=T0 + timedelta(hours=3)),      # completed after now
            checkout(3, 3, T0),                                          # ordered through another cart
            checkout(4, 4, T0),
        ],
        orders=[order(30, 3, T0 + timedelta(minutes=20))],
    )
    assert due(r, at(minutes=90), "abandoned-cart") == {
        ("reminder", "2", "2", "send"), ("reminder", "4", "4", "send"), ("reminder", "3", "3", "skip:stopped")}


def test_customer_without_email_is_skipped_with_a_reason(shop):
    r = shop(customers=[customer(1, email=False)], checkouts=[checkout(5, 1, T0)])
    assert due(r, at(minutes=90), "abandoned-cart") == {("reminder", "1", "5", "skip:no_contact")}


# --- R-C3 re-engage -----------------------------------------------------------


def _drifting_shop(shop):
    """Ten customers whose last orders are 10, 20, ..., 100 days before T0, plus two outsiders."""
    customers = [customer(i, phone=(i % 2 == 0)) for i in range(1, 13)]
    orders = [order(100 + i, i, T0 - timedelta(days=10 * i)) for i in range(1, 11)]
    orders.append(order(111, 11, T0 - timedelta(days=200)))  # outside the 6-month window
    # customer 12 never ordered
    return shop(customers=customers, orders=orders)


def test_at_risk_is_the_least_recent_sixty_percent_of_recent_buyers(shop):
    r = _drifting_shop(shop)
    # 10 customers ordered within 6 months; the 6 least recent are 5..10 (50..100 days ago)
    assert due(r, at(), "re-engage") == {("miss-you", str(i), str(100 + i), "send") for i in range(5, 11)}


def test_re_engage_series_follows_entry_and_stops_on_a_new_order(shop):
    r = _drifting_shop(shop)
    first = r.run_once(at(), [r.project.campaign("re-engage")])
    assert first.counts[("re-engage", "miss-you", "sent")] == 6
    assert due(r, at(), "re-engage") == set()  # nothing twice
    # customer 5 orders again three days later
    db = r.warehouse
    from engine.tools.demo import TABLES
    db.execute(TABLES["orders"].insert().values(order(500, 5, T0 + timedelta(days=3))))
    expected_second = {("new-arrivals", str(i), str(100 + i), "send") for i in range(6, 11)}
    # customer 5 is now the most recent buyer, so customer 4 drifts into the 60 %
    assert due(r, at(days=7), "re-engage") == expected_second | {
        ("miss-you", "4", "104", "send"), ("new-arrivals", "5", "105", "skip:stopped")}
    # the SMS step only goes to customers with a phone number (even ids)
    assert due(r, at(days=14), "re-engage") == (
        {("new-arrivals", str(i), str(100 + i), "skip:stale") for i in range(6, 11)}
        # plans write nothing: customer 4 enters at the first pass that runs (none yet)
        | {("miss-you", "4", "104", "send"), ("new-arrivals", "5", "105", "skip:stopped")}
        | {("last-call", str(i), str(100 + i), "send") for i in (6, 8, 10)}
    )


# --- the ledger ---------------------------------------------------------------


def test_a_second_pass_at_the_same_instant_sends_nothing(shop):
    r = shop(customers=[customer(1), customer(2, email=False)], checkouts=[checkout(5, 1, T0), checkout(6, 2, T0)])
    first = r.run_once(at(minutes=90))
    assert first.counts[("abandoned-cart", "reminder", "sent")] == 1
    assert first.counts[("abandoned-cart", "reminder", "skipped:no_contact")] == 1
    second = r.run_once(at(minutes=90))
    assert recorded_outcomes(second) == 0
    assert due(r, at(minutes=90), "abandoned-cart") == set()
