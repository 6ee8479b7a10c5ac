"""Per-customer facts shared by a pass: the same rows as each query computing its own.

A reconciler pass on DuckDB, SQLite and PostgreSQL materialises the
per-customer facts (order count, first/last order, total spent, last event,
last login) once into temporary tables and every campaign's due query joins
them (``shared_facts=True``). Queries that cannot use a temporary table
(``engine explain``, other dialects, snapshots) compute the same facts in a
CTE. On the cross-engine history (tied timestamps, NULL totals, customers
without orders, window edges) both forms must return exactly the same rows,
for every campaign and instant, with segment entries recorded as a pass does.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlglot

from conftest import REPO, copy_project, database_url
from engine import Reconciler, load_project, render_sql
from engine.dialects import DIALECTS
from engine.sql.compile import (
    SHARED_CUSTOMERS, SHARED_FACTS, SHARED_ROWS, shared_facts_create, shared_facts_used, shared_table,
)
from engine.run.plan import create_shared_table
from engine.sql.due import due_query
from engine.tools.demo import load_shop
from engine.state.warehouse import Database
from history import INSTANTS, shared_history

PROJECT = load_project(REPO)
#: every temporary table a pass creates to share facts (per customer, per order)
SHARED_TABLES = (*SHARED_CUSTOMERS.values(), *SHARED_FACTS.values(), *SHARED_ROWS.values())
CAMPAIGNS = [c.name for c in PROJECT.campaigns if c.enabled]


def _rows(stream) -> list[tuple]:
    return sorted((tuple(str(value) for value in row) for rows in stream for row in rows), key=str)


def _shop_project(backend, tmp_path, monkeypatch):
    """A real ``backend`` shop holding the cross-engine history, and the shipped project pointed at it: (url, project)."""
    url = database_url(backend, tmp_path)
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    return url, load_project(copy_project(tmp_path / "project"))


@pytest.fixture
def reconciler(backend, tmp_path, monkeypatch):
    reconciler = Reconciler(_shop_project(backend, tmp_path, monkeypatch)[1])
    yield reconciler
    reconciler.close()


def test_shared_facts_give_the_rows_of_per_query_facts(reconciler):
    config = reconciler.config
    compared = used = rows_used = 0
    for label, now in INSTANTS.items():
        reconciler.enter_segments(now)  # as run_once does before planning
        with reconciler.warehouse.session() as session:
            created: list[str] = []
            for entity in (*SHARED_CUSTOMERS, *SHARED_FACTS, *SHARED_ROWS):  # as a pass creates them (plan.due_rows)
                create_shared_table(session, config, now, reconciler.campaigns(), entity, created)
            for campaign in reconciler.campaigns():
                alone = due_query(campaign, config, now, exclude_ledger=True)
                shared = due_query(campaign, config, now, exclude_ledger=True, shared_facts=True)
                used += bool(shared_facts_used(shared))
                rows_used += "order_rows" in shared_facts_used(shared)
                expected = _rows(reconciler.warehouse.stream(render_sql(alone, config.dialect)))
                got = _rows(session.stream(render_sql(shared, config.dialect)))
                assert got == expected, f"{campaign.name} at {label}: shared facts differ from per-query facts"
                compared += len(expected)
            for entity in created:
                session.execute(f"DROP TABLE {shared_table(entity)}")
    assert compared > 100, "the history should give the campaigns rows to compare"
    assert used >= 4, "most shipped campaigns read per-customer facts (stop conditions, audiences, segments)"
    assert rows_used >= 4, "the order campaigns with time windows read the shared order rows"


def test_a_pass_never_drops_a_permanent_table_of_the_same_name(reconciler):
    """An unqualified DROP TABLE IF EXISTS drops the permanent table when no temporary one
    exists (DuckDB, SQLite and PostgreSQL alike): the pass names the temporary schema."""
    for table in SHARED_TABLES:
        reconciler.warehouse.execute(f"CREATE TABLE {table} (kept INTEGER)")
        reconciler.warehouse.execute(f"INSERT INTO {table} VALUES (7)")
    assert any(batch for batch in reconciler.due(INSTANTS["anchor"]))
    for table in SHARED_TABLES:
        assert [tuple(row) for row in reconciler.warehouse.fetch_all(f"SELECT kept FROM {table}")] == [(7,)]


def test_a_pass_drops_its_fact_tables_and_can_run_again(reconciler):
    now = INSTANTS["anchor"]
    first = sorted(m.key for batch in reconciler.due(now) for m in batch)
    second = sorted(m.key for batch in reconciler.due(now) for m in batch)  # CREATE again: the first pass dropped them
    assert first and first == second
    with reconciler.warehouse.session() as session:
        for table in SHARED_TABLES:
            with pytest.raises(Exception):
                list(session.stream(f"SELECT * FROM {table}"))


@pytest.mark.parametrize("dialect", sorted(d.name for d in DIALECTS.values() if d.temporary_tables))
def test_shared_facts_sql_snapshot(dialect, snapshot):
    """What a pass runs first on each dialect with temporary tables, and a due query reading them."""
    now = INSTANTS["anchor"]
    statements = [render_sql(shared_facts_create(entity, PROJECT.config, now), dialect, pretty=True) for entity in SHARED_FACTS]
    query = due_query(PROJECT.campaign("inactivity"), PROJECT.config, now, exclude_ledger=True, dialect=dialect,
                      shared_facts=True)
    statements.append(render_sql(query, dialect, pretty=True))
    assert statements == snapshot
    for sql in statements:
        assert sqlglot.parse_one(sql, read=dialect) is not None
    from engine.dialects import dialect_named
    customers = {"customers"} if dialect_named(dialect).shared_customers else set()  # SQLite: the pass's copy
    assert set(shared_facts_used(query)) == {"orders", "events", *customers}


def test_a_query_failing_mid_pass_is_reported_not_hidden_by_the_cleanup(reconciler):
    """The fact tables are dropped when a pass ends, also on failure, without masking the failure."""
    from dataclasses import replace

    from engine.errors import WarehouseError

    config = reconciler.config
    broken = {**config.sources, "checkouts": replace(config.sources["checkouts"], table="checkouts_gone")}
    reconciler.config = replace(config, sources=broken)
    with pytest.raises(WarehouseError) as failure:
        for _ in reconciler.due(INSTANTS["anchor"]):
            pass
    assert "query failed on" in str(failure.value) and "checkouts_gone" in str(failure.value)
    reconciler.config = config
    assert any(batch for batch in reconciler.due(INSTANTS["anchor"]))  # the next pass creates its tables again


def test_per_zone_windows_change_no_decision_only_the_rows_fetched(reconciler, monkeypatch):
    """With the customers' time zones listed, steps with a local send time cut their window per
    zone (compile.zone_window): the same decisions at every instant, from fewer candidate rows."""
    from engine.progress import Progress
    from engine.run import plan as plan_stage

    class RowCounter(Progress):
        fetched = 0

        def rows(self, count: int) -> None:
            self.fetched += count

    def plan(now):
        reconciler.progress = RowCounter()
        decisions = sorted((m.key, m.action, m.reason, m.channel, str(m.due_at)) for batch in reconciler.due(now) for m in batch)
        return decisions, reconciler.progress.fetched

    decided = fetched = fetched_without = 0
    for label, now in INSTANTS.items():
        with_zones, rows = plan(now)
        with monkeypatch.context() as patch:
            patch.setattr(plan_stage, "customer_zones", lambda session, config, campaigns: None)
            without, rows_without = plan(now)
        assert with_zones == without, f"at {label}"
        decided, fetched, fetched_without = decided + len(with_zones), fetched + rows, fetched_without + rows_without
    assert decided > 50
    assert fetched < fetched_without, "the per-zone windows should leave out rows that are not due yet or long gone"


def test_a_whole_scan_converts_each_rows_instant_once_on_sqlite(tmp_path, monkeypatch):
    """SQLite keeps instants as text and normalises each through STRFTIME in the source's CTE; flattened into
    a reader, every reference to the column computed it again (the order facts' WHERE, MIN and MAX: three
    times per order; delivery's trigger instances six). Where Dialect.unflattened_scans, the statements that
    read a source whole (a pass's fact tables and shared rows, an order date trigger's instances) convert each
    row's instants once: SQLite's own STRFTIME, counted per call, on the cross-engine history. The per-customer
    facts (Dialect.instant_number_sql) format none per row: each row's instant is read as its julian day, and
    only the customer's aggregates are formatted; the shared order rows and delivery's trigger instances compare
    numbers too and format only the rows they keep."""
    import sqlite3
    from collections import Counter

    from engine.dialects import dialect_named
    from engine.sql.due import shared_table_create

    url, project = _shop_project("sqlite", tmp_path, monkeypatch)
    config, now = project.config, INSTANTS["anchor"]
    assert dialect_named(config.dialect).unflattened_scans
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    native, calls = sqlite3.connect(":memory:"), Counter()

    def strftime(form, value):  # SQLite's own, counted (a function of the connection overrides the built-in)
        calls[form] += 1
        return native.execute("SELECT STRFTIME(?, ?)", (form, value)).fetchone()[0]

    connection.create_function("STRFTIME", 2, strftime, deterministic=True)
    orders, events = (connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("orders", "events"))
    assert orders > 50 and events > 10
    campaigns = [c for c in project.campaigns if c.enabled]
    converted = {}
    for entity in (*SHARED_CUSTOMERS, *SHARED_FACTS, *SHARED_ROWS):  # the customers read by delivery below
        create = shared_table_create(entity, config, now, campaigns)
        if create is None:
            continue
        calls.clear()
        connection.execute(render_sql(create, config.dialect))
        if entity not in SHARED_CUSTOMERS:
            converted[entity] = sum(calls.values())
    # one instant per row of each source the shared rows read (created_at, occurred_at); the facts compare and
    # aggregate each row's instant as a number (Dialect.instant_number_sql) and format two per customer
    facts = {entity: connection.execute(f"SELECT COUNT(*) FROM temp.{SHARED_FACTS[entity]}").fetchone()[0]
             for entity in SHARED_FACTS}
    # the shared order rows compare and order the orders' instants as numbers too and format only the rows of
    # their window: created_at and next_order_at of each
    window = connection.execute(f"SELECT COUNT(*) FROM temp.{SHARED_ROWS['order_rows']}").fetchone()[0]
    assert 0 < window < orders
    assert converted == {"orders": 2 * facts["orders"], "events": 2 * facts["events"], "order_rows": 2 * window,
                         "event_days": events}
    calls.clear()
    delivery = due_query(project.campaign("delivery"), config, now, exclude_ledger=False, shared_facts=True)
    connection.execute(render_sql(delivery, config.dialect)).fetchall()
    # delivery's trigger instances format the delivery date of the orders within a step's window alone (two
    # instants per order without Dialect.instant_number_sql: 1,362 here)
    assert 0 < sum(calls.values()) < orders // 10


def test_one_customers_rows_are_not_read_by_a_whole_scan():
    """A statement about one customer (``engine explain``, a due query for one customer) or about the touched
    customers of the kept order rows finds their orders through the table's index: no ``LIMIT -1`` scan."""
    from engine.sql.due import explain_query
    from engine.sql.kept_facts import kept_rows_select

    import dataclasses

    now = INSTANTS["anchor"]
    sqlite = dataclasses.replace(PROJECT.config, dialect="sqlite")
    delivery = PROJECT.campaign("delivery")
    whole = render_sql(due_query(delivery, sqlite, now, exclude_ledger=False), "sqlite")
    assert "LIMIT -1" in whole
    one = render_sql(due_query(delivery, sqlite, now, exclude_ledger=False, customer_id="7"), "sqlite")
    explained = render_sql(explain_query(delivery, sqlite, now, "7")[0], "sqlite")
    campaigns = [c for c in PROJECT.campaigns if c.enabled]
    rows = kept_rows_select(sqlite, now, campaigns)
    touched = kept_rows_select(sqlite, now, campaigns, touched="engine_touched_orders")
    assert rows is not None and "LIMIT -1" in render_sql(rows, "sqlite")
    assert all("LIMIT -1" not in sql for sql in (one, explained, render_sql(touched, "sqlite")))


def test_a_scan_keeps_every_column_when_its_reader_names_one_without_its_table():
    """A scan's columns are narrowed to those its reader names by the scan's alias; a column named without
    its table might be the scan's, so then every column stays (narrowed, ``created_at`` would be missing)."""
    import dataclasses

    from sqlglot import exp

    from engine.sql.compile import QueryBuilder, col

    sqlite = dataclasses.replace(PROJECT.config, dialect="sqlite")
    builder = QueryBuilder(sqlite, INSTANTS["anchor"], "sqlite")
    named = builder.with_ctes(exp.select(col("o", "customer_id")).from_(builder.scanned("orders", "o")))
    assert "(SELECT customer_id FROM src_orders LIMIT -1) AS o" in render_sql(named, "sqlite")
    builder = QueryBuilder(sqlite, INSTANTS["anchor"], "sqlite")
    bare = builder.with_ctes(exp.select(col("o", "customer_id"), exp.column("created_at"))
                             .from_(builder.scanned("orders", "o")))
    assert "(SELECT * FROM src_orders LIMIT -1) AS o" in render_sql(bare, "sqlite")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_due_queries_read_the_pass_customers_by_index(reconciler):
    """Where Dialect.shared_customers (SQLite), a pass copies the customers' source once into a temporary
    table and indexes it and the per-customer fact tables on the customer id: each due query reads that
    copy and finds a customer's facts by the index (EXPLAIN QUERY PLAN on a real SQLite file), instead of
    materialising the customers per query; no index lands on the shop's own tables."""
    config, now = reconciler.config, INSTANTS["anchor"]
    with reconciler.warehouse.session() as session:
        created: list[str] = []
        plans = {}
        for name in ("inactivity", "re-engage", "welcome-series"):
            query = due_query(next(c for c in reconciler.campaigns() if c.name == name), config, now, exclude_ledger=True, shared_facts=True)
            for entity in shared_facts_used(query):  # as a pass creates them (plan.due_rows)
                create_shared_table(session, config, now, reconciler.campaigns(), entity, created)
            sql = render_sql(query, config.dialect)
            assert "src_customers" not in sql, f"{name} materialises the customers' source itself"
            plans[name] = " | ".join(str(row[-1]) for rows in session.stream(f"EXPLAIN QUERY PLAN {sql}")
                                     for row in rows)
        indexes = {row[0]: row[1] for rows in session.stream("SELECT name, tbl_name FROM temp.sqlite_master "
                                                             "WHERE type = 'index'") for row in rows}
        shop_indexes = [row[0] for rows in session.stream("SELECT name FROM main.sqlite_master WHERE type = 'index' "
                                                          "AND name LIKE 'ix_engine%'") for row in rows]
    assert "customers" in created and "orders" in created
    assert indexes == {"ix_engine_customers": "engine_customers", "ix_engine_customers_text": "engine_customers",
                       "ix_engine_order_facts": "engine_order_facts",
                       **({"ix_engine_event_facts": "engine_event_facts"} if "events" in created else {})}
    assert shop_indexes == []
    for name, plan in plans.items():
        assert "engine_customers" in plan, f"{name}: {plan}"
        assert "INDEX ix_engine_" in plan, f"{name} finds no customer's row by the pass's indexes: {plan}"


def test_sqlite_facts_from_instant_numbers_equal_the_text_facts(tmp_path, monkeypatch):
    """Dialect.instant_number_sql (SQLite: the julian day) changes how the per-customer facts compute, not what
    they hold: on a real SQLite file with the cross-engine history plus instants the shop might store in other
    text forms (a 'T' and 'Z', an offset, sub-millisecond digits that JULIANDAY rounds as STRFTIME's %f does
    not - 59.9996 s, half a millisecond -, a julian day number, a day alone, text that is no date, NULL), the
    order and event fact tables with and without the declaration are equal row by row, value and storage
    class (a pass's temporary tables, at two instants)."""
    import dataclasses
    import sqlite3

    from engine.dialects import dialect_named

    url, project = _shop_project("sqlite", tmp_path, monkeypatch)
    config = project.config
    assert dialect_named(config.dialect).instant_number_sql
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    odd = ["2025-01-05T10:00:00Z", "2025-01-05 11:00:00+02:00", "2025-01-05 09:59:59.9996", "2460680.25",
           "2025-01-04", "not a date", None, "2025-01-05 09:59:59.999", "2025-01-05 10:00:00.0004",
           "2025-01-04 08:00:00.1235", "2025-01-04 08:00:00.123456", "2025-01-04 08:00:00.12349"]
    for n, value in enumerate(odd):  # customers 1-4 get them besides their own rows
        connection.execute("INSERT INTO orders (order_id, customer_id, created_at, status, total) "
                           "VALUES (?, ?, ?, 'completed', 1)", (800_000 + n, 1 + n % 4, value))
        connection.execute("INSERT INTO events (event_id, customer_id, type, occurred_at) VALUES (?, ?, ?, ?)",
                           (800_000 + n, 1 + n % 4, "login" if n % 3 else "page_view", value))
    connection.commit()
    declared = DIALECTS[config.dialect]

    def facts(entity: str, now, numbers: bool) -> list[tuple]:
        monkeypatch.setitem(DIALECTS, config.dialect, declared if numbers else dataclasses.replace(
            declared, instant_number_sql=None))
        table = SHARED_FACTS[entity]
        connection.execute(f"DROP TABLE IF EXISTS temp.{table}")
        connection.execute(render_sql(shared_facts_create(entity, config, now, [("completed",)] if entity == "orders"
                                                          else ()), config.dialect))
        columns = [row[1] for row in connection.execute(f"PRAGMA temp.table_info({table})")]
        return connection.execute(f"SELECT *, {', '.join(f'TYPEOF({c})' for c in columns)} FROM temp.{table} "
                                  "ORDER BY customer_id").fetchall()

    for now in (INSTANTS["anchor"], INSTANTS["anchor"] - timedelta(days=5, hours=14)):
        for entity in SHARED_FACTS:
            with_numbers, as_text = facts(entity, now, True), facts(entity, now, False)
            assert len(with_numbers) > 50
            assert with_numbers == as_text, entity


def test_sqlite_order_rows_and_delivery_instances_from_instant_numbers_equal_the_text_ones(tmp_path, monkeypatch):
    """Dialect.instant_number_sql (SQLite) also changes how the whole scans of the orders filter, not what they
    keep: the shared order rows (window from the campaigns' earliest start to ``now``, ranks and the next order's
    time over the ordering by instant and id) and delivery's trigger instances (an order date trigger: created
    by ``now``, the date within a step's window) compare each order's instants as numbers and format only the
    rows kept. On a real SQLite file with the cross-engine history plus orders placed and delivered exactly at
    every instant the statements compare with, a millisecond either side, with sub-millisecond digits that
    JULIANDAY rounds as STRFTIME's %f does not (x.9996 s, x.0004 s, half a millisecond), as 'T'/'Z' text, with an
    offset, as a julian day number, and ties of one instant in several forms, both tables are equal row by row,
    value and storage class, with and without the declaration, at two instants."""
    import dataclasses
    import re
    import sqlite3
    from datetime import datetime

    from engine.dialects import dialect_named
    from engine.sql.due import shared_table_create
    from sqlglot import exp

    url, project = _shop_project("sqlite", tmp_path, monkeypatch)
    config = project.config
    assert dialect_named(config.dialect).instant_number_sql
    campaigns = [c for c in project.campaigns if c.enabled]
    declared = DIALECTS[config.dialect]
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    stamp = re.compile(r"'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})'")

    def declare(numbers: bool) -> None:
        monkeypatch.setitem(DIALECTS, config.dialect, declared if numbers else dataclasses.replace(
            declared, instant_number_sql=None))

    def instances_sql(now) -> str:
        query = due_query(project.campaign("delivery"), config, now, exclude_ledger=False)
        instances = exp.select("*").from_("trigger_instances")
        key = "with_" if "with_" in query.args else "with"
        instances.set(key, query.args[key])
        return render_sql(instances, config.dialect)

    def typed(sql: str) -> list[tuple]:
        rows = connection.execute(sql)
        names = [d[0] for d in rows.description]
        rows.close()
        return connection.execute(f"SELECT *, {', '.join(f'TYPEOF({n})' for n in names)} FROM ({sql}) "
                                  f"ORDER BY {', '.join(map(str, range(1, len(names) + 1)))}").fetchall()

    def forms(bound: datetime) -> list[object]:
        """``bound`` (and a millisecond either side) as text forms a shop may store, and as a julian day"""
        milli = timedelta(milliseconds=1)
        text_ = [(bound + d).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] for d in (-milli, timedelta(0), milli)]
        return [*text_, text_[1] + "4", text_[0] + "6", text_[0] + "5", text_[1] + "0004", text_[0] + "9996",
                bound.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", (bound + timedelta(hours=2)).strftime(
                    "%Y-%m-%d %H:%M:%S") + "+02:00", bound.strftime("%Y-%m-%d"),
                connection.execute("SELECT JULIANDAY(?)", (text_[1],)).fetchone()[0]]

    nows = (INSTANTS["anchor"], INSTANTS["anchor"] - timedelta(days=5, hours=14))
    declare(False)  # every instant the text statements compare with: the rows go there
    bounds = set()
    for now in nows:
        bounds |= set(stamp.findall(instances_sql(now)))
        bounds |= set(stamp.findall(render_sql(shared_table_create("order_rows", config, now, campaigns),
                                               config.dialect)))
    assert len(bounds) >= 8
    order_id = 70_000_000
    for n, bound in enumerate(sorted(bounds)):
        for k, value in enumerate(forms(datetime.fromisoformat(bound))):
            customer = 1 + (n + k) % 4  # several forms of one instant for one customer: ties to rank
            for created_at, delivery_date in ((value, bound), ("2024-12-01 00:00:00", value)):
                order_id += 1
                connection.execute("INSERT INTO orders (order_id, customer_id, created_at, status, total, "
                                   "delivery_date) VALUES (?, ?, ?, 'completed', 1, ?)",
                                   (order_id, customer, created_at, delivery_date))
    connection.commit()

    def tables(now, numbers: bool) -> tuple[list[tuple], list[tuple]]:
        declare(numbers)
        for entity in ("orders", "order_rows"):
            connection.execute(f"DROP TABLE IF EXISTS temp.{shared_table(entity)}")
            connection.execute(render_sql(shared_table_create(entity, config, now, campaigns), config.dialect))
        return typed(f"SELECT * FROM temp.{shared_table('order_rows')}"), typed(instances_sql(now))

    for now in nows:
        (rows, instances), (text_rows, text_instances) = tables(now, True), tables(now, False)
        assert len(rows) > 100 and len(instances) > 100
        assert rows == text_rows
        assert instances == text_instances
