"""The ledger's reads by customer without a per-customer index (migration 0010, ``Dialect.ledger_customer_index``).

On SQLite the ledger has no index led by ``customer_id`` (a claim's entry on a random leaf of one was all of its
extra write cost at 10M rows): the frequency caps find the steps that sent within their window through
``engine_ledger_sends`` (campaign, step, updated_at) and seek the identity index at those steps for each
customer; re-entry history and one customer's messages seek the identity index per (campaign, step) the ledger
holds. Checked here on real databases: every reader gives the rows a plain filter of every ledger row gives (a
retry delivered later than its claim included), the same on a ledger upgraded from 0009 with its rows as on a
fresh one, and no reader's statement scans the ledger.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from conftest import database_url
from engine.dialects import dialect_of_backend
from engine.state import ledger as ledger_module
from engine.state import migrations
from engine.state.ledger import Ledger, ledger_table
from engine.state.warehouse import Database
from test_ledger_migrations import upgrade_to

NOW = datetime(2025, 1, 10, 9, 30)
SINCE = NOW - timedelta(days=7)
CUSTOMERS = [str(i) for i in range(1, 13)]
FIELDS = ("message_key", "campaign", "step", "status", "trigger_key", "created_at", "updated_at")


def _row(campaign: str, step: str, customer: str, trigger: str, status: str, created: datetime,
         updated: datetime | None = None, channel: str = "email") -> dict:
    return {"message_key": f"{campaign}:{step}:{customer}:{trigger}", "campaign": campaign, "step": step,
            "customer_id": customer, "trigger_key": trigger, "variant": None, "channel": channel, "status": status,
            "reason": None, "detail": None, "trigger_at": created - timedelta(days=1), "due_at": created,
            "created_at": created, "updated_at": updated or created, "content": None, "attempts": 1,
            "next_attempt_at": None}


def rows() -> list[dict]:
    """Three campaigns (one retired, long ago), several steps, every status, inside and outside the window;
    customer 3's retry was claimed 20 days ago and delivered 2 days ago; customer 12 has no row at all."""
    found = []
    statuses = ("sent", "claimed", "failed", "skipped", "unknown")
    for i, customer in enumerate(CUSTOMERS[:-1]):
        for j, (campaign, step) in enumerate((("cart", "first"), ("cart", "second"), ("winback", "nudge"))):
            for k, age in enumerate((1, 5, 9, 40)):
                status = statuses[(i + j + k) % len(statuses)]
                found.append(_row(campaign, step, customer, f"t{k}", status, NOW - timedelta(days=age),
                                  channel="sms" if (i + k) % 3 == 0 else "email"))
        found.append(_row("retired", "mail", customer, "old", "sent", NOW - timedelta(days=300)))
    found.append(_row("cart", "first", "3", "retry", "sent", NOW - timedelta(days=20), NOW - timedelta(days=2)))
    return found


def expected_recent(everything: list[dict], customers: list[str]) -> dict:
    found: dict[str, list] = {}
    for r in everything:
        if r["customer_id"] in customers and r["status"] in ("sent", "claimed", "unknown") and r["updated_at"] >= SINCE:
            found.setdefault(r["customer_id"], []).append((r["updated_at"], r["channel"], r["campaign"]))
    return {customer: sorted(sends) for customer, sends in found.items()}


def expected_instances(everything: list[dict], campaign: str, customers: list[str]) -> dict:
    first: dict[tuple[str, str], datetime] = {}
    for r in everything:
        if r["campaign"] == campaign and r["customer_id"] in customers and r["status"] in ("claimed", "sent"):
            key = (r["customer_id"], r["trigger_key"])
            first[key] = min(first.get(key, r["trigger_at"]), r["trigger_at"])
    found: dict[str, list] = {}
    for (customer, trigger), at in first.items():
        found.setdefault(customer, []).append((trigger, at))
    return {customer: sorted(instances) for customer, instances in found.items()}


def expected_messages(everything: list[dict], customer: str, campaign: str | None = None) -> list[dict]:
    chosen = [r for r in everything if r["customer_id"] == customer and campaign in (None, r["campaign"])]
    return [{name: r[name] for name in FIELDS} for r in sorted(chosen, key=lambda r: (r["created_at"], r["message_key"]))]


def naive(value):
    return value.replace(tzinfo=None) if isinstance(value, datetime) else value


def answers(ledger: Ledger) -> dict:
    """Every reader by customer, in a comparable form."""
    recent = ledger.recent_sends(CUSTOMERS, SINCE)
    return {
        "recent": {c: sorted((naive(at), ch, camp) for at, ch, camp in sends) for c, sends in recent.items()},
        "instances": {campaign: {c: sorted((k, naive(at)) for k, at in found)
                                 for c, found in ledger.sent_instances(campaign, CUSTOMERS).items()}
                      for campaign in ("cart", "winback", "retired", "never")},
        "messages": {(c, campaign): [{k: naive(v) for k, v in m.items()} for m in ledger.customer_messages(c, FIELDS, campaign)]
                     for c in ("3", "7", "12") for campaign in (None, "cart", "never")},
    }


def expected(everything: list[dict]) -> dict:
    return {
        "recent": expected_recent(everything, CUSTOMERS),
        "instances": {campaign: expected_instances(everything, campaign, CUSTOMERS)
                      for campaign in ("cart", "winback", "retired", "never")},
        "messages": {(c, campaign): expected_messages(everything, c, campaign)
                     for c in ("3", "7", "12") for campaign in (None, "cart", "never")},
    }


def insert(db: Database, everything: list[dict]) -> None:
    with db.engine.begin() as conn:
        conn.execute(ledger_table.insert(), everything)


@pytest.fixture
def upgraded_and_fresh(backend, tmp_path):
    """A ledger at 0009 with the rows, upgraded by this engine, and a fresh ledger at head with the same rows."""
    old = Database(database_url(backend, tmp_path, "upgraded"))
    upgrade_to(old, "0009")
    insert(old, rows())
    assert migrations.ensure(old)[-1] == migrations.HEAD
    fresh = Database(database_url(backend, tmp_path, "fresh"))
    Ledger(fresh).ensure_schema()
    insert(fresh, rows())
    yield Ledger(old), Ledger(fresh)
    old.dispose()
    fresh.dispose()


def test_every_reader_by_customer_answers_as_a_filter_of_every_row(upgraded_and_fresh):
    """Upgraded from 0009 and fresh alike."""
    want = expected(rows())
    assert (NOW - timedelta(days=2), "email", "cart") in want["recent"]["3"]  # the retry is in the window
    assert "12" not in want["recent"] and want["messages"][("12", None)] == []
    for ledger in upgraded_and_fresh:
        assert answers(ledger) == want


def test_a_retry_delivered_after_its_claim_counts_against_a_cap_from_its_delivery(backend, tmp_path):
    """A message claimed 20 days ago, failed, reclaimed and delivered now counts in a 7-day window - by its
    delivery, not its claim -, though its step sent nothing else within it; failed, not yet retried, it does not."""
    db = Database(database_url(backend, tmp_path, "ledger"))
    ledger = Ledger(db)
    ledger.ensure_schema()
    insert(db, [_row("cart", "first", "5", "r", "failed", NOW - timedelta(days=20)),
                _row("cart", "first", "6", "old", "sent", NOW - timedelta(days=20))])
    assert ledger.recent_sends(["5", "6"], SINCE) == {}
    [failed] = ledger.rows_where(ledger_table.c.message_key == "cart:first:5:r")
    assert ledger.reclaim(failed, NOW - timedelta(hours=1))
    ledger.record_outcomes([ledger_module.Record(
        message_key="cart:first:5:r", campaign="cart", step="first", customer_id="5", trigger_key="r",
        channel="email", status="sent")], NOW)
    assert {c: [(naive(at), ch, camp) for at, ch, camp in s] for c, s in ledger.recent_sends(["5", "6"], SINCE).items()} \
        == {"5": [(NOW, "email", "cart")]}
    db.dispose()


def test_no_index_led_by_the_customer_where_the_dialect_says_so_and_no_reader_scans_the_ledger(tmp_path):
    """SQLite (``ledger_customer_index`` False): no index of engine_ledger starts with customer_id, and
    engine_ledger_sends holds the sends' (campaign, step, updated_at); every statement the readers by customer
    run reads engine_ledger through an index, never the status index (EXPLAIN QUERY PLAN: SEARCH, never SCAN)."""
    assert not dialect_of_backend("sqlite").ledger_customer_index
    db = Database(database_url("sqlite", tmp_path, "ledger"))
    ledger = Ledger(db)
    ledger.ensure_schema()
    insert(db, rows())
    with db.engine.connect() as conn:
        indexes = {name: [row[2] for row in conn.exec_driver_sql(f"PRAGMA index_info('{name}')")]
                   for (name,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                        "AND tbl_name = 'engine_ledger'")}
        sends = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'engine_ledger_sends'").scalar()
    assert indexes["engine_ledger_sends"] == ["campaign", "step", "updated_at"]
    assert "status NOT IN ('failed', 'skipped')" in sends
    assert not [name for name, columns in indexes.items() if columns[0] == "customer_id"], indexes

    statements: list[tuple[str, tuple]] = []

    def seen(conn, cursor, sql, parameters, context, many):
        statements.append((sql, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", seen)
    answers(ledger)
    sa.event.remove(db.engine, "before_cursor_execute", seen)
    plans = []
    with db.engine.connect() as conn:
        for sql, parameters in statements:
            if "engine_ledger" in sql and not sql.lstrip().upper().startswith("PRAGMA"):
                plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)]
                plans.append((sql, plan))
    assert len(plans) >= 8
    scans = [(sql, plan) for sql, plan in plans if any(step.startswith("SCAN engine_ledger") or
                                                       step.startswith("SCAN l") for step in plan)]
    assert not scans, scans
    # nor through the status index (every claimed or sent row of the ledger)
    assert not [sql for sql, plan in plans if any("engine_ledger_status" in step for step in plan)]
    # the caps find the steps that sent through engine_ledger_sends (the status index would read every sent row)
    assert any("engine_ledger_sends" in step for _, plan in plans for step in plan)
    db.dispose()
