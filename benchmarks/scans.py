"""How many times a pass reads each table of the warehouse: DuckDB's physical plan of every
statement the pass runs on its session (``EXPLAIN (FORMAT json)``: its ``SEQ_SCAN`` operators),
summed per table. A structure, not a time: benchmarks/run.py prints it beside the plan's time,
tests/test_shared_rows.py asserts it (issue 15.2: one scan of each source for all campaigns).
"""
from __future__ import annotations

import json
from collections import Counter
from contextlib import contextmanager
from unittest import mock

import sqlalchemy as sa

#: statements with a plan (a DROP, a CREATE TABLE with columns, an INSERT of VALUES have none worth counting)
_PLANNED = ("SELECT", "WITH", "CREATE TEMPORARY TABLE", "CREATE TEMP TABLE", "INSERT INTO")


def _seq_scans(node, counts: Counter) -> None:
    if isinstance(node, list):
        for child in node:
            _seq_scans(child, counts)
        return
    if node.get("name") == "SEQ_SCAN":
        table = str(node.get("extra_info", {}).get("Table", "?")).rsplit(".", 1)[-1]
        counts[table] += 1
    for child in node.get("children", []):
        _seq_scans(child, counts)


def statement_scans(conn: sa.Connection, sql: str, parameters=None) -> Counter:
    """Sequential scans per table in DuckDB's plan of ``sql`` (empty for a statement without one)."""
    counts: Counter = Counter()
    head = sql.lstrip().upper()
    if not head.startswith(_PLANNED) or (head.startswith("INSERT INTO") and " SELECT " not in head):
        return counts
    explain = sa.text("EXPLAIN (FORMAT json) " + sql)
    rows = conn.execute(explain, parameters).all() if parameters else conn.execute(explain).all()
    for row in rows:
        _seq_scans(json.loads(row[1]), counts)
    return counts


@contextmanager
def counting_scans():
    """While the block runs, every statement a ``Session`` runs is explained first on its connection:
    yields a list of (sql, Counter of sequential scans per table), in the order they ran."""
    from engine.state.warehouse import Session

    seen: list[tuple[str, Counter]] = []
    execute_together, stream, returning = Session.execute_together, Session.stream, Session.returning

    def note(session, sql, parameters=None):
        seen.append((sql, statement_scans(session.conn, sql, parameters)))

    def execute_together_(self, statements):  # Session.execute runs its statement through it
        for sql in statements:
            note(self, sql)
        return execute_together(self, statements)

    def stream_(self, sql, batch_size=1000, parameters=None, **options):
        note(self, sql, parameters)
        return stream(self, sql, batch_size, parameters, **options)

    def returning_(self, sql, parameters=None):
        note(self, sql, parameters)
        return returning(self, sql, parameters)

    with mock.patch.object(Session, "execute_together", execute_together_), \
            mock.patch.object(Session, "stream", stream_), \
            mock.patch.object(Session, "returning", returning_):
        yield seen


def pass_scans(reconciler, now, campaigns=None) -> tuple[Counter, list[tuple[str, Counter]]]:
    """The sequential scans per table of the plan at ``now`` (``Reconciler.due``, DuckDB), in total
    and per statement."""
    with counting_scans() as seen:
        for _ in reconciler.due(now, campaigns):
            pass
    total: Counter = Counter()
    for _, counts in seen:
        total.update(counts)
    return total, seen
