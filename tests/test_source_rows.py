"""SourceRows.by_key on DuckDB: the keys bound as one array parameter (one statement text reused)
give exactly the rows, values and order of the literal ``IN (keys)`` condition it replaces, for an
integer, a text and another column type, with keys that match nothing, are not canonical integers
or exceed a BIGINT."""
from __future__ import annotations

import pytest

from conftest import copy_project
from engine.run.sources import SourceRows
from engine.spec.config import load_config
from engine.state.warehouse import Database
from engine.tools.demo import create_tables, generate_shop, load_shop

#: how order_items.order_id is stored, and the key kind SourceRows learns from it
COLUMN_TYPES = {"int": None, "str": "VARCHAR", "cast": "DECIMAL(18,0)"}


def literal_by_key(sources: SourceRows, entity: str, column: str, keys: list[str]) -> dict[str, list[dict]]:
    """The path the bound one replaces: the IN list of literals rendered by sqlglot."""
    grouped: dict[str, list[dict]] = {}
    for values in sources.query(entity, sources.key_condition(entity, column, keys)):
        grouped.setdefault(str(values[column]), []).append(values)
    return grouped


@pytest.mark.parametrize("kind", list(COLUMN_TYPES))
def test_bound_keys_give_the_rows_of_the_literal_in_list(kind, tmp_path, monkeypatch):
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    db = Database(url)
    create_tables(db)
    load_shop(db, generate_shop(seed=7, customers=150))
    if COLUMN_TYPES[kind]:
        db.execute("CREATE OR REPLACE TABLE order_items AS SELECT * REPLACE "
                   f"(CAST(order_id AS {COLUMN_TYPES[kind]}) AS order_id) FROM order_items")
    all_rows = [dict(r._mapping) for r in db.fetch_all("SELECT order_id FROM order_items")]
    ids = sorted({str(r["order_id"]) for r in all_rows}, key=int)
    assert len(ids) > 100
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    keys = ids[::3] + ["999999999", "-5"]  # a third of the orders and two that match nothing
    try:
        bound = SourceRows(db, config, {})
        assert bound.key_kind("order_items", "order_id") == kind
        asked = []
        fetch_all = db.fetch_all
        monkeypatch.setattr(db, "fetch_all", lambda sql, parameters=None: asked.append(parameters) or fetch_all(sql, parameters))
        got = bound.by_key("order_items", "order_id", keys)
        assert asked == [(keys if kind != "int" else [int(k) for k in keys],)]  # one statement, the keys as one array
        monkeypatch.setattr(db, "fetch_all", fetch_all)
        expected = literal_by_key(SourceRows(db, config, {}), "order_items", "order_id", keys)
        assert got == expected
        assert [[type(v) for v in row.values()] for rows in got.values() for row in rows] == \
            [[type(v) for v in row.values()] for rows in expected.values() for row in rows]
        # independently: every order of the keys, each with all its items
        assert sorted(got, key=int) == [k for k in keys if k in set(ids)]
        assert sum(map(len, got.values())) == sum(str(r["order_id"]) in set(keys) for r in all_rows)
        assert bound.by_key("order_items", "order_id", keys[:5]) == literal_by_key(bound, "order_items", "order_id", keys[:5])

        # keys an integer column cannot take as BIGINTs, or that are not canonical, take the literal path
        for odd in (["00" + ids[0], ids[1]], [ids[0], str(2**70)]):
            assert bound.by_key("order_items", "order_id", odd) == literal_by_key(bound, "order_items", "order_id", odd)
    finally:
        db.dispose()


def _demo_shop(tmp_path, monkeypatch):
    url = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    db = Database(url)
    create_tables(db)
    load_shop(db, generate_shop(seed=7, customers=150))
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    return db, config


def test_events_of_a_type_by_bound_keys_are_the_rows_of_the_literal_condition(tmp_path, monkeypatch):
    from sqlglot import exp

    db, config = _demo_shop(tmp_path, monkeypatch)
    try:
        customers = sorted({str(r[0]) for r in db.fetch_all("SELECT customer_id FROM events")})[::2] + ["999999"]
        kinds = sorted({str(r[0]) for r in db.fetch_all("SELECT type FROM events")})
        assert len(customers) > 10 and kinds
        sources, asked = SourceRows(db, config, {}), []
        fetch_all = db.fetch_all
        monkeypatch.setattr(db, "fetch_all", lambda sql, parameters=None: asked.append((sql, parameters)) or fetch_all(sql, parameters))
        for kind in kinds:
            of_type = exp.column("type").eq(exp.Literal.string(kind))
            got = sources.rows_by_keys("events", "customer_id", customers, where=of_type)
            expected = sources.query("events", exp.and_(of_type.copy(), sources.key_condition("events", "customer_id", customers)))
            assert got and sorted(map(repr, got)) == sorted(map(repr, expected))
        bound = [(sql, parameters) for sql, parameters in asked if parameters is not None]
        assert len(bound) == len(kinds) and all(len(parameters) == 1 for _, parameters in bound)  # the keys: one array
        assert len({sql for sql, _ in bound}) == len(kinds)  # one text per event type, no key in it
        assert all("IN (SELECT unnest(CAST($1 AS" in sql for sql, _ in bound)
    finally:
        db.dispose()


def test_product_lists_by_bound_keys_are_the_lists_of_the_literal_condition_and_built_once_per_pass(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from engine.run import lists
    from engine.sql.product_lists import LIST_KINDS

    db, config = _demo_shop(tmp_path, monkeypatch)
    now = datetime(2025, 1, 10, tzinfo=timezone.utc)
    try:
        customers = sorted({str(r[0]) for r in db.fetch_all("SELECT customer_id FROM customers")}, key=int)
        batches = [customers[:60], customers[60:]]
        sources = SourceRows(db, config, {})
        literal = SourceRows(db, config, {})
        monkeypatch.setattr(literal, "bound_keys", lambda *args: None)  # the literal IN lists, as before
        found = 0
        for name in LIST_KINDS:
            for keys in batches:
                statement, parameters = lists.list_statement(name, keys, sources, now)
                assert parameters and "IN (SELECT UNNEST(CAST($1 AS" in statement.upper()
                got = [dict(r._mapping) for r in db.fetch_all(statement, parameters)]
                expected = [dict(r._mapping) for r in db.fetch_all(*lists.list_statement(name, keys, literal, now))]
                assert got == expected, name
                found += len(got)
        assert found
        # one statement per list kind for the pass, whatever the batch
        assert sorted(key[1] for key in sources.statements) == sorted(LIST_KINDS) and not literal.statements
    finally:
        db.dispose()
