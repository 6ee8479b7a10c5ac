"""Snowflake, BigQuery and Trino, which cannot run here: each dialect's path through the engine,
checked against sqlglot's own parser for that dialect (README "Warehouses": what is proven here,
by snapshot only, or not supported). Spark runs the same checks; it is also proven on a real server
(tests/test_spark_engine.py).

For every shipped campaign the pass's statements are built as a pass builds them with the ledger
in another database (the warehouse is read-only): the due query, the explain query and, for segment
triggers, the entries query, each joining the engine state shipped the dialect's way (VALUES or
UNNEST in the query, or a temporary table filled by INSERT). Each must parse back in its dialect
with no function sqlglot does not know there, render back to the same text, carry the shipped rows,
bind no parameters (instants are written as the dialect's naive timestamp literals) and hold no time
zone SQL (local times are computed in Python, engine/decide.py). The driver URL must choose the
dialect, and a URL whose SQLAlchemy driver is not installed must give one clear error.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from datetime import datetime, timezone

import pytest
import sqlglot
from sqlglot import exp

from conftest import REPO
from engine import load_project, render_sql
from engine.dialects import dialect_named, dialect_of_url
from engine.errors import WarehouseError
from engine.sql import shipping
from engine.sql.compile import REENTRY_HISTORY
from engine.sql.due import ZONE_DUE_TABLE, due_query, entries_select, explain_query, reentry_in_sql, settled_steps
from engine.sql.triggers.registry import kind_of
from engine.state.tables import ENTRIES_TABLE, TAGS_TABLE

NOW = datetime(2025, 1, 10, tzinfo=timezone.utc)
ENTERED = datetime(2024, 12, 20, 8, 30, tzinfo=timezone.utc)
#: the engine state a pass ships: a segment entry of re-engage and a vip tag
STATE_ROWS = {ENTRIES_TABLE: [("re-engage", "c-4711", "t-4711", ENTERED)], TAGS_TABLE: [("c-4711", "vip")]}

#: dialect -> (a URL a deployment uses, the SQLAlchemy dialect's module, the naive timestamp type of its literals)
WAREHOUSES = {
    "snowflake": ("snowflake://engine:secret@acme-eu/shop/public?warehouse=wh", "snowflake.sqlalchemy", "TIMESTAMP"),
    "bigquery": ("bigquery://acme-project/shop", "sqlalchemy_bigquery", "DATETIME"),
    "trino": ("trino://engine@trino.internal:8080/hive/shop", "trino.sqlalchemy", "TIMESTAMP"),
    "spark": ("hive://engine@spark-thrift.internal:10000/shop", "pyhive", "TIMESTAMP"),
}
PROJECT = load_project(REPO)


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def shipped(dialect: str) -> tuple[dict, list[str]]:
    """Where the queries find the state (compile's ``state``) and the statements that put it there."""
    relations, statements = {}, []
    for table, rows in STATE_ROWS.items():
        if shipping.transport(dialect) == "values":
            relations[table] = shipping.values_relation(table, rows, dialect)
        else:
            statements.append(shipping.create_copy(table, dialect))
            statements.extend(shipping.insert_copy(table, rows, dialect))
            relations[table] = shipping.copy_relation(table)
    return relations, statements


def pass_queries(dialect: str) -> dict[str, str]:
    """label -> SQL of every query a pass and explain send for the shipped campaigns."""
    config = dataclasses.replace(PROJECT.config, dialect=dialect)
    state, _ = shipped(dialect)
    queries = {}
    for campaign in PROJECT.campaigns:
        queries[f"{campaign.name} due"] = render_sql(
            due_query(campaign, config, NOW, exclude_ledger=False, state=state), dialect)
        # a replica's pass: its shard and the settled skips (A/B buckets) decided by the stable hash in SQL
        # (a re-entry campaign's: the pass's copy of the ledger's sent instances, engine.run.plan.copy_history)
        history = {REENTRY_HISTORY: shipping.copy_relation(REENTRY_HISTORY)} if reentry_in_sql(campaign, dialect) else {}
        for settled in ("exclude", "only", "count") if settled_steps(campaign, True, dialect) else ("exclude",):
            queries[f"{campaign.name} due, shard 1/3, settled {settled}"] = render_sql(
                due_query(campaign, config, NOW, exclude_ledger=False, state={**state, **history}, settled=settled,
                          zone_due=ZONE_DUE_TABLE, shard=(1, 3)), dialect)
        queries[f"{campaign.name} explain"] = render_sql(
            explain_query(campaign, config, NOW, "c-4711", state=state)[0], dialect)
        if kind_of(campaign.trigger).records_entries:
            queries[f"{campaign.name} entries"] = render_sql(entries_select(campaign, config, NOW, state), dialect)
    return queries


@pytest.mark.parametrize("dialect", list(WAREHOUSES))
def test_every_pass_query_parses_back_in_its_dialect(dialect):
    _, _, timestamp_type = WAREHOUSES[dialect]
    reads_state = 0
    for label, sql in pass_queries(dialect).items():
        tree = sqlglot.parse_one(sql, read=dialect)  # raises ParseError on anything the dialect cannot read
        assert tree.sql(dialect=dialect) == sql, f"{label}: does not render back to the same text"
        # the stable hash's own functions (Dialect.hash32_sql; Spark's CONV, computed on a real Spark
        # session in tests/test_spark.py) are the dialect's builtins sqlglot parses as anonymous
        declared = {node.name for node in sqlglot.parse_one(dialect_named(dialect).hash32_sql, read=dialect)
                    .find_all(exp.Anonymous)}
        unknown = sorted({node.name for node in tree.find_all(exp.Anonymous)} - declared)
        assert not unknown, f"{label}: functions sqlglot does not know in {dialect}: {unknown}"
        assert not list(tree.find_all(exp.Placeholder, exp.Parameter)), f"{label}: binds parameters"
        assert not list(tree.find_all(exp.AtTimeZone, exp.ConvertTimezone)), f"{label}: time zone SQL"
        instants = [c for c in tree.find_all(exp.Cast) if isinstance(c.this, exp.Literal) and c.this.is_string
                    and c.this.this.startswith("20")]
        assert instants, f"{label}: no instant literal"
        assert {c.to.sql(dialect=dialect) for c in instants} == {timestamp_type}, label
        if "'vip'" in sql or "'re-engage'" in sql and "c-4711" in sql:
            reads_state += 1
    assert reads_state >= 3  # re-engage and inactivity (entries), the has_tag('vip') campaigns
    assert "'welcome-series:'" in pass_queries(dialect)["welcome-series due, shard 1/3, settled only"]  # its A/B bucket


@pytest.mark.parametrize("dialect", list(WAREHOUSES))
def test_the_ledger_state_is_shipped_the_dialects_way(dialect):
    row = dialect_named(dialect)
    state, statements = shipped(dialect)
    if row.temporary_tables:  # Snowflake: a temporary table per relation, filled by INSERT ... VALUES
        assert [type(sqlglot.parse_one(s, read=dialect)) for s in statements] == [exp.Create, exp.Insert] * 2
        for statement in statements[::2]:
            created = sqlglot.parse_one(statement, read=dialect)
            assert created.find(exp.TemporaryProperty) is not None, statement
        inserted = sqlglot.parse_one(statements[1], read=dialect)
        assert "c-4711" in inserted.sql(dialect=dialect) and inserted.find(exp.Values) is not None
        for table in STATE_ROWS:
            assert shipping.drop_copy(table, dialect) is None  # no temporary schema: never an unqualified DROP
            assert shipping.drop_copy(table, dialect, created=True) == f"DROP TABLE {shipping.PASS_TABLES[table]}"
        return
    assert statements == []  # nothing is written to the warehouse
    for table, relation in state.items():
        tree = sqlglot.parse_one(render_sql(relation, dialect), read=dialect)
        if row.inline_rows == "unnest":  # BigQuery: UNNEST of an array of STRUCTs, one per row
            unnest = tree.find(exp.Unnest)
            assert unnest is not None and unnest.find(exp.Struct) is not None
            assert [e.this.name for e in unnest.find(exp.Struct).expressions] == [n for n, _ in shipping.COLUMNS[table]]
        else:
            values = tree.find(exp.Values)
            assert values is not None
            assert [c.name for c in values.args["alias"].columns] == [n for n, _ in shipping.COLUMNS[table]]
        assert "c-4711" in tree.sql(dialect=dialect)
        empty = sqlglot.parse_one(render_sql(shipping.values_relation(table, [], dialect), dialect), read=dialect)
        assert isinstance(empty.args["where"].this, exp.Boolean)  # no rows: typed NULLs WHERE FALSE


@pytest.mark.parametrize("dialect", list(WAREHOUSES))
def test_the_driver_url_chooses_the_dialect_and_a_missing_driver_is_one_clear_error(dialect):
    from engine.state.warehouse import Database

    url, module, _ = WAREHOUSES[dialect]
    assert dialect_of_url(url) == dialect
    if _module_installed(module):  # PyHive (the test extras): the engine opens it, with the dialect's row
        database = Database(url)
        assert database.dialect is dialect_named(dialect)
        database.dispose()
        return
    with pytest.raises(WarehouseError) as raised:
        Database(url)
    message = str(raised.value)
    assert "install its driver" in message and "secret" not in message


def test_a_spark_server_that_does_not_answer_is_one_clear_error():
    """PyHive lets Thrift's transport error through SQLAlchemy unwrapped (Dialect.driver_errors)."""
    from engine.state.warehouse import Database
    from servers import free_port

    url = f"hive://engine@127.0.0.1:{free_port()}/shop"  # nothing listens there
    database = Database(url)
    try:
        with pytest.raises(WarehouseError) as raised:
            database.check()
    finally:
        database.dispose()
    assert str(raised.value).startswith(f"cannot connect to {url}: Could not connect")


#: a Databricks SQL warehouse as databricks-sqlalchemy takes it (token as the password)
DATABRICKS = ("databricks://token:dapi0123456789abcdef@adb-123.azuredatabricks.net"
              "?http_path=/sql/1.0/warehouses/abc&catalog=main&schema=shop")


def test_a_databricks_url_chooses_the_spark_dialect_and_without_its_driver_is_one_clear_error():
    """databricks-sqlalchemy registers the ``databricks`` backend, which the engine reads as Spark SQL
    (the SQL parsed above, run through hive:// in tests/test_spark_engine.py). Not run against a
    workspace. With the driver installed, the engine opens it with the Spark row (no connection made)
    and the dialect takes the URL's http_path, catalog and schema; without it, one clear error that
    does not show the token."""
    from engine.state.warehouse import Database

    assert dialect_of_url(DATABRICKS) == "spark"
    if _module_installed("databricks.sqlalchemy"):
        database = Database(DATABRICKS)
        try:
            assert database.backend == "databricks" and database.dialect is dialect_named("spark")
            _, arguments = database.engine.dialect.create_connect_args(database.engine.url)
            assert (arguments["http_path"], arguments["catalog"], arguments["schema"]) == \
                ("/sql/1.0/warehouses/abc", "main", "shop")
        finally:
            database.dispose()
        return
    with pytest.raises(WarehouseError) as raised:
        Database(DATABRICKS)
    message = str(raised.value)
    assert "install its driver" in message and "dapi0123456789abcdef" not in message, message
