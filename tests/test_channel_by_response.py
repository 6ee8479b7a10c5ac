"""``channel_choice: by_response``: per customer, the kind whose messages led to orders most often (and to
unsubscribes least) goes first; no history and ties keep the campaign's order; explain says why.

Real shop databases (DuckDB, SQLite; the ledger in the warehouse's database and in a database of its own),
real ledger rows written through the ledger, orders in the shop's table: the choice is what the plan does.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.run.responses import KindResponse, rank_kinds, reason
from engine.spec.project import check_project
from engine.state.ledger import Record, message_key
from engine.tools.explain import explain, format_text

UTC = timezone.utc
T0 = datetime(2025, 3, 3, 12, 0)  # naive UTC, as stored
NOW = (T0 + timedelta(days=7, hours=1)).replace(tzinfo=UTC)

CAMPAIGN = """
name: nudge
channel_choice: by_response
trigger:
  registration: {}
steps:
  - id: hello
    delay: 7d
    freshness: 2d
    variants:
      - id: mail
        channel: email
        template: registration/first-order.email.j2
      - id: text
        channel: sms
        template: re-engage/last-call.sms.j2
"""


def customer(i, **extra):
    row = {"customer_id": i, "email": f"c{i}@example.com", "phone": f"+49151000000{i:02d}", "first_name": f"C{i}",
           "created_at": T0, "timezone": None}
    row.update(extra)
    return row


def order(i, customer_id, when, total=10):
    return {"order_id": i, "customer_id": customer_id, "created_at": when, "status": "completed", "total": total}


#: the customers' earlier messages: (customer, channel, days before T0 it was sent, days after it an order came or None)
HISTORY = [
    # 1: sms 2 of 3 led to an order, email 0 of 4 -> sms
    *[(1, "sms", d, o) for d, o in ((90, 2), (80, 1), (70, None))],
    *[(1, "email", d, None) for d in (60, 50, 40, 30)],
    # 3: email 1 of 2, sms 1 of 2: a tie -> the campaign's order (email)
    (3, "email", 90, 3), (3, "email", 80, None), (3, "sms", 70, 1), (3, "sms", 60, None),
    # 4: an order 8 days after the sms is outside the 7d window: 0 of 1 each -> email
    (4, "sms", 90, 8), (4, "email", 80, None),
    # 5: email 1 of 1 beats sms 1 of 2 (rates, not counts)
    (5, "email", 90, 1), (5, "sms", 80, 1), (5, "sms", 70, None),
    # 6: sms 1 of 1 but customer 6 has no phone: the choice prefers sms, the policies fall back to email
    (6, "sms", 90, 1),
]


def _history():
    records, orders = [], []
    for n, (cid, channel, days, ordered_after) in enumerate(HISTORY):
        sent_at = T0 - timedelta(days=days)
        key = message_key("old-campaign", "s", str(cid), f"h{n}")
        records.append((Record(key, "old-campaign", "s", str(cid), f"h{n}", channel, "sent", due_at=sent_at,
                               trigger_at=sent_at), sent_at))
        if ordered_after is not None:
            orders.append(order(1000 + n, cid, sent_at + timedelta(days=ordered_after)))
    return records, orders


@pytest.fixture(params=["duckdb", "sqlite", "sqlite+ledger"])
def shop(request, tmp_path, monkeypatch):
    backend, _, separate = request.param.partition("+")
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "nudge.yaml", CAMPAIGN)
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    if separate:
        monkeypatch.setenv("ENGINE_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    records, history_orders = _history()
    customers = [customer(i) for i in (1, 2, 3, 4, 5)] + [customer(6, phone=None)]
    load_history(url, customers=customers, orders=history_orders)
    reconciler = Reconciler(load_project(root))
    assert reconciler.ledger_shares_warehouse is not bool(separate)
    for record, at in records:
        reconciler.ledger.write_new([record], at)
    yield reconciler
    reconciler.close()


def planned(reconciler) -> dict:
    return {m.customer_id: m for batch in reconciler.due(NOW) for m in batch}


def test_each_customer_gets_the_kind_that_led_to_orders(shop):
    plan = planned(shop)
    assert {c: (m.action, m.channel, m.variant) for c, m in plan.items()} == {
        "1": ("send", "sms", "text"),    # sms 2 of 3, email 0 of 4
        "2": ("send", "email", "mail"),  # no history: the campaign's order
        "3": ("send", "email", "mail"),  # a tie
        "4": ("send", "email", "mail"),  # the sms order came after the window
        "5": ("send", "email", "mail"),  # 1 of 1 beats 1 of 2
        "6": ("send", "email", "mail"),  # prefers sms, but has no phone
    }
    assert plan["1"].choice == ("chosen by response: sms: 2 of 3 sms messages led to an order within 7d, "
                                "email 0 of 4")
    assert plan["2"].choice == "chosen by response: no messages sent to this customer before: the campaign's order (email, sms)"
    assert plan["3"].choice == ("chosen by response: email: 1 of 2 email messages led to an order within 7d, sms 1 of 2; "
                                "a tie: the campaign's order decides")
    assert plan["6"].candidates == ("text", "mail")


def test_the_campaigns_order_without_by_response(shop):
    path = shop.project.config.root / "campaigns.d" / "nudge.yaml"
    path.write_text(path.read_text().replace("channel_choice: by_response\n", ""))
    plain = load_project(shop.project.config.root)
    assert plain.campaigns[0].channel_choice == "order"
    reconciler = Reconciler(plain)
    try:
        plan = planned(reconciler)
        assert {c: m.channel for c, m in plan.items()} == {str(i): "email" for i in range(1, 7)}
        assert all(m.choice is None for m in plan.values())
    finally:
        reconciler.close()


def test_explain_says_why(shop):
    [step] = explain(shop, "nudge", "1", NOW).steps
    [instance] = step.instances
    assert (instance.verdict.status, instance.channel) == ("send", "sms")
    text = format_text(explain(shop, "nudge", "1", NOW))
    assert ("=> due: send by sms (variant text); chosen by response: sms: 2 of 3 sms messages led to an order "
            "within 7d, email 0 of 4") in text
    assert "no messages sent to this customer before" in format_text(explain(shop, "nudge", "2", NOW))


def test_unsubscribes_count_per_kind_within_the_window(shop):
    """An unsubscribe from email 2 days after an email message counts for that message only."""
    shop.ledger.unsubscribe("1", "email", "link", T0 - timedelta(days=28))  # 2 days after the email 30 days ago
    found = shop_responses(shop, ["1"])
    assert found["1"] == {"email": KindResponse(4, 0, 1), "sms": KindResponse(3, 2, 0)}


def shop_responses(reconciler, customers):
    from engine.run.responses import ResponseReader

    reader = ResponseReader(reconciler.config, reconciler.warehouse, reconciler.ledger,
                            reconciler.ledger_shares_warehouse)
    return reader.responses(customers, ["email", "sms"], timedelta(days=7))


def test_ranking_rules():
    order = ["email", "sms", "push"]
    assert rank_kinds(order, {}) == order
    assert rank_kinds(order, {"push": KindResponse(1, 1)}) == ["push", "email", "sms"]
    # same order rate: fewer unsubscribes first; a kind never sent counts as 0 of 0
    assert rank_kinds(order, {"email": KindResponse(4, 0, 1), "sms": KindResponse(2, 0, 0)}) == ["sms", "push", "email"]
    assert rank_kinds(order, {"email": KindResponse(3, 1), "sms": KindResponse(6, 2)}) == order  # 1/3 == 2/6
    assert reason(order, rank_kinds(order, {"email": KindResponse(3, 1), "sms": KindResponse(6, 2)}),
                  {"email": KindResponse(3, 1), "sms": KindResponse(6, 2)}, timedelta(days=7)) == (
        "email: 1 of 3 email messages led to an order within 7d, sms 2 of 6, push none sent; "
        "a tie: the campaign's order decides")


def test_validation(tmp_path):
    root = copy_project(tmp_path / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "nudge.yaml", CAMPAIGN)
    project, issues = check_project(root)
    assert not [i for i in issues if i.severity == "error"] and project.campaigns[0].channel_choice == "by_response"
    write(root / "campaigns.d" / "nudge.yaml", CAMPAIGN.replace("by_response", "by_mood"))
    _, issues = check_project(root)
    assert [i.path for i in issues if i.severity == "error"] == ["channel_choice"]
    # without orders mapped: named at the setting, with the fix
    write(root / "campaigns.d" / "nudge.yaml", CAMPAIGN)
    config = yaml.safe_load((root / "engine.yaml").read_text())
    del config["sources"]["orders"]
    (root / "engine.yaml").write_text(yaml.safe_dump(config))
    _, issues = check_project(root)
    [issue] = [i for i in issues if i.path == "channel_choice"]
    assert "channel_choice by_response needs the 'orders' entity" in issue.message and "sources.orders" in issue.fix
