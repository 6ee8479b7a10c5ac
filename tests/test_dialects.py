"""engine/dialects.py: the one table of how the supported databases differ.

Every row is complete and agrees with sqlglot (its name is a sqlglot dialect,
what it renders parses back, literal rows come out as the row says) and with
the real databases run here (SQLite's STRFTIME writes exactly the compiler's
instant literals; the per-connection statements take effect). The AST check at
the end keeps it the one place: no other module of engine/ compares a dialect
name with a string literal or lists dialect names in a table of its own.
"""
from __future__ import annotations

import ast
import json
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
import sqlglot
from sqlglot import exp

import engine
from engine.dialects import (
    DIALECTS, Dialect, dialect_named, dialect_of_backend, dialect_of_url, drop_temporary_table,
)

PACKAGE = Path(engine.__file__).resolve().parent
SCHEMA = PACKAGE.parent / "schema" / "project.schema.json"
ROWS = list(DIALECTS.values())
#: every name a dialect goes by: sqlglot's and the URL schemes / SQLAlchemy backend names
NAMES = frozenset(DIALECTS) | {scheme for row in ROWS for scheme in row.url_schemes}


def test_the_supported_dialects_are_the_ones_the_schema_and_the_command_line_offer():
    schema = json.loads(SCHEMA.read_text())
    assert schema["properties"]["warehouse"]["properties"]["dialect"]["enum"] == list(DIALECTS)
    from engine.cli.main import compile_command

    choice = next(p for p in compile_command.params if p.name == "dialect")
    assert list(choice.type.choices) == list(DIALECTS)


def allowed(value, hint) -> bool:
    """``value`` is one that the annotation ``hint`` admits (a Literal choice, None, a type, a frozenset of str,
    a tuple of items each admitted: ``tuple[X, ...]`` or one hint per position)."""
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (Union, UnionType):
        return any(allowed(value, arg) for arg in get_args(hint))
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(allowed(item, args[0]) for item in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(allowed, value, args))
    if origin is frozenset:
        return isinstance(value, frozenset) and all(isinstance(item, str) for item in value)
    return value is None if hint is type(None) else isinstance(value, hint)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_every_row_has_every_capability_with_a_valid_value(row: Dialect):
    assert sqlglot.Dialect.get_or_raise(row.name) is not None  # a dialect sqlglot knows
    assert row.url_schemes and all(s == s.lower() and "+" not in s for s in row.url_schemes)
    hints = get_type_hints(Dialect)
    for field in fields(Dialect):
        assert allowed(getattr(row, field.name), hints[field.name]), (row.name, field.name)
    # capabilities that only make sense together
    assert row.temporary_schema is None or row.temporary_tables
    assert row.typed_columns or row.instant_text_format is not None
    assert bool(row.uncompressed_ledger_columns) == (row.uncompressed_column_clause is not None)


def test_a_url_scheme_chooses_exactly_one_dialect():
    schemes = [scheme for row in ROWS for scheme in row.url_schemes]
    assert len(schemes) == len(set(schemes))
    for row in ROWS:
        for scheme in row.url_schemes:
            assert dialect_of_url(f"{scheme}+somedriver://user:pw@host/db") == row.name
            assert dialect_of_url(f"{scheme.upper()}://host/db") == row.name
            assert dialect_of_backend(scheme) is row
    assert dialect_of_url("mysql://host/db") is None
    assert dialect_of_backend("postgresql").name == "postgres"
    assert dialect_named("sqlite") is DIALECTS["sqlite"]


def test_a_database_outside_the_table_has_every_capability_absent():
    other = dialect_of_backend("mysql")
    assert other.name == "mysql"  # rendered in sqlglot's dialect of that name, as before
    assert other == Dialect("mysql") and dialect_named("mysql") == Dialect("mysql")
    assert not other.temporary_tables and other.on_conflict_insert is None and other.array_parameters is None \
        and not other.key_array_conditions
    assert other.connect_statements == () and other.migration_lock is None


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_sqlglot_parses_what_each_row_renders(row: Dialect):
    statements = list(row.connect_statements)
    if row.migration_lock is not None:
        statements.append(row.migration_lock.format(key=123))
    drop = drop_temporary_table(row, "engine_order_facts")
    assert (drop is None) == (row.temporary_schema is None)
    if drop is not None:
        statements.append(drop)
        dropped = sqlglot.parse_one(drop, read=row.name)
        assert isinstance(dropped, exp.Drop) and dropped.args.get("exists")
        assert dropped.find(exp.Table).name == "engine_order_facts"
    if row.instant_text_format is not None:
        statements.append(f"SELECT STRFTIME('{row.instant_text_format}', created_at) FROM t")
    for statement in statements:
        assert sqlglot.parse_one(statement, read=row.name) is not None, statement


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_literal_rows_are_written_as_the_row_says(row: Dialect):
    """VALUES or UNNEST: what sqlglot writes for the literal rows a pass ships to the warehouse."""
    rows = exp.Values(expressions=[exp.Tuple(expressions=[exp.Literal.string("a"), exp.Literal.number(1)])],
                      alias=exp.TableAlias(this=exp.to_identifier("v")))
    sql = exp.select("*").from_(rows).sql(dialect=row.name)
    assert ("UNNEST(" in sql.upper()) == (row.inline_rows == "unnest"), sql
    assert ("VALUES" in sql.upper()) == (row.inline_rows == "values"), sql
    assert sqlglot.parse_one(sql, read=row.name) is not None


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_the_compiled_sql_follows_the_row(row: Dialect):
    from conftest import REPO

    from engine import load_project, render_sql
    from engine.sql.compile import SHARED_FACTS, shared_facts_create
    from engine.sql.due import due_query

    project = load_project(REPO)
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    sql = render_sql(due_query(project.campaign("second-order"), project.config, now, exclude_ledger=True,
                               dialect=row.name), row.name)
    assert ("NOT MATERIALIZED" in sql) == (row.stream_source_ctes or row.inline_instances)
    assert ("trigger_instances AS NOT MATERIALIZED" in sql) == row.inline_instances
    assert (f"STRFTIME('{row.instant_text_format}'" in sql) == (row.instant_text_format is not None)
    if row.temporary_tables:
        for entity in SHARED_FACTS:
            create = render_sql(shared_facts_create(entity, project.config, now), row.name)
            assert create.startswith("CREATE TEMPORARY TABLE")
            assert sqlglot.parse_one(create, read=row.name) is not None


def test_sqlite_searches_the_orders_of_the_at_risk_members_by_customer(tmp_path):
    """The at_risk trigger reads the orders twice (its per-customer facts, then its members' last
    orders): SQLite materialised that source without the orders' indexes and scanned all orders
    once per member - at 1M orders a pass's segment entries did not finish. Written NOT
    MATERIALIZED (``stream_source_ctes``), the join searches the orders by customer; the customers
    (``materialised_sources``) keep the copy SQLite joins through an automatic index."""
    from conftest import REPO

    from engine import load_project, render_sql
    from engine.sql.due import due_query
    from engine.state.ledger import Ledger
    from engine.state.warehouse import Database
    from engine.tools.demo import create_tables

    row = DIALECTS["sqlite"]
    db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    try:
        create_tables(db)
        Ledger(db).ensure_schema()
        project = load_project(REPO)
        sql = render_sql(due_query(project.campaign("re-engage"), project.config, datetime(2025, 1, 10, tzinfo=timezone.utc),
                                   exclude_ledger=True, dialect=row.name), row.name)
        assert "src_orders AS NOT MATERIALIZED" in sql and "src_customers AS (" in sql
        plan = [detail for *_, detail in db.fetch_all(f"EXPLAIN QUERY PLAN {sql}")]
        assert any(d.startswith("SEARCH orders USING INDEX") and "customer_id=?" in d for d in plan), plan
        assert not any(d.startswith("MATERIALIZE src_orders") for d in plan), plan
    finally:
        db.dispose()


def test_sqlite_looks_up_the_newest_activity_of_the_customers_in_a_window_by_customer(tmp_path, monkeypatch):
    """The last-activity trigger (inactivity) reads back the key of each customer's newest order or
    login. Its activities were a UNION ALL of the orders and logins in a step's window, joined with
    the customers whose last activity lies in one: SQLite cannot join into a UNION ALL, so it
    scanned every order and event into a materialised copy at every pass (10 s of a 38 s plan a
    minute later at 1M orders). Each part now joins those customers itself: as a pass runs it (the
    shared fact tables), SQLite reads orders and events only by customer, through their indexes."""
    from conftest import REPO

    from engine import load_project, render_sql
    from engine.run import plan
    from engine.sql.compile import shared_facts_used
    from engine.sql.due import due_query
    from engine.state.ledger import Ledger
    from engine.state.warehouse import Database
    from engine.tools.demo import create_tables

    row = DIALECTS["sqlite"]
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    db = Database(url)
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    try:
        create_tables(db)
        Ledger(db).ensure_schema()
        monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)  # engine.yaml: url: ${ENGINE_WAREHOUSE_URL:-...}
        project = load_project(REPO)
        assert project.config.dialect == row.name
        campaigns = [c for c in project.campaigns if c.enabled]
        query = due_query(project.campaign("inactivity"), project.config, now, exclude_ledger=True,
                          dialect=row.name, shared_facts=True)
        sql = render_sql(query, row.name)
        with db.session() as session:
            created: list[str] = []
            try:
                for entity in shared_facts_used(query):  # the customers, orders and events (as a pass does)
                    plan.create_shared_table(session, project.config, now, campaigns, entity, created)
                details = [r[-1] for r in session.conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()]
            finally:
                for entity in created:
                    plan.drop_facts(session, project.config, entity, created=True)
        for source in ("orders", "events"):
            assert any(d.startswith(f"SEARCH {source} USING INDEX") and "customer_id=?" in d for d in details), details
            assert not any(d.startswith(f"SCAN {source}") for d in details), details
    finally:
        db.dispose()


def test_sqlite_strftime_writes_the_compilers_instant_literals():
    """The text form of instants: SQLite's STRFTIME with the row's format gives exactly ts()'s literal."""
    import sqlite3

    from engine.sql.compile import ts

    row = DIALECTS["sqlite"]
    with sqlite3.connect(":memory:") as conn:
        for stored, value in [("2025-01-02 03:04:05.678", datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)),
                              ("2025-01-02 03:04:05", datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
                              ("2025-01-02T03:04", datetime(2025, 1, 2, 3, 4, tzinfo=timezone.utc))]:
            literal = ts(value, "sqlite")
            assert isinstance(literal, exp.Literal)
            written = conn.execute("SELECT strftime(?, ?)", (row.instant_text_format, stored)).fetchone()[0]
            assert written == literal.this, stored


def test_the_per_connection_statements_take_effect_on_real_databases(tmp_path):
    from engine.state.warehouse import Database

    sqlite_db = Database(f"sqlite:///{tmp_path / 'shop.db'}")
    duck_db = Database(f"duckdb:///{tmp_path / 'shop.duckdb'}", duckdb_settings={"threads": 1})
    try:
        assert sqlite_db.dialect is DIALECTS["sqlite"] and duck_db.dialect is DIALECTS["duckdb"]
        assert sqlite_db.fetch_all("PRAGMA journal_mode")[0][0] == "wal"
        assert sqlite_db.fetch_all("PRAGMA busy_timeout")[0][0] == 10000
        assert int(duck_db.fetch_all("SELECT current_setting('threads')")[0][0]) == 1
    finally:
        sqlite_db.dispose()
        duck_db.dispose()


# --- no other module names a dialect -------------------------------------------------------------


def dialect_name_comparisons(source: str) -> list[int]:
    """Lines comparing a value with a dialect name literal (``== "sqlite"``, ``in ("duckdb", ...)``)
    or holding a literal table of two or more dialect names (a list, set, tuple or dict)."""
    def is_name(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES

    def names_in(node: ast.AST) -> int:
        items = [*node.keys, *node.values] if isinstance(node, ast.Dict) else getattr(node, "elts", [])
        return sum(1 for item in items if item is not None and is_name(item))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(is_name(o) or (isinstance(o, (ast.Tuple, ast.List, ast.Set)) and names_in(o)) for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and names_in(node) >= 2:
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_module_but_the_table_compares_a_dialect_name():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "dialects.py":
            continue
        lines = dialect_name_comparisons(path.read_text())
        if lines:
            found[str(path.relative_to(PACKAGE.parent))] = lines
    assert not found, f"dialect names compared outside engine/dialects.py (add a capability there): {found}"


@pytest.mark.parametrize("source", [
    'if backend == "sqlite": pass',
    'if "postgresql" != db.backend: pass',
    'ok = dialect in ("duckdb", "trino")',
    'ok = dialect not in ["bigquery"]',
    'TABLE = {"postgresql": "postgres", "x": 1}',
    'TEMP = frozenset({"duckdb", "SQLite"})',
])
def test_the_check_finds_each_form(source):
    assert dialect_name_comparisons(source) == [1]


def test_the_check_leaves_other_strings_alone():
    assert dialect_name_comparisons('if name == "threads": settings = data.get("duckdb")\nDEFAULT = "duckdb"') == []
