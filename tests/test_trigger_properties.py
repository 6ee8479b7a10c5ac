"""The trigger's own properties in filters (issue 18 point 4): ``trigger.total > 50`` and friends.

Each test writes a campaign, loads a tiny history into a real database of each backend and
asserts the literal due set at the properties' boundaries (>, >= at the exact value, NULL);
the validation tests check that a property the mapping lacks, or one the trigger does not
have, is an error naming file:line and the fix.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)
NOW = (T0 + timedelta(days=2, hours=1)).replace(tzinfo=UTC)


def customer(i):
    return {"customer_id": i, "email": f"c{i}@example.com", "phone": None, "first_name": f"C{i}",
            "created_at": T0 - timedelta(days=400), "timezone": None}


def order(i, total, **extra):
    row = {"order_id": i, "customer_id": i, "created_at": T0, "status": "completed", "total": total,
           "payment_method": "card"}
    return {**row, **extra}


def campaign(trigger: str, audience: str, step_audience: str | None = None,
             template: str = "follow-up/thanks-private.email.j2") -> str:
    step = f"\n    audience: {step_audience}" if step_audience else ""
    return f"""
name: props
trigger: {trigger}
audience: "{audience}"
steps:
  - id: thanks
    delay: 2d
    freshness: 1d{step}
    channel: email
    template: {template}
"""


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    """shop(campaign_yaml, **rows) -> the customers the campaign's step is due for at NOW."""
    root = copy_project(tmp_path / "project")
    yaml = root / "engine.yaml"
    yaml.write_text(yaml.read_text().replace("delivery_date: delivery_date}",
                                             "delivery_date: delivery_date, shipping_country: shipping_country}"))
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    opened = []

    def due(text: str, send: bool = False, **rows):
        """The customers due at NOW; with ``send``, the texts of the emails a pass at NOW sends."""
        write(root / "campaigns.d" / "props.yaml", text)
        load_history(url, **rows)
        reconciler = Reconciler(load_project(root))
        opened.append(reconciler)
        if send:
            reconciler.run_once(NOW)
            return sorted(p.read_text() for p in (root / "var" / "outbox" / "email").glob("*.eml"))
        selected = [reconciler.project.campaign("props")]
        return {m.customer_id for batch in reconciler.due(NOW, selected) for m in batch if m.outcome == "send"}

    due.root = root

    yield due
    for reconciler in opened:
        reconciler.close()


TOTALS = [order(1, 49.99), order(2, 50), order(3, 50.01), order(4, None)]


def test_order_total_above_and_at_the_boundary(shop):
    customers = [customer(i) for i in range(1, 5)]
    assert shop(campaign("{order_placed: {}}", "trigger.total > 50"), customers=customers, orders=TOTALS) == {"3"}
    assert shop(campaign("{order_placed: {}}", "trigger.total >= 50"), customers=customers, orders=TOTALS) == {"2", "3"}
    assert shop(campaign("{order_placed: {}}", "trigger.total IS NULL"), customers=customers, orders=TOTALS) == {"4"}
    # NOT of an unknown (NULL) total is unknown too: the order without a total never qualifies
    assert shop(campaign("{order_placed: {}}", "NOT trigger.total > 50"), customers=customers, orders=TOTALS) == {"1", "2"}


def test_the_triggering_order_not_the_customers_latest(shop):
    """Customer 1's first order is small, the second large: the nth: 1 series reads the first order's total."""
    rows = [order(1, 20), order(2, 80, customer_id=1, created_at=T0 + timedelta(hours=1))]
    assert shop(campaign("{order_placed: {nth: 1}}", "trigger.total > 50"), customers=[customer(1)], orders=rows) == set()
    assert shop(campaign("{order_placed: {nth: 2}}", "trigger.total > 50"), customers=[customer(1)], orders=rows) == {"1"}


def test_status_payment_method_and_shipping_country_in_campaign_and_step_audiences(shop):
    rows = [order(1, 60, shipping_country="DE"), order(2, 60, shipping_country="AT"),
            order(3, 60, shipping_country="DE", payment_method="paypal"), order(4, 60, shipping_country=None),
            order(5, 60, shipping_country="DE", status="cancelled")]
    text = campaign("{order_placed: {}}", "trigger.status = 'completed' AND trigger.shipping_country IN ('DE', 'AT')",
                    step_audience="\"trigger.payment_method = 'card'\"")
    assert shop(text, customers=[customer(i) for i in range(1, 6)], orders=rows) == {"1", "2"}


def test_item_count_and_categories_of_the_order(shop):
    items = [
        {"order_id": 1, "product_id": 1, "name": "A", "quantity": 1, "price": 5, "category": "coffee"},
        {"order_id": 2, "product_id": 1, "name": "A", "quantity": 2, "price": 5, "category": "coffee"},
        {"order_id": 3, "product_id": 2, "name": "B", "quantity": 1, "price": 5, "category": "tea"},
        {"order_id": 3, "product_id": 3, "name": "C", "quantity": 1, "price": 5, "category": "coffee"},
    ]  # order 4 has no items: item_count 0
    rows = [order(i, 10) for i in range(1, 5)]
    customers = [customer(i) for i in range(1, 5)]
    assert shop(campaign("{order_placed: {}}", "trigger.item_count >= 2"), customers=customers, orders=rows,
                order_items=items) == {"2", "3"}
    assert shop(campaign("{order_placed: {}}", "trigger.item_count = 0"), customers=customers, orders=rows,
                order_items=items) == {"4"}
    assert shop(campaign("{order_placed: {}}", "trigger_has_category('coffee') AND NOT trigger_has_category('tea')"),
                customers=customers, orders=rows, order_items=items) == {"1", "2"}


CART = "abandoned-cart/reminder.email.j2"


def test_checkout_total_and_item_count(shop):
    checkouts = [{"checkout_id": i, "customer_id": i, "created_at": T0, "completed_at": None, "total": total}
                 for i, total in ((1, 100), (2, 100.01), (3, None))]
    items = [{"checkout_id": 2, "product_id": 1, "name": "A", "quantity": 3, "price": 5}]
    text = campaign("{checkout_abandoned: {}}", "trigger.total > 100 OR trigger.item_count > 2", template=CART)
    assert shop(text, customers=[customer(i) for i in range(1, 4)], checkouts=checkouts, checkout_items=items) == {"2"}
    text = campaign("{checkout_abandoned: {}}", "trigger.total >= 100", template=CART)
    assert shop(text, customers=[customer(i) for i in range(1, 4)], checkouts=checkouts, checkout_items=items) == {"1", "2"}


BROWSE = "browse/viewed.email.j2"


def test_event_properties_per_day_read_the_days_last_event(shop):
    def view(i, cid, minutes, price, name):
        return {"event_id": i, "customer_id": cid, "type": "product_viewed", "occurred_at": T0 + timedelta(minutes=minutes),
                "product_id": i, "product_name": name, "price": price}

    events = [view(1, 1, 0, 200, "grinder"), view(2, 1, 30, 5, "filter"),   # customer 1: the last view is cheap
              view(3, 2, 0, 5, "filter"), view(4, 2, 30, 200, "grinder"),   # customer 2: the last view is dear
              view(5, 3, 0, 150, None)]
    text = campaign("{event: {type: product_viewed}}", "trigger.type = 'product_viewed' AND trigger.price >= 150",
                    template=BROWSE)
    assert shop(text, customers=[customer(i) for i in range(1, 4)], events=events) == {"2", "3"}
    text = campaign("{event: {type: product_viewed, per: event}}", "trigger.product_name = 'grinder'", template=BROWSE)
    assert shop(text, customers=[customer(i) for i in range(1, 4)], events=events) == {"1", "2"}


def test_templates_show_the_trigger_properties(shop):
    write(shop.root / "templates" / "props" / "thanks.email.j2", """
        {% extends "layouts/email.j2" %}
        {% block title %}Thanks{% endblock %}
        {% block intro %}Props: {{ trigger.item_count }} items in {{ trigger.categories|join('+') }}, total {{ '%.2f'|format(trigger.total|float) }}, to {{ trigger.shipping_country }}.{% endblock %}
        """)
    items = [{"order_id": 1, "product_id": 1, "name": "A", "quantity": 2, "price": 5, "category": "tea"},
             {"order_id": 1, "product_id": 2, "name": "B", "quantity": None, "price": 5, "category": "coffee"}]
    text = campaign("{order_placed: {}}", "trigger.total > 50", template="props/thanks.email.j2")
    sent = shop(text, send=True, customers=[customer(1), customer(2)], order_items=items,
                orders=[order(1, 60, shipping_country="DE"), order(2, 50)])
    assert len(sent) == 1
    assert "Props: 3 items in coffee+tea, total 60.00, to DE." in sent[0]


# --- validation ------------------------------------------------------------------


def _validate(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "validate", "--project", str(root)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("audience, message, fix", [
    ("trigger.shipping_country = 'DE'", "props.yaml:3:", "sources.orders.columns.shipping_country"),
    ("trigger.totl > 50", "the trigger has no property 'trigger.totl' (did you mean 'trigger.total'?)", "use one of:"),
    ("total > 50", "unknown attribute 'total' (did you mean 'trigger.total', the trigger's own property?)", "fix:"),
    ("order.total > 50", "'order.total' is a qualified column", "write trigger.total"),
    ("trigger.categories = 'coffee'", "trigger.categories is a list", "trigger_has_category('shoes')"),
])
def test_a_property_the_trigger_lacks_is_an_error_with_its_fix(tmp_path, audience, message, fix):
    root = copy_project(tmp_path / "project")
    write(root / "campaigns.d" / "props.yaml", campaign("{order_placed: {}}", audience))
    result = _validate(root)
    assert result.returncode == 1, result.stdout
    assert message in result.stdout and fix in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_trigger_properties_only_where_the_trigger_has_them(tmp_path):
    root = copy_project(tmp_path / "project")
    write(root / "campaigns.d" / "props.yaml", campaign("{registration: {}}", "trigger.total > 50"))
    write(root / "campaigns.d" / "cart.yaml", campaign("{checkout_abandoned: {}}", "trigger_has_category('coffee')", template=CART)
          .replace("name: props", "name: cart"))
    result = _validate(root)
    assert "props.yaml:3:12: error: 'trigger.total': this filter has no trigger properties" in result.stdout, result.stdout
    assert "cart.yaml:3:12: error: trigger_has_category() asks about the triggering order's items" in result.stdout


def test_a_valid_campaign_with_trigger_properties_validates(tmp_path):
    root = copy_project(tmp_path / "project")
    write(root / "campaigns.d" / "props.yaml", campaign(
        "{order_placed: {}}", "trigger.total > 50 AND trigger.item_count >= 2 AND trigger_has_category('coffee')",
        step_audience="\"trigger.status <> 'cancelled'\""))
    result = _validate(root)
    assert result.returncode == 0, result.stdout
