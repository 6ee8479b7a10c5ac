"""A measured campaign for the stats and report tests, and an independent count of its figures.

``promo`` (holdout 30 %, conversion window 4d) greets ~200 first-time buyers
with two emails, one and three days after their first order. Real reconciler
passes at four instants fill the ledger (file outbox); orders placed after
the messages, and unsubscribes, are known to the test. ``expected_stats``
recomputes every figure of engine.tools.stats in plain Python from the raw ledger
rows and the test's own order list, following the README's definitions.
"""
from __future__ import annotations

import email
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from conftest import copy_project, database_url, load_history, write
from engine import Reconciler, load_project
from engine.state.ledger import ledger_table, unsubscribes_table

UTC = timezone.utc
T0 = datetime(2025, 3, 3, 9, 0)  # naive UTC, as stored
CUSTOMERS = range(1, 201)
WINDOW = timedelta(days=4)  # the first message (1d) and the second (4d) overlap
PASSES = [T0 + timedelta(days=d) for d in (1, 2, 4, 6)]
UNSUBSCRIBED_AT = T0 + timedelta(days=2, hours=3)

PROMO = """
name: promo
description: Thank first-time buyers, twice; 30 % hold out to measure it.
trigger:
  order_placed: {nth: 1}
audience: email IS NOT NULL
holdout: 30
conversion_window: 4d
steps:
  - id: first
    delay: 1d
    freshness: 2d
    channel: email
    template: second-order/nudge.email.j2
  - id: second
    delay: 3d
    freshness: 2d
    channel: email
    template: second-order/nudge.email.j2
"""


def has_email(i: int) -> bool:
    return i % 17 != 0


def customers() -> list[dict]:
    return [{"customer_id": i, "email": f"c{i}@example.com" if has_email(i) else None, "phone": None,
             "first_name": f"C{i}", "created_at": T0 - timedelta(days=100), "timezone": None} for i in CUSTOMERS]


def orders() -> list[dict]:
    """First orders before T0; then orders after the first message (i % 3), after the second (i % 5),
    and far too late to convert (i % 7)."""
    rows = []
    for i in CUSTOMERS:
        rows.append({"order_id": 10_000 + i, "customer_id": i, "status": "completed", "total": 20 + i % 9,
                     "created_at": T0 - timedelta(hours=i % 20, minutes=30)})
        if i % 3 == 0:
            rows.append({"order_id": 20_000 + i, "customer_id": i, "status": "completed", "total": 10 + i * 0.25,
                         "created_at": T0 + timedelta(days=1, hours=5)})
        if i % 5 == 0:
            rows.append({"order_id": 30_000 + i, "customer_id": i, "status": "completed", "total": 7.5,
                         "created_at": T0 + timedelta(days=4, hours=1)})
        if i % 7 == 0:
            rows.append({"order_id": 40_000 + i, "customer_id": i, "status": "completed", "total": 99,
                         "created_at": T0 + timedelta(days=10)})
    return rows


def unsubscribers() -> list[int]:
    return [i for i in CUSTOMERS if i % 11 == 0]


@dataclass
class History:
    root: Path
    url: str

    def reconciler(self) -> Reconciler:
        return Reconciler(load_project(self.root))

    def outbox_recipients(self) -> Counter:
        recipients: Counter = Counter()
        for path in (self.root / "var" / "outbox" / "email").glob("*.eml"):
            recipients[email.message_from_bytes(path.read_bytes())["To"]] += 1
        return recipients


def build_history(directory: Path, backend: str) -> History:
    """The project (only ``promo``), the shop, and the ledger after the four passes."""
    root = copy_project(directory / "project")
    for path in (root / "campaigns.d").glob("*.yaml"):
        path.unlink()
    write(root / "campaigns.d" / "promo.yaml", PROMO)
    url = database_url(backend, directory)
    text = (root / "engine.yaml").read_text().replace("${ENGINE_WAREHOUSE_URL:-duckdb:///var/demo-shop.duckdb}", url)
    (root / "engine.yaml").write_text(text)
    load_history(url, customers=customers(), orders=orders())
    reconciler = Reconciler(load_project(root))
    try:
        for now in PASSES:
            if now > UNSUBSCRIBED_AT and not reconciler.ledger.unsubscribed([str(unsubscribers()[0])]):
                for i in unsubscribers():
                    reconciler.ledger.unsubscribe(str(i), "all", "test", UNSUBSCRIBED_AT.replace(tzinfo=UTC))
            report = reconciler.run_once(now.replace(tzinfo=UTC))
            assert not report.errors and not report.total("failed")
    finally:
        reconciler.close()
    return History(root, url)


def ledger_rows(reconciler: Reconciler) -> list[dict]:
    with reconciler.ledger.db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(ledger_table)).mappings()]


def unsubscribe_rows(reconciler: Reconciler) -> list[dict]:
    with reconciler.ledger.db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(unsubscribes_table)).mappings()]


def _instant(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def expected_stats(rows: list[dict], unsubscribes: list[dict], order_rows: list[dict], steps: list[str]) -> dict:
    """Every figure of the campaign, by the definitions, in plain Python: {step or '*': figures}."""
    figures = {s: {"entered": 0, "statuses": Counter(), "skipped": Counter(), "sent_customers": set(),
                   "holdout_customers": set(), "unsubscribed": set(),
                   "sent": {"converted": set(), "orders": 0, "revenue": 0.0},
                   "holdout": {"converted": set(), "orders": 0, "revenue": 0.0}} for s in steps + ["*"]}
    figures["daily"] = {"sent": Counter(), "conversions": Counter()}  # by the message's / the order's day
    instances = set()
    messages: dict[str, list[tuple]] = {}
    for r in rows:
        instances.add((r["customer_id"], r["trigger_key"]))
        for key in (r["step"], "*"):
            f = figures[key]
            f["statuses"][r["status"]] += 1
            if r["status"] == "skipped":
                f["skipped"][r["reason"]] += 1
        figures[r["step"]]["entered"] += 1
        if r["status"] == "sent":
            group, at = "sent", _instant(r["updated_at"])
        elif r["status"] == "skipped" and r["reason"] == "holdout":
            group, at = "holdout", _instant(r["due_at"])
        else:
            continue
        for key in (r["step"], "*"):
            figures[key][f"{group}_customers"].add(r["customer_id"])
        if group == "sent":
            figures["daily"]["sent"][at.date().isoformat()] += 1
        messages.setdefault(r["customer_id"], []).append((at, r["step"], r["trigger_key"], group))
    figures["*"]["entered"] = len(instances)
    for order in order_rows:
        customer = str(order["customer_id"])
        candidates = [m for m in messages.get(customer, []) if m[0] < order["created_at"] <= m[0] + WINDOW]
        if not candidates:
            continue
        at, step, _, group = max(candidates)
        if group == "sent":
            figures["daily"]["conversions"][order["created_at"].date().isoformat()] += 1
        for key in (step, "*"):
            g = figures[key][group]
            g["converted"].add(customer)
            g["orders"] += 1
            g["revenue"] += order["total"]
    for u in unsubscribes:
        before = [m for m in messages.get(u["customer_id"], []) if m[3] == "sent" and m[0] < _instant(u["created_at"])]
        if before:
            step = max(before)[1]
            figures[step]["unsubscribed"].add(u["customer_id"])
            figures["*"]["unsubscribed"].add(u["customer_id"])
    return figures
