"""The campaign language, trigger by trigger and feature by feature, at exact instants.

Every test writes the campaign it needs (or uses a shipped one), loads a tiny
history into a real database of each backend, and asserts the literal due set.
The project's default time zone is Europe/Berlin (UTC+1 in winter, +2 in summer).
"""
from __future__ import annotations

import json
import subprocess
from datetime import date, datetime, timedelta, timezone

import pytest

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, check_project, load_project

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)  # a Monday, noon UTC (13:00 in Berlin)


def at(**delta) -> datetime:
    return (T0 + timedelta(**delta)).replace(tzinfo=UTC)


def customer(i, **extra):
    row = {"customer_id": i, "email": f"c{i}@example.com", "phone": None, "first_name": f"C{i}",
           "created_at": T0 - timedelta(days=400), "timezone": None}
    row.update(extra)
    return row


def order(i, customer_id, when, status="completed", **extra):
    return {"order_id": i, "customer_id": customer_id, "created_at": when, "status": status, "total": 10, **extra}


def event(i, customer_id, kind, when, **extra):
    return {"event_id": i, "customer_id": customer_id, "type": kind, "occurred_at": when, **extra}


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    """shop(campaigns={name: yaml} or None for the shipped ones, **rows) -> Reconciler."""
    root = copy_project(tmp_path / "project")
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    opened = []

    def load(campaigns: dict[str, str] | None = None, keep: tuple[str, ...] = (), **rows) -> Reconciler:
        if campaigns is not None:
            for path in (root / "campaigns.d").glob("*.yaml"):
                if path.stem not in keep:
                    path.unlink()
            for name, text in campaigns.items():
                write(root / "campaigns.d" / f"{name}.yaml", text)
        load_history(url, **rows)
        reconciler = Reconciler(load_project(root))
        opened.append(reconciler)
        return reconciler

    load.root = root
    yield load
    for reconciler in opened:
        reconciler.close()


def due(reconciler: Reconciler, now: datetime, campaign: str, detail: bool = False) -> set[tuple]:
    selected = [reconciler.project.campaign(campaign)]
    return {
        (m.step, m.customer_id, m.trigger_key, m.outcome) + ((m.variant, m.due_at) if detail else ())
        for batch in reconciler.due(now, selected) for m in batch
    }


# --- triggers --------------------------------------------------------------------


def test_registration_step_waits_for_the_local_send_time(shop):
    # after-registration: 3 days after registering, at 11:00 local (Berlin = UTC+1 in January)
    r = shop(keep=("after-registration",), campaigns={}, customers=[customer(1, created_at=T0)])
    assert due(r, at(days=3), "after-registration") == set()  # 13:00 Berlin on day 3: next 11:00 is day 4
    assert due(r, at(days=3, hours=22), "after-registration") == {("first-order", "1", "1", "send")}  # day 4 10:00 UTC = 11:00 Berlin
    assert due(r, at(days=3, hours=21, minutes=59), "after-registration") == set()


def test_registration_audience_uses_order_count_at_now(shop):
    r = shop(keep=("after-registration",), campaigns={},
             customers=[customer(1, created_at=T0), customer(2, created_at=T0)],
             orders=[order(10, 2, T0 + timedelta(days=1))])
    # customer 2 ordered: excluded by the audience (order_count = 0) - and stopped anyway
    assert due(r, at(days=4), "after-registration") == {("first-order", "1", "1", "send")}


def test_browse_abandonment_is_one_series_per_day_and_stops_when_they_come_back(shop):
    views = [event(1, 1, "product_viewed", T0, product_name="Kettle", url="u1", image_url="i1"),
             event(2, 1, "product_viewed", T0 + timedelta(minutes=30), product_name="Mug", url="u2", image_url="i2"),
             event(3, 2, "product_viewed", T0, product_name="Mug", url="u2", image_url="i2"),
             event(4, 2, "login", T0 + timedelta(days=2))]  # customer 2 comes back on day 2
    r = shop(keep=("browse-abandonment",), campaigns={}, customers=[customer(1), customer(2)], events=views)
    day = T0.date().isoformat()
    # due 1 day after the day's LAST view (12:30 for customer 1, 12:00 for customer 2)
    assert due(r, at(days=1, minutes=29), "browse-abandonment") == {("day-1", "2", day, "send")}
    assert due(r, at(days=1, minutes=30), "browse-abandonment") == {("day-1", "1", day, "send"), ("day-1", "2", day, "send")}
    # nothing was run, so day-1 is still reported: too late for customer 1, stopped for customer 2
    assert due(r, at(days=3, minutes=30), "browse-abandonment") == {
        ("day-3", "1", day, "send"), ("day-3", "2", day, "skip:stopped"),
        ("day-1", "1", day, "skip:stale"), ("day-1", "2", day, "skip:stopped")}


def test_the_viewed_products_reach_the_email(shop):
    views = [event(1, 1, "product_viewed", T0, product_id=1, product_name="Kettle"),
             event(2, 1, "product_viewed", T0 + timedelta(minutes=5), product_id=2, product_name="Mug")]
    products = [{"product_id": 1, "name": "Kettle", "url": "https://x/k", "image": "https://x/k.jpg", "price": 49,
                 "category": "equipment", "in_stock": True},
                {"product_id": 2, "name": "Mug", "url": "https://x/m", "image": "https://x/m.jpg", "price": 22,
                 "category": "accessories", "in_stock": True}]
    r = shop(keep=("browse-abandonment",), campaigns={}, customers=[customer(1)], events=views, products=products)
    r.run_once(at(days=1, minutes=10))
    sent = sorted((r.project.config.root / "var" / "outbox" / "email").glob("*.eml"))
    assert len(sent) == 1
    text = sent[0].read_text()
    # the catalogue's products, each once, the most recently viewed first
    assert "- Mug (22.00 EUR): https://x/m\n  - Kettle (49.00 EUR): https://x/k" in text.replace("\r\n", "\n")


def test_search_abandonment_goes_out_at_nine_the_next_morning(shop):
    searches = [event(1, 1, "search", T0 + timedelta(hours=6), search_query="decaf")]  # 19:00 Berlin
    r = shop(keep=("search-abandonment",), campaigns={}, customers=[customer(1)], events=searches)
    assert due(r, at(hours=19, minutes=59), "search-abandonment") == set()  # 08:59 Berlin next day
    assert due(r, at(hours=20), "search-abandonment", detail=True) == {
        ("results", "1", T0.date().isoformat(), "send", "default", at(hours=20))}
    assert due(r, at(days=1, hours=8, seconds=1), "search-abandonment") == {
        ("results", "1", T0.date().isoformat(), "skip:stale")}  # freshness 12h


@pytest.mark.parametrize("birthday, now, key", [
    (date(1990, 1, 10), datetime(2025, 1, 10, 8, 0), "2025"),        # 09:00 Berlin
    (date(1992, 2, 29), datetime(2025, 2, 28, 8, 0), "2025"),        # leap-day birthday in a common year
    (date(1992, 2, 29), datetime(2028, 2, 29, 8, 0), "2028"),        # ... and in a leap year, on the day
])
def test_birthdays_come_round_every_year_including_leap_days(shop, birthday, now, key):
    r = shop(keep=("birthday",), campaigns={}, customers=[customer(1, birthday=birthday)])
    now = now.replace(tzinfo=UTC)
    assert due(r, now - timedelta(seconds=1), "birthday") == set()
    assert due(r, now, "birthday") == {("greeting", "1", key, "send")}


def test_birthday_greeting_falls_back_to_sms_and_carries_a_code(shop):
    r = shop(keep=("birthday",), campaigns={},
             customers=[customer(1, birthday=date(1990, 1, 10), email=None, phone="+491700000001"),
                        customer(2, birthday=date(1990, 1, 10), email=None, phone=None)])
    now = datetime(2025, 1, 10, 8, 0, tzinfo=UTC)
    assert due(r, now, "birthday", detail=True) == {
        ("greeting", "1", "2025", "send", "sms", now), ("greeting", "2", "2025", "skip:no_variant", None, now)}
    r.run_once(now)
    sms = (r.project.config.root / "var" / "outbox" / "sms" / "messages.jsonl").read_text().splitlines()
    assert len(sms) == 1 and "code BDAY-" in json.loads(sms[0])["text"]
    assert due(r, now + timedelta(hours=1), "birthday") == set()  # once a year


def test_delivery_steps_before_and_after_the_planned_date(shop):
    r = shop(keep=("delivery",), campaigns={},
             customers=[customer(1, phone="+491700000001")],
             orders=[order(10, 1, T0, delivery_date=date(2025, 1, 9))])
    # the evening before: 18:00 Berlin on Jan 8 = 17:00 UTC
    assert due(r, datetime(2025, 1, 8, 16, 59, tzinfo=UTC), "delivery") == set()
    assert due(r, datetime(2025, 1, 8, 17, 0, tzinfo=UTC), "delivery") == {("arriving-tomorrow", "1", "10", "send")}
    # two days after, at 10:00 Berlin
    assert due(r, datetime(2025, 1, 11, 9, 0, tzinfo=UTC), "delivery") == {
        ("arriving-tomorrow", "1", "10", "skip:stale"), ("did-it-arrive", "1", "10", "send")}


def test_inactivity_counts_logins_and_orders_and_restarts_with_each(shop):
    r = shop(keep=("inactivity",), campaigns={},
             customers=[customer(1), customer(2)],
             orders=[order(10, 1, T0), order(20, 2, T0)],
             events=[event(1, 2, "login", T0 + timedelta(days=30))])
    assert due(r, at(days=60), "inactivity") == {("day-60", "1", "order:10", "send")}
    assert due(r, at(days=90), "inactivity") == {("day-60", "2", "login:1", "send"), ("day-90", "1", "order:10", "send")}


def test_kth_order_counts_only_the_listed_statuses(shop):
    r = shop(keep=("second-completed-order",), campaigns={},
             customers=[customer(1)],
             orders=[order(10, 1, T0), order(11, 1, T0 + timedelta(days=1), status="cancelled"),
                     order(12, 1, T0 + timedelta(days=2))])
    # order 11 was cancelled, so order 12 is the 2nd completed one
    assert due(r, at(days=5), "second-completed-order") == {("loyalty", "1", "12", "send")}


# --- variants, A/B, actions, re-entry, codes, quiet hours ---------------------------------


def test_variants_first_match_wins_and_tags_set_by_one_campaign_steer_another(shop):
    orders = [order(i, 1, T0 - timedelta(days=10 - i)) for i in range(1, 6)] + [order(20, 2, T0), order(30, 3, T0)]
    r = shop(keep=("vip", "order-follow-up"), campaigns={},
             customers=[customer(1), customer(2, customer_type="company"), customer(3, customer_type="female")],
             orders=orders)
    follow_up = {("thank-you", "2", "20", "send", "company"), ("thank-you", "3", "30", "send", "private")}
    assert {d[:5] for d in due(r, at(hours=1), "order-follow-up", detail=True) if d[1] != "1"} == follow_up
    # the fifth order made customer 1 a VIP: the vip campaign tags them when its message is sent
    r.run_once(at(days=-5, minutes=10), [r.project.campaign("vip")])  # 10 minutes after the fifth order
    assert r.ledger.tags("1") == ["vip"]
    db = r.warehouse
    from engine.tools.demo import TABLES
    db.execute(TABLES["orders"].insert().values(order(6, 1, T0)))
    assert ("thank-you", "1", "6", "send", "vip") in {d[:5] for d in due(r, at(hours=1), "order-follow-up", detail=True)}


def test_ab_split_is_stable_per_customer_and_roughly_even(shop):
    signups = [event(i, i, "newsletter_signup", T0) for i in range(1, 201)]
    r = shop(keep=("welcome-series",), campaigns={}, customers=[customer(i) for i in range(1, 201)], events=signups)
    now = datetime(2025, 1, 12, 9, 0, tzinfo=UTC)  # 5 days after 13:00 Berlin, then the next 10:00 Berlin
    first = {d[1]: d[4] for d in due(r, now, "welcome-series", detail=True) if d[0] == "discount"}
    second = {d[1]: d[4] for d in due(r, now + timedelta(hours=2), "welcome-series", detail=True) if d[0] == "discount"}
    assert len(first) == 200 and first == second
    share = sum(v == "ten-percent" for v in first.values())
    assert 70 <= share <= 130


def test_reentry_once_lets_a_customer_into_the_welcome_series_only_once(shop):
    r = shop(keep=("welcome-series",), campaigns={}, customers=[customer(1)],
             events=[event(1, 1, "newsletter_signup", T0)])
    r.run_once(at(minutes=5), [r.project.campaign("welcome-series")])
    db = r.warehouse
    from engine.tools.demo import TABLES
    db.execute(TABLES["events"].insert().values(event(2, 1, "newsletter_signup", T0 + timedelta(days=1))))
    day2 = (T0 + timedelta(days=1)).date().isoformat()
    assert ("thanks", "1", day2, "skip:reentry") in due(r, at(days=1, minutes=5), "welcome-series")


def test_reentry_cooldown(shop):
    campaign = """
        name: cooldown
        trigger: {order_placed: {}}
        reentry: {cooldown: 30d}
        stop: [unsubscribed]
        steps:
          - {id: thanks, delay: 0m, freshness: 1d, channel: email, template: second-order/nudge.email.j2}
    """
    r = shop(campaigns={"cooldown": campaign}, customers=[customer(1)],
             orders=[order(1, 1, T0), order(2, 1, T0 + timedelta(days=10)), order(3, 1, T0 + timedelta(days=40))])
    assert due(r, at(minutes=1), "cooldown") == {("thanks", "1", "1", "send")}
    r.run_once(at(minutes=1))
    assert due(r, at(days=10, minutes=1), "cooldown") == {("thanks", "1", "2", "skip:reentry")}
    r.run_once(at(days=10, minutes=1))
    assert due(r, at(days=40, minutes=1), "cooldown") == {("thanks", "1", "3", "send")}


def test_discount_codes_are_unique_per_recipient_and_kept_with_the_message(shop):
    r = shop(keep=("birthday",), campaigns={},
             customers=[customer(1, birthday=date(1990, 1, 10)), customer(2, birthday=date(1991, 1, 10))])
    now = datetime(2025, 1, 10, 8, 0, tzinfo=UTC)
    r.run_once(now)
    codes = {}
    for customer_id in ("1", "2"):
        row = r.ledger.get(f"birthday:greeting:{customer_id}:2025")
        content = json.loads(row["content"])
        codes[customer_id] = content["discount_code"]
        assert content["discount_code"] in content["text"]
    assert codes["1"] != codes["2"] and all(c.startswith("BDAY-") and len(c) == 13 for c in codes.values())


def test_quiet_hours_defer_without_recording_until_freshness_runs_out(shop):
    # order-follow-up thank-you: 1h after the order, quiet 22:00-07:00 Berlin, freshness 1d
    r = shop(keep=("order-follow-up",), campaigns={}, customers=[customer(1)],
             orders=[order(10, 1, datetime(2025, 1, 6, 21, 30))])  # due 22:30 UTC = 23:30 Berlin
    late = datetime(2025, 1, 6, 22, 30, tzinfo=UTC)
    assert due(r, late, "order-follow-up") == {("thank-you", "1", "10", "defer:quiet_hours")}
    report = r.run_once(late)
    assert report.total("sent") == 0 and r.ledger.get("order-follow-up:thank-you:1:10") is None
    morning = datetime(2025, 1, 7, 6, 0, tzinfo=UTC)  # 07:00 Berlin
    assert due(r, morning, "order-follow-up") == {("thank-you", "1", "10", "send")}


def test_send_times_follow_daylight_saving_time(shop):
    # 09:00 Berlin is 08:00 UTC in winter and 07:00 UTC after the switch on 2025-03-30
    r = shop(keep=("search-abandonment",), campaigns={}, customers=[customer(1), customer(2, timezone="America/New_York")],
             events=[event(1, 1, "search", datetime(2025, 3, 29, 18, 0)), event(2, 2, "search", datetime(2025, 3, 29, 18, 0))])
    plan = due(r, datetime(2025, 3, 30, 14, 0, tzinfo=UTC), "search-abandonment", detail=True)
    assert {(d[1], d[5]) for d in plan} == {("1", datetime(2025, 3, 30, 7, 0, tzinfo=UTC)),
                                              ("2", datetime(2025, 3, 30, 13, 0, tzinfo=UTC))}  # New York: EDT since Mar 9


# --- filters over facts and functions -------------------------------------------------------


def test_filters_on_categories_payment_and_relative_dates(shop):
    campaign = """
        name: coffee-lovers
        trigger: {registration: {}}
        audience: bought_category('coffee') AND last_payment_method = 'paypal' AND last_order_at >= days_ago(30)
        stop: [unsubscribed]
        steps:
          - {id: hello, delay: 0m, channel: email, template: second-order/nudge.email.j2}
    """
    items = [{"order_id": 10, "name": "Beans", "quantity": 1, "price": 5, "category": "coffee"},
             {"order_id": 20, "name": "Mug", "quantity": 1, "price": 5, "category": "accessories"},
             {"order_id": 30, "name": "Beans", "quantity": 1, "price": 5, "category": "coffee"}]
    r = shop(campaigns={"coffee-lovers": campaign},
             customers=[customer(1, created_at=T0), customer(2, created_at=T0), customer(3, created_at=T0)],
             orders=[order(10, 1, T0 - timedelta(days=5), payment_method="paypal"),
                     order(20, 2, T0 - timedelta(days=5), payment_method="paypal"),
                     order(30, 3, T0 - timedelta(days=50), payment_method="paypal")],
             order_items=items)
    assert due(r, at(minutes=1), "coffee-lovers") == {("hello", "1", "1", "send")}


# --- editing live campaigns ----------------------------------------------------------------


SERIES = """
    name: series
    trigger: {order_placed: {}}
    stop: [unsubscribed]
    steps:
      - {id: first, delay: 1d, freshness: 10d, channel: email, template: second-order/nudge.email.j2}
      - {id: second, delay: 5d, freshness: 10d, channel: email, template: second-order/nudge.email.j2}
"""


def _edit(shop_fixture, text):
    write(shop_fixture.root / "campaigns.d" / "series.yaml", text)
    return load_project(shop_fixture.root)


def test_changing_a_delay_applies_to_everyone_still_waiting(shop):
    r = shop(campaigns={"series": SERIES}, customers=[customer(1)], orders=[order(1, 1, T0)])
    r.run_once(at(days=1))
    assert due(r, at(days=3), "series") == set()
    r.project = _edit(shop, SERIES.replace("delay: 5d", "delay: 2d"))
    assert due(r, at(days=3), "series") == {("second", "1", "1", "send")}  # first is not sent again


def test_removing_a_step_stops_it(shop):
    r = shop(campaigns={"series": SERIES}, customers=[customer(1)], orders=[order(1, 1, T0)])
    r.project = _edit(shop, SERIES.replace(
        "      - {id: second, delay: 5d, freshness: 10d, channel: email, template: second-order/nudge.email.j2}\n", ""))
    assert due(r, at(days=6), "series") == {("first", "1", "1", "send")}


def test_renaming_a_step_is_a_new_step_and_validation_warns(shop):
    r = shop(campaigns={"series": SERIES}, customers=[customer(1)], orders=[order(1, 1, T0)])
    root = shop.root
    r.run_once(at(days=1))
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(root), *command], check=True, capture_output=True)
    renamed = SERIES.replace("id: first", "id: welcome")
    r.project = _edit(shop, renamed)
    assert ("welcome", "1", "1", "send") in due(r, at(days=2), "series")  # a new identity: sent again
    _, issues = check_project(root)
    [warning] = [i for i in issues if i.severity == "warning"]
    assert "step 'welcome' is new and 'first' is gone" in warning.message and warning.line == 5


def test_changing_a_filter_applies_at_the_next_pass(shop):
    r = shop(campaigns={"series": SERIES}, customers=[customer(1), customer(2, customer_type="company")],
             orders=[order(1, 1, T0), order(2, 2, T0)])
    assert {d[1] for d in due(r, at(days=1), "series")} == {"1", "2"}
    r.project = _edit(shop, SERIES.replace("stop: [unsubscribed]", "stop: [unsubscribed]\n    audience: customer_type = 'company'"))
    assert {d[1] for d in due(r, at(days=1), "series")} == {"2"}
