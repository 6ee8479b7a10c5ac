"""The incremental pass (issue 15 point 5) decides exactly what a full pass decides.

Two reconcilers read the same warehouse (the cross-engine history, with an ``updated_at`` column
added to orders and events): one whose engine.yaml maps ``updated_at`` - it keeps the per-customer
facts in its own tables and refreshes them from the rows changed since its watermark - and one
without, which computes them from the whole history at every pass. Between passes, seeded random
changes happen: new orders and logins, orders that arrive late (``created_at`` days older than the
watermark, ingested now), order status and total updates, orders dated after the pass's instant,
new customers. After every change both reconcilers plan at the same instant, and the due sets
(every campaign's decisions, compared as row sets) must be equal, with the incremental one seen to
read the kept facts. Also: a mapping whose change column does not exist is a validate error at its
line; a past instant, a read-only command and a source without a change column fall back to the
full computation and ``engine plan --explain-cost`` says why.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conftest import copy_project, database_url
from engine import Reconciler, load_project
from engine.cli.main import main
from engine.run import incremental
from engine.run import plan
from engine.sql import compile as compile_
from engine.sql.compile import SHARED_FACTS, QueryBuilder, earliest_start, facts_select, render_sql, ts
from engine.sql.due import counted_statuses, due_query
from engine.sql import kept_facts, prepared
from engine.sql.kept_facts import (
    KEPT_FACTS, KEPT_ROWS, row_readers, kept_replace, kept_rows_replace, kept_rows_select, touched_create,
)
from engine.state.warehouse import Database
from engine.tools.demo import load_shop
from history import ANCHOR, INSTANTS, shared_history

MAPPED = "      updated_at: updated_at\n"


def _map_change_column(project_dir, orders: str = "updated_at", events: str | None = "updated_at") -> None:
    """engine.yaml's orders (and events) sources with ``updated_at`` mapped."""
    path = project_dir / "engine.yaml"
    text = path.read_text()
    text = text.replace("columns: {status: status, total: total,", f"columns: {{updated_at: {orders}, status: status, total: total,")
    if events is not None:
        text = text.replace("columns: {event_id: event_id,", f"columns: {{updated_at: {events}, event_id: event_id,")
    assert text.count("updated_at:") == (2 if events is not None else 1)
    path.write_text(text)


def _add_change_columns(db: Database) -> None:
    type_ = "TEXT" if db.backend == "sqlite" else "TIMESTAMP"
    with db.engine.begin() as conn:
        for table, at in (("orders", "created_at"), ("events", "occurred_at")):
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN updated_at {type_}"))
            conn.execute(sa.text(f"UPDATE {table} SET updated_at = {at}"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, Path]:
    """The history loaded once per file database (copied for each test); PostgreSQL loads it each time."""
    return {}


@pytest.fixture
def shop(backend, tmp_path, monkeypatch, loaded):
    if backend == "postgres":
        url = database_url(backend, tmp_path)
        db = Database(url)
        load_shop(db, shared_history())
        _add_change_columns(db)
    else:
        if backend not in loaded:
            template = database_url(backend, tmp_path.parent, f"template-{backend}")
            built = Database(template)
            load_shop(built, shared_history())
            _add_change_columns(built)
            built.dispose()
            loaded[backend] = Path(template.split(":///", 1)[1])
        url = database_url(backend, tmp_path)
        shutil.copy(loaded[backend], url.split(":///", 1)[1])
        db = Database(url)
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    kept_dir = copy_project(tmp_path / "kept")
    _map_change_column(kept_dir)
    full = Reconciler(load_project(copy_project(tmp_path / "full")))
    kept = Reconciler(load_project(kept_dir))
    yield db, full, kept, kept_dir
    kept.close()
    full.close()
    db.dispose()


def _full_facts(config, entity: str, now, campaigns=()) -> str:
    """compile.facts_select: the facts a pass computes from the whole history (the orders of each
    status set ``campaigns`` rank by counted and the last order's id where the dialect has it, as the
    kept facts hold them)."""
    builder = QueryBuilder(config, now, config.dialect)
    counted = counted_statuses(campaigns) if entity == "orders" else ()
    return render_sql(builder.with_ctes(facts_select(builder, entity, counted, last_order=entity == "orders", kept=True)),
                      config.dialect)


def _rows(db: Database, sql: str) -> list[tuple]:
    with db.engine.connect() as conn:
        return sorted(tuple(str(value) for value in row) for row in conn.execute(sa.text(sql)))


def _due_set(reconciler: Reconciler, now) -> set[tuple]:
    return {(m.campaign, m.step, m.customer_id, m.trigger_key, m.action, m.reason, m.detail, m.variant,
             str(m.due_at)) for batch in reconciler.due(now) for m in batch}


def _stamp(value, backend: str):
    naive = value.replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S") if backend == "sqlite" else naive


def _changes(db: Database, rng: random.Random, now, ids: dict) -> dict[str, int]:
    """Seeded random changes ingested at ``now`` (their ``updated_at``)."""
    b = db.backend
    made = {"new": 0, "late": 0, "status": 0, "future": 0, "login": 0, "customer": 0}
    with db.engine.begin() as conn:
        customers = [r[0] for r in conn.execute(sa.text("SELECT customer_id FROM customers"))]
        orders = [r[0] for r in conn.execute(sa.text("SELECT order_id FROM orders"))]

        def order(customer, created, status="completed"):
            ids["order"] += 1
            conn.execute(sa.text("INSERT INTO orders (order_id, customer_id, created_at, status, total, payment_method, "
                                 "updated_at) VALUES (:o, :c, :at, :s, :t, 'card', :u)"),
                         {"o": ids["order"], "c": customer, "at": _stamp(created, b), "s": status,
                          "t": rng.choice([None, 9.5, 42, 120.25]), "u": _stamp(now, b)})

        for _ in range(rng.randint(3, 12)):  # new orders since the last pass
            order(rng.choice(customers), now - timedelta(minutes=rng.randint(0, 50)))
            made["new"] += 1
        for _ in range(rng.randint(1, 6)):  # late rows: created days before the watermark, ingested now
            order(rng.choice(customers), now - timedelta(days=rng.randint(1, 200), minutes=rng.randint(0, 600)))
            made["late"] += 1
        for order_id in rng.sample(orders, rng.randint(2, 8)):  # status and total updates
            conn.execute(sa.text("UPDATE orders SET status = :s, total = :t, updated_at = :u WHERE order_id = :o"),
                         {"s": rng.choice(["cancelled", "completed", "refunded"]), "t": rng.choice([None, 1, 77.7]),
                          "u": _stamp(now, b), "o": order_id})
            made["status"] += 1
        for _ in range(rng.randint(0, 3)):  # dated after the instant (a pre-order): a fact only once it is reached
            order(rng.choice(customers), now + timedelta(minutes=rng.randint(1, 300)))
            made["future"] += 1
        for _ in range(rng.randint(0, 2)):  # a new customer with a first order
            ids["customer"] += 1
            conn.execute(sa.text("INSERT INTO customers (customer_id, email, created_at, timezone) "
                                 "VALUES (:c, :e, :at, 'Europe/Berlin')"),
                         {"c": ids["customer"], "e": f"new{ids['customer']}@example.com", "at": _stamp(now, b)})
            order(ids["customer"], now - timedelta(minutes=rng.randint(0, 30)))
            made["customer"] += 1
        for _ in range(rng.randint(0, 5)):  # logins (came_back, last activity)
            ids["event"] += 1
            conn.execute(sa.text("INSERT INTO events (event_id, customer_id, type, occurred_at, updated_at) "
                                 "VALUES (:i, :c, 'login', :at, :u)"),
                         {"i": ids["event"], "c": rng.choice(customers),
                          "at": _stamp(now - timedelta(minutes=rng.randint(0, 3000)), b), "u": _stamp(now, b)})
            made["login"] += 1
    return made


def test_the_incremental_pass_plans_what_a_full_pass_plans(shop, backend, monkeypatch):
    db, full, kept, _ = shop
    counted = counted_statuses(kept.project.campaigns)
    assert counted  # a campaign ranks by a status set (second-completed-order): the kept facts count it
    created: list[str] = []  # the shared tables each pass creates (plan.create_shared_table)
    statement = plan.facts_statement
    monkeypatch.setattr(plan, "facts_statement", lambda name, *args: created.append(name) or statement(name, *args))
    rng = random.Random(f"incremental-{backend}")  # seeded: another sequence per backend
    with db.engine.connect() as conn:
        ids = {"order": conn.execute(sa.text("SELECT max(order_id) FROM orders")).scalar() + 1000,
               "customer": conn.execute(sa.text("SELECT max(customer_id) FROM customers")).scalar() + 1000,
               "event": 10_000_000}
    now = INSTANTS["-30d"] + timedelta(minutes=rng.randint(0, 60))
    compared = touched = 0
    for number in range(7):
        if number:
            now += rng.choice([timedelta(minutes=1), timedelta(minutes=17), timedelta(hours=3), timedelta(days=2)])
            _changes(db, rng, now, ids)
        expected = _due_set(full, now)
        assert {"orders", "order_rows"} <= set(created)  # without a change column: the GROUP BY, then the rows
        created.clear()
        got = _due_set(kept, now)
        # with one: the pass runs no GROUP BY of the orders and ranks no order rows: both are kept
        assert not set(created) & {"orders", "order_rows"}, created
        created.clear()
        assert [c.mode for c in kept.facts_costs] == ["incremental", "incremental"], kept.facts_costs
        assert [c.mode for c in full.facts_costs] == ["full", "full"]
        assert got == expected, (number, sorted(got ^ expected)[:10])
        for entity, known in (("orders", "order_count"), ("events", "last_event_at")):  # the kept facts themselves
            kept_rows = [row[:-1] for row in _rows(db, f"SELECT * FROM {KEPT_FACTS[entity]} WHERE {known} IS NOT NULL")]
            assert kept_rows == _rows(db, _full_facts(kept.config, entity, now, kept.project.campaigns)), (number, entity)
        # the kept order rows of the window: those a computation at this instant gives (over the facts just compared)
        start = ts(earliest_start([s for c in row_readers(kept.project.campaigns) for s in c.steps], now,
                                  kept.config.stale_horizon), kept.config.dialect).sql(kept.config.dialect)
        fresh = render_sql(kept_rows_select(kept.config, now, kept.project.campaigns), kept.config.dialect)
        assert _rows(db, f"SELECT * FROM {KEPT_ROWS['order_rows']} WHERE created_at >= {start}") == \
            _rows(db, f"SELECT * FROM ({fresh}) fresh WHERE created_at >= {start}"), number
        compared += len(expected)
        touched += number and kept.facts_costs[0].mark.customers_touched
    assert compared > 100  # the due sets are not empty
    assert touched > 0  # the later passes recomputed customers from the delta, not the whole history
    # the refresh's statements, rendered once with stand-in instants, are the text a rendering at the pass's gives
    config, since = kept.config, now - timedelta(minutes=10, microseconds=1500)
    for entity in KEPT_FACTS:
        for _ in range(2):  # built, then from the cache
            assert incremental._statements(config, "touched", entity, (), since, now,
                                           lambda s, n: [touched_create(config, entity, s, n)]) == \
                [render_sql(touched_create(config, entity, since, now), config.dialect)]
            assert incremental._statements(config, "replace", entity, counted, None, now,
                                           lambda _s, n: kept_replace(config, entity, n, counted)) == \
                [render_sql(statement, config.dialect) for statement in kept_replace(config, entity, now, counted)]


def test_a_late_row_the_watermark_reads_changes_the_facts_and_the_plan(shop):
    """A row arriving late (created long before the watermark) with a fresh ``updated_at`` is read;
    with ``updated_at: created_at`` (the creation time as change column) it is not, until a rebuild."""
    db, full, kept, _ = shop
    now = INSTANTS["anchor"]
    _due_set(kept, now)  # builds the kept facts
    with db.engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT order_count FROM {KEPT_FACTS['orders']} WHERE customer_id = 90003")).scalar()
    later = now + timedelta(minutes=5)
    _changes(db, random.Random(5), later, {"order": 5_000_000, "customer": 6_000_000, "event": 7_000_000})
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders (order_id, customer_id, created_at, status, total, updated_at) "
                             "VALUES (8000000, 90003, :at, 'completed', 5, :u)"),
                     {"at": _stamp(now - timedelta(days=90), db.backend), "u": _stamp(later, db.backend)})
    assert _due_set(kept, later) == _due_set(full, later)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT order_count FROM {KEPT_FACTS['orders']} "
                                    "WHERE customer_id = 90003")).scalar() == count + 1


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_past_instants_read_only_commands_and_unmapped_sources_compute_whole(shop, tmp_path):
    db, full, kept, kept_dir = shop
    now = INSTANTS["+1h"]
    assert _due_set(kept, now) == _due_set(full, now)
    earlier = INSTANTS["anchor"]
    assert _due_set(kept, earlier) == _due_set(full, earlier)  # --as-of before the kept facts: computed whole
    assert [c.mode for c in kept.facts_costs] == ["full", "full"]
    assert "before the kept facts" in kept.facts_costs[0].reason
    reader = Reconciler(load_project(kept_dir), writes=False)
    try:
        costs = incremental.costs(reader.config, reader.ledger, now, writes=False, shares=True,
                                  campaigns=reader.project.campaigns)
        assert [c.mode for c in costs] == ["full", "full"] and "only reads" in costs[0].reason
    finally:
        reader.close()
    costs = incremental.costs(full.config, full.ledger, now, writes=True, shares=True, campaigns=full.project.campaigns)
    assert "no change column" in costs[0].reason and "sources.orders.columns.updated_at" in costs[0].reason


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_plan_explain_cost_names_each_sources_mode(shop, monkeypatch):
    db, full, kept, kept_dir = shop
    _due_set(kept, INSTANTS["anchor"])
    result = CliRunner().invoke(main, ["--project", str(kept_dir), "plan", "--explain-cost",
                                      "--as-of", INSTANTS["+1h"].isoformat()])
    assert result.exit_code == 0, result.output
    assert re.search(r"orders: incremental \(change column updated_at = updated_at, watermark 2025-01-10 00:00:00 UTC, "
                     r"last refresh read [\d,]+ row\(s\)", result.output), result.output
    assert "events: incremental" in result.output
    assert "checkouts: no per-customer facts" in result.output


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_creation_time_as_change_column_is_accepted_with_its_caveat(shop, tmp_path):
    db, full, kept, _ = shop
    project = copy_project(tmp_path / "created")
    _map_change_column(project, orders="created_at", events=None)
    reconciler = Reconciler(load_project(project))
    try:
        costs = incremental.costs(reconciler.config, reconciler.ledger, INSTANTS["anchor"], writes=True, shares=True,
                                  campaigns=reconciler.project.campaigns)
        assert costs[0].mode == "incremental" and "status updates" in costs[0].reason
        assert costs[1].mode == "full"
    finally:
        reconciler.close()


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_a_change_column_that_does_not_exist_is_a_validate_error_at_its_line(shop, tmp_path):
    db, full, kept, _ = shop
    project = copy_project(tmp_path / "missing")
    _map_change_column(project, orders="modified_at", events=None)
    result = CliRunner().invoke(main, ["--project", str(project), "validate", "--check-warehouse"])
    assert result.exit_code != 0
    line = next(n for n, text in enumerate((project / "engine.yaml").read_text().splitlines(), 1) if "modified_at" in text)
    assert f"engine.yaml:{line}" in result.output and "modified_at" in result.output, result.output


def test_an_order_dated_after_the_instant_counts_once_the_instant_reaches_it(shop):
    """A row dated in the pass's future (a pre-order, a clock ahead) is no fact yet; a later pass
    whose instant reached it counts it although no row changed since (``pending_at``)."""
    db, full, kept, _ = shop
    now = INSTANTS["anchor"]
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders (order_id, customer_id, created_at, status, total, updated_at) "
                             "VALUES (8000001, 90001, :at, 'completed', 5, :u)"),
                     {"at": _stamp(now + timedelta(hours=2), db.backend), "u": _stamp(now - timedelta(hours=1), db.backend)})
    for instant in (now, now + timedelta(hours=1), now + timedelta(hours=3)):
        assert _due_set(kept, instant) == _due_set(full, instant)
        assert _rows(db, f"SELECT order_count FROM {KEPT_FACTS['orders']} WHERE customer_id = 90001") == [
            ("None",) if instant < now + timedelta(hours=2) else ("1",)]
        assert kept.facts_costs[0].mode == "incremental"
    assert kept.facts_costs[0].mark.watermark == now  # the row was not read again: the customer was pending


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_ledger_from_before_the_watermarks_is_upgraded_and_keeps_them(backend, tmp_path):
    """A ledger at revision 0005 has no engine_watermarks: the start's upgrade (migration 0006) adds it."""
    from datetime import datetime, timezone

    from engine.state import migrations
    from engine.state.ledger import Ledger
    from engine.state.watermarks import Watermark

    db = Database(database_url(backend, tmp_path, "ledger"))
    migrations.ensure(db)
    with db.engine.begin() as conn:  # what 0005 left: no watermark table (nor the later settle memory), version 0005
        conn.execute(sa.text("DROP TABLE engine_watermarks"))
        conn.execute(sa.text("DROP TABLE engine_settled"))
        conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0005'"))
    assert migrations.status(db).pending[0] == "0006"
    ledger = Ledger(db)
    assert ledger.watermark("orders") is None  # read-only commands do not upgrade: no watermark yet
    ledger.ensure_schema()
    assert migrations.status(db).current == (migrations.HEAD,)
    assert ledger.watermark("orders") is None
    at = datetime(2025, 1, 10, 9, 30, 15, tzinfo=timezone.utc)
    mark = Watermark("orders", at - timedelta(minutes=3), at, at - timedelta(hours=2), "f" * 64, 12, 3)
    ledger.save_watermark(mark)
    ledger.save_watermark(mark)  # an upsert: still one row
    assert ledger.watermark("orders") == mark
    db.dispose()


@pytest.mark.parametrize("backend", ["duckdb"])
def test_a_change_column_that_is_not_an_instant_is_a_validate_error(shop, tmp_path):
    db, full, kept, _ = shop
    project = copy_project(tmp_path / "text")
    _map_change_column(project, orders="status", events=None)
    result = CliRunner().invoke(main, ["--project", str(project), "validate", "--check-warehouse"])
    assert result.exit_code != 0
    assert "updated_at" in result.output and "timestamp" in result.output, result.output


# PostgreSQL: its pass's order facts carry the last order id too; DuckDB: only its kept ones (Dialect.kept_last_by_sql)
@pytest.mark.parametrize("backend", ["postgres", "duckdb"])
def test_kept_order_facts_from_before_the_last_order_id_are_rebuilt_with_it(shop, monkeypatch):
    """A deployment's kept order facts built by an engine without the last order id (the at_risk
    trigger's key, compile.last_order_in_facts(kept=True)) are rebuilt whole by the next pass, which then
    reads the key from them - re-engage's members join no orders - and plans what a full pass plans (which
    on DuckDB finds the key by that join: the 90011 tie of the history included): the kept table's shape is
    part of its fingerprint."""
    db, full, kept, kept_dir = shop
    now = INSTANTS["anchor"]

    def columns() -> set[str]:
        with db.engine.connect() as conn:  # by a query: duckdb_engine's inspector reads PostgreSQL's catalog
            return set(conn.execute(sa.text(f"SELECT * FROM {KEPT_FACTS['orders']} LIMIT 0")).keys())

    with monkeypatch.context() as before:
        before.setattr(compile_, "LAST_ORDER_IN_FACTS", False)
        assert _due_set(kept, now) == _due_set(full, now)
    assert "last_order_id" not in columns()
    upgraded = Reconciler(load_project(kept_dir))  # a new process: nothing compiled yet
    try:
        later = now + timedelta(minutes=1)
        got = _due_set(upgraded, later)
        assert [c.mode for c in upgraded.facts_costs] == ["incremental", "incremental"]
        assert upgraded.facts_costs[0].reason.startswith("built whole"), upgraded.facts_costs[0]
        assert "last_order_id" in columns()
        assert got == _due_set(full, later)
        assert any(row[0] == "re-engage" for row in got)
        (re_engage,) = [c for c in upgraded.project.campaigns if c.name == "re-engage"]
        sql = render_sql(due_query(re_engage, upgraded.config, later, exclude_ledger=True, shared_facts=True,
                                   state=incremental.kept_relations(["orders"])), upgraded.config.dialect)
        assert f"l.{compile_.LAST_ORDER_ID}" in sql and "src_orders" not in sql, sql
    finally:
        upgraded.close()


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_the_kept_order_rows_replace_is_compiled_once(shop, monkeypatch):
    """A refresh writes the touched customers' kept order rows with a DELETE and INSERT compiled once per
    project version (sql.prepared), not built and rendered at every pass; the passes plan what a full pass
    plans, and the compiled texts are those a rendering at the pass's instant gives."""
    db, full, kept, _ = shop
    now = INSTANTS["anchor"]
    _due_set(kept, now)  # builds the kept tables
    _due_set(kept, now + timedelta(minutes=1))  # the first refresh compiles
    _due_set(full, now)  # its project version's rows fingerprint (incremental.costs) made
    built = []
    select = kept_facts.kept_rows_select
    monkeypatch.setattr(kept_facts, "kept_rows_select", lambda *args, **kwargs: built.append(args) or select(*args, **kwargs))
    for minutes in (2, 3):
        later = now + timedelta(minutes=minutes)
        _changes(db, random.Random(minutes), later, {"order": 5_000_000 + minutes * 1000,
                                                     "customer": 6_000_000 + minutes * 1000, "event": 7_000_000 + minutes * 1000})
        assert _due_set(kept, later) == _due_set(full, later)
        assert kept.facts_costs[0].mark.customers_touched > 0  # the rows were replaced
    assert built == []
    for at in (later, later + timedelta(days=3, hours=5, microseconds=1500)):
        assert prepared.kept_rows_replace_statements(kept.config, at, kept.project.campaigns) == \
            kept_rows_replace(kept.config, at, kept.project.campaigns)
    assert len(kept_rows_replace(kept.config, later, kept.project.campaigns)) == 2


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_refresh_reads_and_writes_the_watermarks_once(shop, monkeypatch):
    """A pass keeping both sources' facts reads their watermarks in one statement and writes both in one
    transaction, after the kept facts; what it wrote is what the next pass reads."""
    db, full, kept, _ = shop
    now = INSTANTS["anchor"]
    _due_set(kept, now)  # builds both kept tables
    statements: list[tuple[int, str]] = []  # (the transaction it ran in, its SQL) on the ledger's engine
    begun = [0]

    def executed(_conn, _cursor, sql, *_args):
        statements.append((begun[0], sql))

    def began(_conn):
        begun[0] += 1

    ledger_engine = kept.ledger.db.engine
    sa.event.listen(ledger_engine, "before_cursor_execute", executed)
    sa.event.listen(ledger_engine, "begin", began)
    try:
        later = now + timedelta(minutes=1)
        got = _due_set(kept, later)
    finally:
        sa.event.remove(ledger_engine, "before_cursor_execute", executed)
        sa.event.remove(ledger_engine, "begin", began)
    marked = [(begin, sql.lstrip().split()[0].upper()) for begin, sql in statements if "engine_watermarks" in sql]
    assert [verb for _, verb in marked] == ["SELECT", "UPDATE", "UPDATE"], marked
    assert marked[1][0] == marked[2][0]  # one transaction
    assert got == _due_set(full, later)
    marks = kept.ledger.watermarks(["orders", "events"])
    assert [c.mark for c in kept.facts_costs] == [marks["orders"], marks["events"]]
    assert all(mark.facts_at == later for mark in marks.values())


@pytest.mark.parametrize("backend", ["duckdb"])  # no dialect in it: one backend is enough
def test_kept_order_rows_dropped_by_hand_are_built_again(shop):
    """A kept order rows table that is gone (dropped by hand) is built again, with the facts, by the next
    pass - even one that touches no customer - which then plans what a full pass plans."""
    db, full, kept, _ = shop
    now = INSTANTS["anchor"]
    assert _due_set(kept, now) == _due_set(full, now)
    db.execute(f"DROP TABLE {KEPT_ROWS['order_rows']}")
    later = now + timedelta(minutes=1)
    assert _due_set(kept, later) == _due_set(full, later)
    assert kept.facts_costs[0].reason.startswith("built whole"), kept.facts_costs[0]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_scan_of_the_change_column_converts_each_row_once_on_sqlite(shop):
    """The touched customers' statement reads the whole source's change column (Dialect.unflattened_scans):
    SQLite converts each order's ``updated_at`` once (its own STRFTIME, counted), not again in the WHERE and
    the MAX; and the GROUP BY no longer reads the orders through the customer id's index."""
    import sqlite3
    from collections import Counter

    db, _full, kept, _dir = shop
    connection = sqlite3.connect(db.url.split(":///", 1)[1])
    native, calls = sqlite3.connect(":memory:"), Counter()

    def strftime(form, value):  # SQLite's own, counted (a function of the connection overrides the built-in)
        calls[form] += 1
        return native.execute("SELECT STRFTIME(?, ?)", (form, value)).fetchone()[0]

    connection.create_function("STRFTIME", 2, strftime, deterministic=True)
    orders = connection.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
    connection.execute(f"CREATE TABLE {KEPT_FACTS['orders']} (customer_id INTEGER, pending_at TEXT)")
    connection.execute(f"CREATE TABLE {KEPT_ROWS['order_rows']} (customer_id INTEGER)")
    since = INSTANTS["anchor"] - timedelta(days=3650)  # every order changed since
    statement = touched_create(kept.config, "orders", since, INSTANTS["anchor"], rows=True)
    connection.execute(render_sql(statement, kept.config.dialect))
    assert connection.execute("SELECT SUM(rows_read) FROM temp.engine_touched_orders").fetchone()[0] == orders
    assert sum(calls.values()) == orders


def test_the_touched_customers_name_the_kept_order_rows_only_when_they_are_kept():
    """``touched_create(rows=False)`` (the events; orders no campaign ranks) does not name the kept order rows'
    table: a statement naming a table that is not there fails, and the refresh then builds the facts whole at
    every pass. (The source's name once rebound the ``rows`` flag, so every touched statement named it.)"""
    from conftest import REPO

    config = load_project(REPO).config
    for entity in ("orders", "events"):
        alone = render_sql(touched_create(config, entity, None, INSTANTS["anchor"]), config.dialect)
        assert KEPT_ROWS["order_rows"] not in alone, entity
    kept = render_sql(touched_create(config, "orders", None, INSTANTS["anchor"], rows=True), config.dialect)
    assert KEPT_ROWS["order_rows"] in kept
