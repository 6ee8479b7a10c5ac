"""PostgreSQL plans a server-side cursor for its first 10 % of rows (cursor_tuple_fraction 0.1)
unless told otherwise. The engine streams every due query through such a cursor and always
reads all rows, and the fast-start plans (nested loops) were hundreds of times slower on
a benchmark shop of 1M orders. So every warehouse connection asks for the plan for all rows,
and keeps doing so after rollbacks and on pooled connections.
"""
from __future__ import annotations

import pg
import pytest

from engine.errors import WarehouseError
from engine.state.warehouse import Database

SETTING = "SELECT current_setting('cursor_tuple_fraction')"


@pytest.fixture
def database():
    db = Database(pg.server().new_database())
    yield db
    db.dispose()


def _streamed(stream) -> list[str]:
    return [value for batch in stream for (value,) in batch]


def test_server_side_cursors_are_planned_for_all_rows(database):
    assert _streamed(database.stream(SETTING)) == ["1"]
    # the pooled connection again, after SQLAlchemy rolled back on check-in
    assert _streamed(database.stream(SETTING)) == ["1"]
    with database.session() as session:
        assert _streamed(session.stream(SETTING)) == ["1"]


def test_the_setting_survives_a_failed_statement(database):
    with database.session() as session:
        with pytest.raises(WarehouseError):
            session.execute("SELECT * FROM no_such_table")
        assert _streamed(session.stream(SETTING)) == ["1"]


def test_a_fresh_connection_without_the_engine_still_has_the_server_default(database):
    """The setting is the engine's, per connection: the server's own default is untouched."""
    import sqlalchemy as sa

    plain = sa.create_engine(database.url)
    with plain.connect() as conn:
        assert conn.execute(sa.text(SETTING)).scalar() == "0.1"
    plain.dispose()


def test_refresh_statistics_lets_the_planner_see_the_ledger_grow(database):
    """After a big first pass the ledger is analysed at once (reconcile.STATISTICS_AFTER), so the
    next pass is not planned for the empty table autovacuum last saw."""
    from datetime import datetime, timezone

    from engine.state.ledger import Ledger, Record

    ledger = Ledger(database)
    ledger.ensure_schema()
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    ledger.write_new([Record(message_key=f"c:s:{i}:{i}", campaign="c", step="s", customer_id=str(i), trigger_key=str(i),
                             channel="email", status="skipped", due_at=now, reason="stale") for i in range(300)], now)
    estimate = "SELECT reltuples::int FROM pg_class WHERE relname = 'engine_ledger'"
    assert _streamed(database.stream(estimate))[0] <= 0  # never analysed: -1 (or 0)
    ledger.refresh_statistics()
    assert _streamed(database.stream(estimate)) == [300]
