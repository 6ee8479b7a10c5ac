"""Streamed reads run on the driver's own cursor (engine.state.driver_rows: psycopg 3's server-side cursor on
PostgreSQL, the connection's result on DuckDB), not through SQLAlchemy's result layer (issue 15.4: the rows
that reach Python, fetched for less). The values must be exactly those of SQLAlchemy's cursor: the same
driver hands on the same values, and these tests hold it to that - every column type a shop may have
(on PostgreSQL enum, citext, domains, numeric, real, timestamptz in a session time zone that is not UTC,
json, arrays, uuid, money, xml; on DuckDB enum, decimal, lists, structs, maps, hugeint; NULLs), the due
rows of a plan on the demo shop (both databases) and on a PostgreSQL shop whose customers and orders have
such columns, and the ledger a whole pass writes. Each test also checks that the driver's cursor was the
one used (``Database.driver_streamed``), so that a fast path silently not taken fails here instead of
passing as "identical".
"""
from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta

import pg
import pytest
import sqlalchemy as sa

from conftest import copy_project, database_url
from engine import Reconciler, load_project
from engine.errors import WarehouseError
from engine.state.driver_rows import Row, Rows
from engine.state.warehouse import Database
from engine.tools.demo import load_shop
from history import INSTANTS, shared_history

TYPES = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE order_state AS ENUM ('paid', 'open', 'refunded');
CREATE DOMAIN email_address AS citext CHECK (VALUE LIKE '%@%');
CREATE DOMAIN state_domain AS order_state;
CREATE DOMAIN short_text AS varchar(20);
CREATE TABLE typed (
    id int, state order_state, email citext, address email_address, state_d state_domain, city short_text,
    total numeric(12, 2), exact numeric, ratio real, score float8, at timestamptz, local_at timestamp, day date,
    clock time, span interval, doc json, docb jsonb, tags text[], counts int[], states order_state[], uid uuid,
    raw bytea, code char(5), price money, page xml, flag bool, big bigint, small smallint
);
INSERT INTO typed VALUES
  (1, 'paid', 'MiXed@Case', 'A@b.de', 'open', 'Köln', 12.50, 'NaN', 1.1, 1.1, '2024-03-31 01:30:00+00',
   '2024-02-29 23:59:59.999999', '2024-02-29', '10:00:01.5', '1 mon 2 days 03:00:00', '{"a": [1, 2.5], "b": null}',
   '{"z": {"y": "ü"}}', ARRAY['x', NULL, 'y'], ARRAY[1, 2], ARRAY['paid', 'open']::order_state[],
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', 'ab', 12.3, '<a>b</a>', true, 9000000000, -3),
  (2, 'refunded', '', 'x@y', NULL, '', -0.01, 1e-20, -0.0, 1e300, '1901-01-01 00:00:00+00', '9999-12-31 23:59:59',
   '0001-01-01', '23:59:59.999999', '-1 years', '[]', 'null', '{}', NULL, '{}', NULL, '', NULL, -1, NULL, false, NULL, NULL),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


def described(batches: list[list]) -> list:
    """Every value with its exact type and repr (Decimal('NaN') != itself), tz-aware instants with their zone."""
    return [[(type(v), repr(v), getattr(v, "tzinfo", None)) for v in row] for batch in batches for row in batch]


def both_ways(database: Database, sql: str, parameters: dict | None = None, batch_size: int = 2):
    """The batches of ``sql`` on the driver's cursor and on SQLAlchemy's (the same session each)."""
    streamed = database.driver_streamed
    with database.session() as session:
        fast = list(session.stream(sql, batch_size, parameters))
    assert database.driver_streamed == streamed + 1, "the driver's cursor was not used"
    database.driver_stream = False  # SQLAlchemy's cursor, as before
    try:
        with database.session() as session:
            slow = list(session.stream(sql, batch_size, parameters))
    finally:
        database.driver_stream = True
    return fast, slow


DUCKDB_TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE typed (id INT, state mood, total DECIMAL(12, 2), exact DECIMAL(38, 10), ratio REAL, score DOUBLE,
  "at" TIMESTAMPTZ, local_at TIMESTAMP, day DATE, span INTERVAL, tags VARCHAR[], pair STRUCT(a INT, b VARCHAR),
  pairs MAP(VARCHAR, INT), uid UUID, raw BLOB, huge HUGEINT, flag BOOLEAN, city VARCHAR);
INSERT INTO typed VALUES
  (1, 'ok', 12.50, 1e-10, 1.1, 1.1, '2024-03-31 01:30:00+00', '2024-02-29 23:59:59.999999', '2024-02-29',
   INTERVAL 1 MONTH, ['a', NULL], {'a': 1, 'b': 'x'}, MAP {'k': 1}, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '\\xAA'::BLOB, 170141183460469231731687303715884105727, true, 'Köln'),
  (2, 'sad', -0.01, 0, -0.0, 1e300, '1901-01-01 00:00:00+00', '9999-12-31 23:59:59', '0001-01-01', INTERVAL '-1 year',
   [], {'a': NULL, 'b': ''}, MAP {}, NULL, ''::BLOB, -1, false, ''),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


@pytest.fixture(scope="module", params=["postgres", "duckdb"])
def typed(request, tmp_path_factory) -> Database:
    if request.param == "postgres":
        # a session time zone other than UTC: timestamptz values come back in it, on both cursors
        db = Database(pg.server().new_database() + "?options=-c%20TimeZone%3DAmerica/Sao_Paulo")
        statements = TYPES.replace("%", "%%")
    else:
        db = Database(f"duckdb:///{tmp_path_factory.mktemp('typed') / 'typed.duckdb'}")
        statements = DUCKDB_TYPES
    with db.engine.begin() as conn:
        conn.exec_driver_sql(statements)
    yield db
    db.dispose()


def test_every_column_type_comes_back_as_sqlalchemys_cursor_gives_it(typed):
    assert typed.driver_stream
    fast, slow = both_ways(typed, "SELECT * FROM typed ORDER BY id")
    assert [len(b) for b in fast] == [len(b) for b in slow] == [2, 1]  # the batches too
    assert described(fast) == described(slow)
    row = fast[0][0]
    assert isinstance(row, Row)
    assert row._fields == tuple(slow[0][0]._fields)
    row_2, slow_2 = fast[0][1], slow[0][1]  # the second row: no NaN (never equal to itself)
    assert row_2._mapping == dict(slow_2._mapping) and row_2._asdict() == dict(slow_2._mapping)
    assert list(row._mapping) == list(slow[0][0]._mapping)
    assert (row.id, row.city) == (1, "Köln")
    with pytest.raises(AttributeError):
        row.no_such_column  # noqa: B018


def test_positional_batches_are_the_drivers_plain_tuples_with_the_column_names_once(typed):
    """How the plan's due rows come (``Session.stream(positional=True)``: read by position only): the same
    values in the same batches as the ``Row`` rows, each row the driver's plain tuple (no object made per row,
    and one the garbage collector stops tracking), the column names once on the batch (``Rows.fields``); on
    SQLAlchemy's cursor its rows, in the same kind of batch."""
    sql = "SELECT * FROM typed ORDER BY id"
    with typed.session() as session:
        rows = list(session.stream(sql, 2))
        streamed = typed.driver_streamed
        plain = list(session.stream(sql, 2, positional=True))
    assert typed.driver_streamed == streamed + 1, "the driver's cursor was not used"
    assert [len(b) for b in plain] == [2, 1] and described(plain) == described(rows)
    assert all(type(row) is tuple for batch in plain for row in batch)
    assert all(type(batch) is Rows and batch.fields == rows[0][0]._fields for batch in plain)
    typed.driver_stream = False
    try:
        with typed.session() as session:
            slow = list(session.stream(sql, 2, positional=True))
    finally:
        typed.driver_stream = True
    assert [len(b) for b in slow] == [2, 1] and described(slow) == described(rows)
    assert all(type(batch) is Rows and batch.fields == plain[0].fields for batch in slow)


def test_postgres_types_without_a_python_type_of_their_own_come_back_as_text(typed):
    if typed.backend != "postgresql":
        pytest.skip("PostgreSQL's types")
    fast, _ = both_ways(typed, "SELECT * FROM typed ORDER BY id")
    row = fast[0][0]
    assert (row.state, row.email, row.address, row.state_d, row.city) == ("paid", "MiXed@Case", "A@b.de", "open", "Köln")
    assert (row.states, row.price, row.page) == ("{paid,open}", "$12.30", "<a>b</a>")
    assert str(row.at.tzinfo) == "America/Sao_Paulo" and row.at.utcoffset() == timedelta(hours=-3)
    assert str(row.ratio) == "1.1"  # real: its text, not the binary format's 1.100000023841858


def test_parameters_and_percent_signs_reach_the_server_as_through_sqlalchemy(typed):
    if typed.backend != "postgresql":  # DuckDB's reader takes no parameters: SQLAlchemy's cursor runs them
        streamed = typed.driver_streamed
        with typed.session() as session:
            assert [tuple(r) for b in session.stream("SELECT :n + 1 AS n", 10, {"n": 41}) for r in b] == [(42,)]
        assert typed.driver_streamed == streamed, "a statement with parameters on DuckDB's reader"
        assert [tuple(r) for b in typed.stream("SELECT 41 + 1 AS n") for r in b] == [(42,)]
        assert typed.driver_streamed == streamed + 1, "a statement without them on SQLAlchemy's cursor"
        return
    sql = ("SELECT id, city, :label AS label, CAST(:n AS int) + 1 AS n, email LIKE '%@%' AS has_at, "
           "to_char(day, 'YYYY-%MM') AS month FROM typed WHERE id = ANY(:ids) OR state = :state ORDER BY id")
    parameters = {"label": "50% off", "n": 41, "ids": [2, 3], "state": "paid"}
    fast, slow = both_ways(typed, sql, parameters, batch_size=1000)
    assert described(fast) == described(slow)
    assert [tuple(r) for b in fast for r in b][0] == (1, "Köln", "50% off", 42, True, "2024-%02")


def test_a_failed_or_abandoned_read_leaves_the_session_usable(typed):
    with typed.session() as session:
        with pytest.raises(WarehouseError) as failed:
            list(session.stream("SELECT no_such_column FROM typed"))
        assert failed.value.reason == "query" and "no_such_column" in str(failed.value)
        streamed = typed.driver_streamed
        rows = session.stream("SELECT i FROM (VALUES (1), (2), (3), (4), (5)) AS t(i) ORDER BY i", batch_size=3)
        assert [tuple(r) for r in next(rows)] == [(1,), (2,), (3,)]
        assert typed.driver_streamed == streamed + 1
        rows.close()  # the reader stops early: the cursor is closed, the transaction ended
        assert [tuple(r) for b in session.stream("SELECT count(*) FROM typed") for r in b] == [(3,)]
    assert typed.take_failures() == {"query": 1}


def test_a_statement_timeout_ends_a_driver_read_as_a_timeout(typed):
    db = Database(typed.url, statement_timeout=0.2)
    slow = ("SELECT pg_sleep(5)" if typed.backend == "postgresql"
            else "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b")
    try:
        assert db.driver_stream
        with pytest.raises(WarehouseError) as stopped:
            list(db.stream(slow))
        assert stopped.value.reason == "timeout"
        assert [tuple(r) for b in db.stream("SELECT 1") for r in b] == [(1,)] and db.driver_streamed == 2
    finally:
        db.dispose()


def test_a_lost_connection_is_unreachable_and_not_handed_out_again(typed):
    if typed.backend != "postgresql":
        pytest.skip("a server connection")
    db = Database(typed.url)
    try:
        with pytest.raises(WarehouseError) as lost:
            list(db.stream("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert lost.value.reason == "unreachable"
        assert [tuple(r) for b in db.stream("SELECT 1") for r in b] == [(1,)]  # a new connection
        assert db.driver_streamed == 2
    finally:
        db.dispose()


def plan_digest(reconciler: Reconciler, now) -> tuple[int, str]:
    """How many messages a plan gives, and a digest of each one's decision and customer values with their types."""
    messages = []
    for batch in reconciler.due(now):
        for m in batch:
            customer = sorted((k, type(v).__name__, repr(v)) for k, v in m.customer.items())
            messages.append(repr((m.key, m.action, m.reason, m.channel, m.variant, m.due_at, customer)))
    return len(messages), hashlib.sha256("\n".join(sorted(messages)).encode()).hexdigest()


def plans_both_ways(project, url: str, monkeypatch) -> None:
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    reconciler = Reconciler(load_project(project))
    try:
        warehouse = reconciler.warehouse
        assert warehouse.driver_stream
        for now in INSTANTS.values():
            streamed = warehouse.driver_streamed
            fast = plan_digest(reconciler, now)
            assert warehouse.driver_streamed > streamed, "the plan's due rows did not come through the driver's cursor"
            warehouse.driver_stream = False
            try:
                slow = plan_digest(reconciler, now)
            finally:
                warehouse.driver_stream = True
            assert fast == slow, now
        assert fast[0] > 0
    finally:
        reconciler.close()


@pytest.mark.parametrize("backend", ["postgres", "duckdb"])
def test_a_plans_due_rows_on_the_demo_shop_are_the_same(backend, tmp_path, monkeypatch):
    url = database_url(backend, tmp_path)
    db = Database(url)
    load_shop(db, shared_history())
    db.dispose()
    plans_both_ways(copy_project(tmp_path / "project"), url, monkeypatch)


#: the demo shop's customers and orders with the column types a PostgreSQL shop may have, and more
#: attributes mapped (json, jsonb, an array, a uuid, numeric, real)
RETYPE = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE order_status AS ENUM ('completed', 'cancelled', 'pending', 'refunded', 'returned', 'processing', 'shipped');
CREATE TYPE customer_kind AS ENUM ('female', 'male', 'company');
CREATE DOMAIN email_address AS citext;
CREATE DOMAIN group_name AS varchar(40);
ALTER TABLE orders ALTER COLUMN status TYPE order_status USING status::order_status,
  ALTER COLUMN created_at TYPE timestamptz USING created_at AT TIME ZONE 'UTC';
ALTER TABLE customers ALTER COLUMN email TYPE email_address, ALTER COLUMN customer_type TYPE customer_kind
  USING customer_type::customer_kind, ALTER COLUMN customer_group TYPE group_name,
  ALTER COLUMN affiliate_program TYPE citext, ALTER COLUMN created_at TYPE timestamptz USING created_at AT TIME ZONE 'UTC',
  ADD COLUMN prefs jsonb, ADD COLUMN profile json, ADD COLUMN tags text[], ADD COLUMN uid uuid,
  ADD COLUMN lifetime_value numeric(12, 2), ADD COLUMN rating real;
UPDATE customers SET prefs = jsonb_build_object('news', customer_id % 2 = 0), profile = json_build_object('id', customer_id),
  tags = ARRAY['t' || (customer_id % 3)], uid = md5(customer_id::text)::uuid, lifetime_value = customer_id * 1.25,
  rating = (customer_id % 5) / 10.0 WHERE customer_id % 7 <> 0;
"""
EXTRA_ATTRIBUTES = ("prefs", "profile", "tags", "uid", "lifetime_value", "rating")


def test_a_plans_due_rows_on_a_shop_of_other_column_types_are_the_same(tmp_path, monkeypatch):
    url = pg.server().new_database()
    db = Database(url)
    load_shop(db, shared_history())
    with db.engine.begin() as conn:
        statuses = {s for (s,) in conn.execute(sa.text("SELECT DISTINCT status FROM orders WHERE status IS NOT NULL"))}
        kinds = {k for (k,) in conn.execute(sa.text("SELECT DISTINCT customer_type FROM customers WHERE customer_type IS NOT NULL"))}
        assert statuses <= {"completed", "cancelled", "pending", "refunded", "returned", "processing", "shipped"}
        assert kinds <= {"female", "male", "company"}
        conn.exec_driver_sql(RETYPE.replace("%", "%%"))
    db.dispose()
    project = copy_project(tmp_path / "project")
    yaml = project / "engine.yaml"
    mapped = "      customer_group: customer_group\n"
    text = yaml.read_text()
    assert mapped in text
    yaml.write_text(text.replace(mapped, mapped + "".join(f"      {a}: {a}\n" for a in EXTRA_ATTRIBUTES), 1))
    plans_both_ways(project, url, monkeypatch)


def ledger_dump(url: str) -> bytes:
    """Every row of every engine table, ordered, as text: what a pass wrote."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            tables = [t for (t,) in conn.execute(sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_name LIKE 'engine%' ORDER BY table_name"))]
            lines = []
            for table in tables:
                lines.append(f"-- {table}")
                lines += [repr(tuple(row)) for row in conn.execute(sa.text(f"SELECT * FROM {table} AS t ORDER BY CAST(t AS text)"))]
    finally:
        db.dispose()
    return "\n".join(lines).encode()


@pytest.mark.parametrize("backend", ["postgres", "duckdb"])
def test_the_ledger_after_a_pass_is_byte_identical(backend, tmp_path, monkeypatch):
    dumps, streamed = [], []
    now = INSTANTS["anchor"]
    for way in ("driver", "sqlalchemy"):
        url = database_url(backend, tmp_path / way)
        db = Database(url)
        load_shop(db, shared_history())
        db.dispose()
        monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
        project = tmp_path / "project"  # the same path both times: the ledger names the outbox's files
        shutil.rmtree(project, ignore_errors=True)
        reconciler = Reconciler(load_project(copy_project(project)))
        try:
            assert reconciler.warehouse.driver_stream
            reconciler.warehouse.driver_stream = way == "driver"
            report = reconciler.run_once(now)
            assert sum(report.counts.values()) > 0
            streamed.append(reconciler.warehouse.driver_streamed)
        finally:
            reconciler.close()
        dumps.append(ledger_dump(url))
    assert streamed[0] > 0 and streamed[1] == 0
    assert b"engine_ledger" in dumps[0] and dumps[0].count(b"\n") > 100
    if dumps[0] != dumps[1]:
        at = next(i for i, (a, b) in enumerate(zip(dumps[0], dumps[1])) if a != b)
        raise AssertionError(f"{dumps[0][at - 300:at + 100]!r}\n{dumps[1][at - 300:at + 100]!r}")
