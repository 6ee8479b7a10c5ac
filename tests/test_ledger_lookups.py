"""The ledger's look-ups by a batch's customers (re-entry history, recent sends, gone contacts) find exactly
the rows present on every backend; where the dialect binds a Python list as one positional parameter
(``Dialect.array_parameters`` "positional": DuckDB), each look-up of a batch is one statement whatever its size
(``Ledger._listed``), not one per 500 keys, each with its bound values to compile."""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from conftest import database_url
from engine.state.ledger import Ledger, Record
from engine.state.warehouse import Database

NOW = datetime(2025, 1, 10, 12, 0)


def _record(customer: int, trigger: str, status: str, campaign: str = "c", at: datetime = NOW) -> Record:
    return Record(message_key=f"{campaign}:s:{customer}:{trigger}", campaign=campaign, step="s",
                  customer_id=str(customer), trigger_key=trigger, channel="email", status=status, due_at=at,
                  trigger_at=at)


def test_lookups_by_customer_find_exactly_the_rows_present_in_one_statement_where_lists_bind(backend, tmp_path):
    db = Database(database_url(backend, tmp_path, "ledger"))
    ledger = Ledger(db)
    ledger.ensure_schema()
    try:
        # customers 1..1200: an entered instance (claimed, or sent a day earlier) or a skip (not entered)
        records = [_record(i, "t1", ("claimed", "sent", "skipped")[i % 3], at=NOW - timedelta(days=i % 2))
                   for i in range(1, 1201)]
        records += [_record(i, "t2", "sent", at=NOW - timedelta(days=3)) for i in range(1, 1201, 7)]  # a second one
        records += [_record(i, "t1", "sent", campaign="other") for i in range(1, 1201, 5)]  # another campaign's
        ledger.write_new(records, NOW)
        for i in range(1, 1201, 11):
            ledger.record_gone("push", str(i), [f"endpoint-{i}"], f"c:s:{i}:t1", "410", NOW)
        customers = [str(i) for i in range(1, 1301)]  # 100 with no row at all
        statements: list[str] = []
        sa.event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

        statements.clear()
        entered = ledger.sent_instances("c", customers)
        asked = len(statements)
        expected: dict[str, list] = {}
        for r in records:
            if r.campaign == "c" and r.status in ("claimed", "sent"):
                expected.setdefault(r.customer_id, []).append((r.trigger_key, r.trigger_at))
        assert {k: sorted(v) for k, v in entered.items()} == {k: sorted(v) for k, v in expected.items()}
        assert ledger.sent_instances("c", []) == {}

        statements.clear()
        since = NOW - timedelta(hours=1)
        recent = ledger.recent_sends(customers, since)
        asked_recent = len(statements)
        # a row's "sent at" is its last update: every row was written at NOW; skipped rows are not sends
        assert {k: len(v) for k, v in recent.items()} == {
            c: n for c in customers
            if (n := sum(1 for r in records if r.customer_id == c and r.status in ("claimed", "sent")))}
        assert all(channel == "email" and at >= since for sends in recent.values() for at, channel, _ in sends)
        assert ledger.recent_sends(customers, NOW + timedelta(minutes=1)) == {}

        statements.clear()
        contacts = [f"endpoint-{i}" for i in range(1, 1301)]
        gone = ledger.gone_contacts("push", contacts)
        asked_gone = len(statements)
        assert gone == {f"endpoint-{i}" for i in range(1, 1201, 11)}
        assert ledger.gone_contacts("sms", contacts) == set()

        if db.dialect.array_parameters == "positional":  # one statement per look-up, not one per 500 keys
            assert (asked, asked_recent, asked_gone) == (1, 1, 1)
        else:
            assert min(asked, asked_recent, asked_gone) >= 3
    finally:
        db.dispose()
