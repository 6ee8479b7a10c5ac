"""``engine customer``: attributes, latest orders with items, every ledger row, messages as sent."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from conftest import copy_project, database_url, load_history
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.tools.customer import customer_view

UTC = timezone.utc
T0 = datetime(2025, 1, 6, 12, 0)


@pytest.fixture
def shop(tmp_path, backend, monkeypatch):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        if path.stem not in ("second-order", "abandoned-cart"):
            path.unlink()
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    customers = [{"customer_id": 1, "email": "anna@example.com", "first_name": "Anna", "city": "Berlin",
                  "created_at": T0 - timedelta(days=400)},
                 {"customer_id": 2, "email": "ben@example.com", "first_name": "Ben", "created_at": T0}]
    # customer 2: twelve orders, one a day, with 1 + (n % 3) items each; customer 1 one order
    orders = [{"order_id": 200 + n, "customer_id": 2, "created_at": T0 - timedelta(days=20 - n), "status": "completed",
               "total": 10 + n} for n in range(12)]
    orders.append({"order_id": 100, "customer_id": 1, "created_at": T0, "status": "completed", "total": 24.9})
    items = [{"order_id": 200 + n, "product_id": k, "name": f"item {n}.{k}", "quantity": 1, "price": 5}
             for n in range(12) for k in range(1 + n % 3)]
    items.append({"order_id": 100, "product_id": 1, "name": "Espresso beans 1 kg", "quantity": 2, "price": 12.45})
    checkouts = [{"checkout_id": 500, "customer_id": 1, "created_at": T0 + timedelta(days=8), "total": 30}]
    load_history(url, customers=customers, orders=orders, order_items=items, checkouts=checkouts)
    reconciler = Reconciler(load_project(root))
    # sends customer 1 the second-order nudge (first order + 7d) and the abandoned-cart reminder (checkout + 1h)
    reconciler.run_once((T0 + timedelta(days=8, hours=1)).replace(tzinfo=UTC))
    reconciler.root = root
    yield reconciler
    reconciler.close()


def test_attributes_orders_items_and_ledger(shop):
    view = customer_view(shop, "1")
    assert (str(view.attributes["customer_id"]), view.attributes["email"], view.attributes["city"]) == (
        "1", "anna@example.com", "Berlin")
    assert view.order_count == 1
    [order] = view.orders
    assert str(order["order_id"]) == "100"
    assert [(i["name"], i["quantity"], i["price"]) for i in order["items"]] == [("Espresso beans 1 kg", 2, 12.45)]
    assert [(r["campaign"], r["step"], r["status"], r["reason"], r["channel"], r["trigger_key"]) for r in view.ledger] == [
        ("abandoned-cart", "reminder", "sent", None, "email", "500"),
        ("second-order", "nudge", "sent", None, "email", "100"),
    ]
    assert all("message" not in r for r in view.ledger)


def test_latest_ten_orders_by_default_all_on_request(shop):
    view = customer_view(shop, "2")
    assert view.order_count == 12
    assert [int(o["order_id"]) for o in view.orders] == [211 - n for n in range(10)]  # newest first
    assert {int(o["order_id"]): len(o["items"]) for o in view.orders} == {200 + n: 1 + n % 3 for n in range(2, 12)}
    everything = customer_view(shop, "2", all_orders=True)
    assert [int(o["order_id"]) for o in everything.orders] == [211 - n for n in range(12)]
    assert everything.ledger == []


def test_messages_as_sent(shop):
    view = customer_view(shop, "1", messages=True)
    nudge = next(r for r in view.ledger if r["campaign"] == "second-order")
    assert nudge["message"]["to"] == "anna@example.com"
    assert nudge["message"]["subject"] == "Ready for your next cup, Anna?"
    assert "Espresso beans 1 kg" in nudge["message"]["text"]


def test_cli_text_json_and_unknown_customer(shop):
    runner = CliRunner()
    base = ["--project", str(shop.root), "customer"]
    text = runner.invoke(main, base + ["2"])
    assert text.exit_code == 0, text.output
    assert "Orders: 12, latest 10 shown (--all for all)" in text.output
    assert "Campaign participation (ledger): 0 message(s)" in text.output
    data = json.loads(runner.invoke(main, base + ["1", "--messages", "--format", "json"]).output)
    assert [r["message"]["to"] for r in data["ledger"]] == ["anna@example.com", "anna@example.com"]
    unknown = runner.invoke(main, base + ["999"])
    assert unknown.exit_code == 1
    assert unknown.output.strip() == ("Error: no customer with id '999' in the warehouse (source customers, "
                                      "column customer_id); check the id")
