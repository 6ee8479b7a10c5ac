"""A ledger in another database is diffed in batches, never loaded whole.

The warehouse is the demo shop (DuckDB); the ledger is a SQLite file holding
100,000 unrelated rows plus a few of the due messages. Every row the ledger
database hands back is counted at the driver (a ``row_factory`` installed on
each new SQLite connection) and every statement by a SQLAlchemy event on the
ledger engine. A pass must read exactly as much from the ledger with the
100,000 rows as with none: what it reads depends on the due set, not on the
ledger's size.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from conftest import copy_project
from engine import Reconciler, check_project, load_project
from engine.clock import parse_instant
from engine.tools.demo import build_demo
from engine.state.ledger import Record, ledger_table

NOW = parse_instant("2025-01-10T00:00:00Z")
UNRELATED = 100_000
LOOKUP_CHUNK = 500  # Ledger.existing_keys asks for at most this many keys per statement


class LedgerReads:
    """Rows fetched from, and statements run on, one SQLite ledger engine."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.rows = 0
        self.statements: list[tuple[str, int]] = []  # (first words, number of bound parameters)

    def __enter__(self) -> "LedgerReads":
        sa.event.listen(self.engine, "connect", self._on_connect)
        sa.event.listen(self.engine, "before_cursor_execute", self._on_execute)
        self.engine.dispose()  # every connection from now on is a counted one
        return self

    def __exit__(self, *_exc) -> None:
        sa.event.remove(self.engine, "connect", self._on_connect)
        sa.event.remove(self.engine, "before_cursor_execute", self._on_execute)
        self.engine.dispose()

    def _on_connect(self, dbapi_connection, _record) -> None:
        def count(_cursor, row):
            self.rows += 1
            return row
        dbapi_connection.row_factory = count

    def _on_execute(self, _conn, _cursor, statement, parameters, _context, _many) -> None:
        self.statements.append((" ".join(statement.split()[:2]), len(parameters or ())))


def _project(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "project")
    text = (root / "engine.yaml").read_text().replace("demo:", f"ledger:\n  url: sqlite:///{tmp_path / 'ledger.db'}\n\ndemo:", 1)
    (root / "engine.yaml").write_text(text)
    # campaigns that need the ledger next to the warehouse (segments, tags) are refused: leave them out
    _, issues = check_project(root)
    for issue in issues:
        if issue.severity == "error" and "campaigns.d" in issue.file:
            (root / "campaigns.d" / issue.file.rsplit("/", 1)[-1]).unlink(missing_ok=True)
    build_demo(tmp_path / "shop.duckdb", 42, 1000, "2025-01-10T00:00:00Z")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'shop.duckdb'}")
    return root


def _unrelated_rows(engine: sa.Engine) -> None:
    at = datetime(2024, 1, 1)
    rows = [{"message_key": f"old-campaign:step:x{i}:{i}", "campaign": "old-campaign", "step": "step",
             "customer_id": f"x{i}", "trigger_key": str(i), "channel": "email", "status": "sent",
             "created_at": at, "updated_at": at} for i in range(UNRELATED)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(ledger_table.insert(), rows[start:start + 10_000])


def _pass(reconciler: Reconciler) -> tuple[int, LedgerReads]:
    with LedgerReads(reconciler.ledger.db.engine) as reads:
        due = sum(len(batch) for batch in reconciler.due(NOW))
    return due, reads


def test_the_diff_against_a_separate_ledger_reads_what_is_due_not_the_ledger(tmp_path, monkeypatch):
    root = _project(tmp_path, monkeypatch)
    reconciler = Reconciler(load_project(root), batch_size=200)
    try:
        assert not reconciler.config.ledger_shares_warehouse
        messages = [m for batch in reconciler.due(NOW) for m in batch]
        assert len(messages) > 50, "the demo shop should have work at its anchor"
        # a few due messages are already in the ledger: the diff must find exactly those
        held = sorted(messages, key=lambda m: m.key)[::10]
        reconciler.ledger.write_new([Record(message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
                                            trigger_key=m.trigger_key, channel=m.channel, status="sent", due_at=m.due_at)
                                     for m in held], NOW - timedelta(hours=1))

        due_small, small = _pass(reconciler)
        _unrelated_rows(reconciler.ledger.db.engine)
        due_large, large = _pass(reconciler)
    finally:
        reconciler.close()

    assert due_small == due_large == len(messages) - len(held)
    # the same statements and the same rows, whether the ledger holds 100,000 other rows or not
    assert large.statements == small.statements
    assert large.rows == small.rows
    # bounded by the due set: lookups by at most a chunk of keys each, no more rows than due messages
    lookups = [n for words, n in large.statements if words.upper().startswith("SELECT")]
    assert lookups and max(lookups) <= LOOKUP_CHUNK + 5
    assert len(held) <= large.rows <= len(messages)
    print(f"\n{len(messages)} due, {len(held)} held; per pass {len(lookups)} ledger statements, {large.rows} rows read")
