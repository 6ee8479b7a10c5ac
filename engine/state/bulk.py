"""Set-based inserts into the engine's own tables, one statement per chunk of rows.

Owns the two ways the ledger's stores write many rows at once: the dialect's
``INSERT ... ON CONFLICT DO NOTHING`` (``conflict_insert``: SQLAlchemy's insert of
the dialect that speaks it; DuckDB speaks PostgreSQL's) and DuckDB's insert over
one LIST parameter per column (``unnest_insert``: nothing to compile per chunk,
no thousands of parameters to bind). Must not know any table's meaning: the
stores (ledger, events, coupons) decide what to write and in which transaction.
"""
from __future__ import annotations

from importlib import import_module

import sqlalchemy as sa

from engine.dialects import Dialect


def array_type(column: sa.Column) -> str:
    """The SQL element type of an array parameter carrying ``column``'s values."""
    if isinstance(column.type, sa.DateTime):
        return "TIMESTAMP"
    if isinstance(column.type, sa.Integer):
        return "INTEGER"
    if isinstance(column.type, sa.Boolean):
        return "BOOLEAN"
    return "VARCHAR"


def conflict_insert(dialect: Dialect):
    """The SQLAlchemy ``insert()`` that has ``on_conflict_do_nothing`` for ``dialect``
    (``Dialect.on_conflict_insert``; None there means the dialect has none)."""
    return import_module(f"sqlalchemy.dialects.{dialect.on_conflict_insert}").insert


def unnest_insert(conn: sa.Connection, table: sa.Table, rows: list[dict], conflict: str | None = None) -> set[str]:
    """DuckDB: ``rows`` inserted as one statement over one LIST parameter per column. With ``conflict``
    (a unique column), rows whose ``conflict`` value exists are left out and the inserted values come
    back. Name the conflict target: a bare ON CONFLICT DO NOTHING makes DuckDB check every unique
    index the slow way (1.3 s per 500 rows on a 200k-row ledger, 30x the targeted form)."""
    names = list(rows[0])
    unnest = ", ".join(f"unnest(CAST(${i} AS {array_type(table.c[n])}[]))" for i, n in enumerate(names, 1))
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {unnest}"
    if conflict is not None:
        sql += f" ON CONFLICT ({conflict}) DO NOTHING RETURNING {conflict}"
    result = conn.exec_driver_sql(sql, tuple([row[n] for row in rows] for n in names))
    return {row[0] for row in result} if conflict is not None else set()
