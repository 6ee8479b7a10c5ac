"""PostgreSQL plans a pass's due queries from statistics: what the engine does so that it has them.

On the benchmark's 1M-order shop the plan a minute later took 25.6 s (37x the floor) while DuckDB
took 1.3-5.8 s: the pass's temporary fact tables had no statistics (autovacuum never analyses a
temporary table), the ledger's anti-join was planned as an outer join filtered by ``IS NULL`` and
estimated at one row, and nested loops over every customer followed; with better estimates the
server then JIT-compiled each query for seconds. Each test fails without its part of the fix.
"""
from __future__ import annotations

import re

from datetime import datetime, timezone

import pg
import pytest

from conftest import copy_project
from engine import Reconciler, due_query, load_project, render_sql
from engine.dialects import TEMPORARY_STATISTICS_TARGET
from engine.run import plan
from engine.sql.compile import SHARED_FACTS, shared_facts_used
from engine.sql.prepared import facts_statement
from engine.tools.demo import load_shop
from engine.state.warehouse import Database
from history import shared_history

NOW = datetime(2025, 1, 10, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def reconciler(tmp_path_factory):
    url = pg.server().new_database()
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    project = copy_project(tmp_path_factory.mktemp("pg-planning") / "project")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ENGINE_WAREHOUSE_URL", url)
        reconciler = Reconciler(load_project(project))  # creates the ledger in the shop's database
    yield reconciler
    reconciler.close()


def _values(session, sql: str) -> list:
    return [row[0] for batch in session.stream(sql) for row in batch]


def test_a_pass_analyses_its_temporary_fact_tables(reconciler):
    """``compile.SHARED_FACTS`` tables are ANALYZEd once created: the planner knows their rows and
    columns (pg_class.reltuples is -1 and pg_stats empty for a table never analysed)."""
    config, campaigns = reconciler.config, reconciler.campaigns()
    with reconciler.warehouse.session() as session:
        created: list[str] = []
        plan.create_shared_table(session, config, NOW, campaigns, "orders", created)
        try:
            [rows] = _values(session, "SELECT count(*) FROM pg_temp.engine_order_facts")
            assert rows > 0
            [estimate] = _values(session, f"SELECT reltuples FROM pg_class WHERE oid = 'pg_temp.{SHARED_FACTS['orders']}'::regclass")
            assert estimate == rows
            columns = _values(session, f"SELECT attname FROM pg_stats WHERE tablename = '{SHARED_FACTS['orders']}'")
            assert "customer_id" in columns
        finally:
            for entity in created:
                plan.drop_facts(session, config, entity, created=True)


def test_the_ledger_anti_join_is_planned_as_one(reconciler):
    """The due query's LEFT JOIN on the ledger tests a column of its join condition for NULL, so
    PostgreSQL turns it into an anti-join (no ``IS NULL`` filter left over an outer join)."""
    config = reconciler.config
    campaign = next(c for c in reconciler.campaigns() if c.name == "second-order")
    sql = render_sql(due_query(campaign, config, NOW, exclude_ledger=True), config.dialect)
    assert "engine_ledger" in sql
    explained = "\n".join(row[0] for row in reconciler.warehouse.execute("EXPLAIN " + sql))
    assert "Anti Join" in explained
    assert not re.search(r"\bl\.\w+ IS NULL", explained), explained  # the ledger's alias: l


def test_engine_connections_do_not_jit_compile_their_queries(reconciler):
    """The due queries cost far above jit_above_cost; LLVM compiled them for seconds at each pass."""
    with reconciler.warehouse.session() as session:
        assert _values(session, "SELECT current_setting('jit')") == ["off"]


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


@pytest.mark.parametrize("name", ["inactivity", "delivery"])
def test_a_trigger_reads_only_the_orders_of_its_steps_windows(reconciler, name):
    """The last-activity and order-date triggers keep only the instances a step's window can hold
    (``TriggerKind.within_windows``) before joining or materialising them. Before, the inactivity
    trigger joined every order and login to each customer's last activity (on the 1M-order shop:
    1.2M rows sorted on disk, 3.7 s of a pass a minute later, for 3,218 customers in a window), and
    the delivery trigger materialised every order with a date. Run as a pass runs it (shared fact
    tables, analysed): no scan of the orders outputs more than half of them, and nothing sorts as
    many rows as there are orders."""
    config = reconciler.config
    campaign = next(c for c in reconciler.campaigns() if c.name == name)
    with reconciler.warehouse.session() as session:
        [orders] = _values(session, "SELECT count(*) FROM orders")
        created: list[str] = []
        try:
            for entity in ("orders", "events"):
                plan.create_shared_table(session, config, NOW, reconciler.campaigns(), entity, created)
            sql = render_sql(due_query(campaign, config, NOW, exclude_ledger=True, shared_facts=True), config.dialect)
            # on the session's connection (its temporary tables), not through a cursor: EXPLAIN cannot be declared
            [explained] = session.conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalars().all()
            session.conn.commit()
        finally:
            for entity in created:
                plan.drop_facts(session, config, entity, created=True)
    nodes = list(_nodes(explained[0]["Plan"]))
    scans = [n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Relation Name") == "orders"]
    assert scans and max(scans) < orders / 2, (orders, scans)
    sorts = [n["Actual Rows"] for n in nodes if n["Node Type"] == "Sort"]
    assert all(rows < orders for rows in sorts), (orders, sorts)


def _plan_nodes(session, statements: list[str]) -> list[dict]:
    """The plan nodes of the last of ``statements`` (a CREATE ... AS, not run: EXPLAIN only) after the
    others, in one transaction rolled back (the shop's statistics with it), the shop's tables
    analysed and hash aggregates off: a hash of the customers too large for ``work_mem``, as the
    1M-order shop's was (the test shop's fits in the smallest ``work_mem``)."""
    conn = session.conn
    try:
        conn.exec_driver_sql("ANALYZE orders")
        conn.exec_driver_sql("ANALYZE events")
        conn.exec_driver_sql("SET LOCAL enable_hashagg = off")
        for statement in statements[:-1]:
            conn.exec_driver_sql(statement)
        [explained] = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statements[-1]).scalars().all()
    finally:
        conn.rollback()
    return list(_nodes(explained[0]["Plan"]))


def test_the_per_customer_facts_read_their_source_sequentially(reconciler):
    """A pass's per-customer facts group a whole source by customer. On the 1M-order shop PostgreSQL
    planned the events' as a GroupAggregate over an index scan of ``ix_events_customer_id`` (every
    event fetched from the heap in the index's order: 0.4-0.6 s where a sequential scan and a hash
    aggregate take 0.1-0.3 s); the statements that create them turn plain index scans off for that
    transaction. Here the index scan happens without them too, once a hash is out of the question."""
    config, campaigns = reconciler.config, reconciler.campaigns()
    with reconciler.warehouse.session() as session:
        for entity in SHARED_FACTS:
            statement = facts_statement(entity, config, NOW, campaigns)
            table = config.sources[entity].table

            def scans(statements: list[str]) -> set[str]:
                return {n["Node Type"] for n in _plan_nodes(session, statements) if n.get("Relation Name") == table}

            if entity == "events":  # the large shop's case, without the statements
                assert "Index Scan" in scans([statement.text])
            assert scans(plan.creation_statements(config, entity, statement.text)) == {"Seq Scan"}, entity


def test_the_fact_tables_are_analysed_at_a_small_statistics_target(reconciler):
    """The pass's ANALYZE of its temporary tables samples at ``TEMPORARY_STATISTICS_TARGET`` (10
    histogram buckets, not the default 100): 0.05-0.16 s less per table at 1M orders, the due
    queries' plans the same. The shop's customers have more distinct last orders than 11."""
    config, campaigns = reconciler.config, reconciler.campaigns()
    with reconciler.warehouse.session() as session:
        created: list[str] = []
        plan.create_shared_table(session, config, NOW, campaigns, "orders", created)
        try:
            [distinct] = _values(session, "SELECT count(DISTINCT last_order_at) FROM pg_temp.engine_order_facts")
            [bounds] = _values(session, "SELECT array_length(CAST(histogram_bounds AS TEXT)::TEXT[], 1) FROM pg_stats "
                                        f"WHERE tablename = '{SHARED_FACTS['orders']}' AND attname = 'last_order_at'")
        finally:
            for entity in created:
                plan.drop_facts(session, config, entity, created=True)
    assert distinct > 2 * (TEMPORARY_STATISTICS_TARGET + 1)
    assert bounds <= TEMPORARY_STATISTICS_TARGET + 1, bounds


def _subplans(reconciler, name: str) -> set[str]:
    """The CTEs PostgreSQL evaluates on their own (``CTE <name>`` subplans) in the plan of campaign
    ``name``'s due query as a pass runs it (shared fact tables, analysed; EXPLAIN only)."""
    config = reconciler.config
    campaign = next(c for c in reconciler.campaigns() if c.name == name)
    query = due_query(campaign, config, NOW, exclude_ledger=True, shared_facts=True, settled="count")
    with reconciler.warehouse.session() as session:
        created: list[str] = []
        try:
            for table in shared_facts_used(query):
                plan.create_shared_table(session, config, NOW, reconciler.campaigns(), table, created)
            sql = render_sql(query, config.dialect)
            [explained] = session.conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql).scalars().all()
            session.conn.commit()
        finally:
            for entity in created:
                plan.drop_facts(session, config, entity, created=True)
    return {n["Subplan Name"][len("CTE "):] for n in _nodes(explained[0]["Plan"])
            if n.get("Subplan Name", "").startswith("CTE ")}


@pytest.mark.parametrize("name", ["inactivity", "order-follow-up", "re-engage", "after-registration"])
def test_each_step_reads_the_trigger_instances_and_customers_inlined(reconciler, name):
    """``Dialect.inline_instances``: a due query's trigger instances and customers are NOT MATERIALIZED,
    so each step plans its window on the tables' own statistics. Materialised (read by two steps, or
    the customers by the trigger and the join), each step's window was guessed at 0.5 % of a CTE
    without statistics and the customers written to a temporary file: a minute later at 1M orders
    inactivity's query took 0.57 s of server CPU, inlined 0.14 s. What the trigger computes once
    for all steps (the last activities, the at-risk ranking) stays a CTE of its own."""
    subplans = _subplans(reconciler, name)
    assert not subplans & {"trigger_instances", "src_customers"}, subplans


def test_a_kind_that_scans_a_whole_source_for_its_instances_computes_them_once(reconciler):
    """``TriggerKind.instances_once`` (order_date): delivery's instances are the orders whose date is in
    a step's window, found by scanning every order; inlined, each of its two steps scanned them again
    (0.17 -> 0.20 s a minute later at 1M orders), so they stay one CTE - and the customers too (inlined
    beside the materialised instances, nested loops over their guessed 0.5 %: 0.80 s)."""
    assert {"trigger_instances", "src_customers"} <= _subplans(reconciler, "delivery")
