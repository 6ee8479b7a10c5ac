"""SourceRows.by_key on DuckDB and on a real PostgreSQL: the keys bound as one array parameter (one
statement text reused; DuckDB's LIST, PostgreSQL's ``= ANY(array)``) give exactly the rows, values, types
and order of the literal ``IN (keys)`` condition it replaces, for an integer, a text and another column
type, with keys that match nothing, are not canonical integers or exceed a BIGINT; and on PostgreSQL a
citext column compares as in the literal list (case-insensitively)."""
from __future__ import annotations

import pytest

from conftest import copy_project, database_url
from engine.run.sources import SourceRows
from engine.spec.config import load_config
from engine.state.warehouse import Database
from engine.tools.demo import create_tables, generate_shop, load_shop

#: how order_items.order_id is stored, and the key kind SourceRows learns from it
COLUMN_TYPES = {"int": None, "str": "VARCHAR", "cast": "DECIMAL(18,0)"}
#: the databases that bind a batch's keys as one array, and the text of that condition
BOUND = {"duckdb": "IN (SELECT UNNEST(CAST($1 AS", "postgres": ":KEYS1"}


def literal_by_key(sources: SourceRows, entity: str, column: str, keys: list[str]) -> dict[str, list[dict]]:
    """The path the bound one replaces: the IN list of literals rendered by sqlglot."""
    grouped: dict[str, list[dict]] = {}
    for values in sources.query(entity, sources.key_condition(entity, column, keys)):
        grouped.setdefault(str(values[column]), []).append(values)
    return grouped


def retype(db: Database, backend: str, table: str, column: str, sql_type: str) -> None:
    if backend == "postgres":
        db.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} USING CAST({column} AS {sql_type})")
    else:
        db.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * REPLACE (CAST({column} AS {sql_type}) AS {column}) FROM {table}")


@pytest.mark.parametrize("backend", list(BOUND))
@pytest.mark.parametrize("kind", list(COLUMN_TYPES))
def test_bound_keys_give_the_rows_of_the_literal_in_list(kind, backend, tmp_path, monkeypatch):
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    db = Database(url)
    create_tables(db)
    load_shop(db, generate_shop(seed=7, customers=150))
    if COLUMN_TYPES[kind]:
        retype(db, backend, "order_items", "order_id", COLUMN_TYPES[kind])
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
        monkeypatch.setattr(db, "fetch_all", lambda sql, parameters=None: asked.append((sql, parameters)) or fetch_all(sql, parameters))
        got = bound.by_key("order_items", "order_id", keys)
        array = keys if kind != "int" else [int(k) for k in keys]
        # one statement, the keys as one array
        assert [parameters for _, parameters in asked] == [{"keys1": array} if backend == "postgres" else (array,)]
        assert BOUND[backend] in asked[0][0].upper() and "999999999" not in asked[0][0]
        monkeypatch.setattr(db, "fetch_all", fetch_all)
        expected = literal_by_key(SourceRows(db, config, {}), "order_items", "order_id", keys)
        assert got == expected
        assert [[type(v) for v in row.values()] for rows in got.values() for row in rows] == \
            [[type(v) for v in row.values()] for rows in expected.values() for row in rows]
        # independently: every order of the keys, each with all its items
        assert sorted(got, key=int) == [k for k in keys if k in set(ids)]
        assert sum(map(len, got.values())) == sum(str(r["order_id"]) in set(keys) for r in all_rows)
        assert bound.by_key("order_items", "order_id", keys[:5]) == literal_by_key(bound, "order_items", "order_id", keys[:5])

        # keys that are not canonical integers are matched as text (the column cast to text), and keys an
        # integer column cannot take as BIGINTs take the literal path, as on DuckDB
        for odd in (["00" + ids[0], ids[1]], [ids[0], str(2**70)]):
            asked.clear()
            monkeypatch.setattr(db, "fetch_all", lambda sql, parameters=None: asked.append((sql, parameters)) or fetch_all(sql, parameters))
            got = bound.by_key("order_items", "order_id", odd)
            assert [parameters for _, parameters in asked] == [None if kind == "int" and odd[1] == str(2**70) else (
                {"keys1": odd} if backend == "postgres" else (odd,))]
            monkeypatch.setattr(db, "fetch_all", fetch_all)
            assert got == literal_by_key(bound, "order_items", "order_id", odd)
    finally:
        db.dispose()


def test_postgres_bound_text_keys_compare_as_the_column_type_does(tmp_path, monkeypatch):
    """A citext column: the bound keys take the column's own array type, so 'ALICE' finds 'alice' as
    the literal IN list does (an array of text would compare case-sensitively)."""
    url = database_url("postgres", tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    db = Database(url)
    create_tables(db)
    load_shop(db, generate_shop(seed=7, customers=40))
    db.execute("CREATE EXTENSION IF NOT EXISTS citext")
    retype(db, "postgres", "customers", "email", "citext")
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    try:
        emails = sorted(str(r[0]) for r in db.fetch_all("SELECT email FROM customers WHERE email IS NOT NULL"))[:5]
        keys = [e.upper() for e in emails]
        sources = SourceRows(db, config, {})
        assert sources.bound_keys("customers", "email", keys) == ("VARCHAR", keys)
        got = sources.by_key("customers", "email", keys)
        assert sorted(got) == emails and got == literal_by_key(sources, "customers", "email", keys)
    finally:
        db.dispose()


def _demo_shop(tmp_path, monkeypatch, backend="duckdb"):
    url = database_url(backend, tmp_path)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    db = Database(url)
    create_tables(db)
    load_shop(db, generate_shop(seed=7, customers=150))
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    return db, config


@pytest.mark.parametrize("backend", list(BOUND))
def test_events_of_a_type_by_bound_keys_are_the_rows_of_the_literal_condition(backend, tmp_path, monkeypatch):
    from sqlglot import exp

    db, config = _demo_shop(tmp_path, monkeypatch, backend)
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
            assert [[type(v) for v in row.values()] for row in got][:1] == [[type(v) for v in row.values()] for row in expected][:1]
        bound = [(sql, parameters) for sql, parameters in asked if parameters is not None]
        assert len(bound) == len(kinds) and all(len(parameters) == 1 for _, parameters in bound)  # the keys: one array
        assert len({sql for sql, _ in bound}) == len(kinds)  # one text per event type, no key in it
        assert all(BOUND[backend] in sql.upper() and "999999" not in sql for sql, _ in bound)
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", list(BOUND))
def test_product_lists_by_bound_keys_are_the_lists_of_the_literal_condition_and_built_once_per_pass(backend, tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from engine.run import lists
    from engine.sql.product_lists import LIST_KINDS

    db, config = _demo_shop(tmp_path, monkeypatch, backend)
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
                assert parameters and BOUND[backend] in statement.upper() and isinstance(parameters, dict) == (backend == "postgres")
                got = [dict(r._mapping) for r in db.fetch_all(statement, parameters)]
                expected = [dict(r._mapping) for r in db.fetch_all(*lists.list_statement(name, keys, literal, now))]
                assert got == expected, name
                found += len(got)
        assert found
        # one statement per list kind for the pass, whatever the batch
        assert sorted(key[1] for key in sources.statements) == sorted(LIST_KINDS) and not literal.statements
    finally:
        db.dispose()


def test_a_source_without_a_value_is_asked_its_key_type_once_per_pass(tmp_path, monkeypatch):
    """A source with no row yet (a shop without web push subscriptions) gives no value to learn its key
    column's type from: a pass's reader asks once and matches by text ("cast": the column cast to text, the
    same rows) for the rest of the pass, not at every batch (21 sample queries per plan at 1M orders); the
    next pass's reader asks again, and once a row is there learns the type and finds it."""
    url = database_url("duckdb", tmp_path)
    db = Database(url)
    create_tables(db)
    shop = generate_shop(seed=7, customers=150)
    load_shop(db, shop)
    subscription = dict(shop.rows["push_subscriptions"][0])
    db.execute("DELETE FROM push_subscriptions")
    config, issues = load_config(copy_project(tmp_path / "project"))
    assert not [i for i in issues if i.severity == "error"]
    samples: list[str] = []  # the key type's sample queries: the only statements with LIMIT 1
    fetch_all = db.fetch_all

    def counted(sql, parameters=None):
        samples.extend([sql] if "LIMIT 1" in sql.upper() else [])
        return fetch_all(sql, parameters)

    monkeypatch.setattr(db, "fetch_all", counted)
    key_kinds: dict = {}
    customer = str(subscription["customer_id"])
    try:
        one_pass = SourceRows(db, config, key_kinds)
        for _ in range(3):  # three batches of one pass
            assert one_pass.by_key("push_subscriptions", "customer_id", [customer, "999999"]) == {}
        assert len(samples) == 1 and key_kinds == {}
        db.execute(f"INSERT INTO push_subscriptions (customer_id, endpoint, p256dh, auth) VALUES "
                   f"({subscription['customer_id']}, '{subscription['endpoint']}', '{subscription['p256dh']}', "
                   f"'{subscription['auth']}')")
        assert list(one_pass.by_key("push_subscriptions", "customer_id", [customer])) == [customer]  # cast: found
        next_pass = SourceRows(db, config, key_kinds)
        assert list(next_pass.by_key("push_subscriptions", "customer_id", [customer])) == [customer]
        assert len(samples) == 2 and key_kinds == {("push_subscriptions", "customer_id"): "int"}
    finally:
        db.dispose()
