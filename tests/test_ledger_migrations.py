"""The ledger's versioned schema (engine/migrations): a ledger of the previous release upgrades in place.

The previous release (commit a504654) created its tables with ``create_all`` and
kept no revision. Its DDL per backend is frozen in tests/fixtures/ledger_a504654/
(generated once from that commit's engine/ledger.py; no old code is imported
here). Each test runs on real DuckDB and SQLite files and a real PostgreSQL.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import pg
from conftest import copy_project
from engine.dialects import dialect_of_backend
from engine.state import migrations
from engine.errors import WarehouseError
from engine.state.ledger import Ledger
from engine.state.warehouse import Database

FIXTURES = Path(__file__).parent / "fixtures" / "ledger_a504654"
REPO = Path(__file__).parent.parent
T = datetime(2025, 1, 10, 9, 30)


@pytest.fixture(params=["duckdb", "sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return pg.server().new_database()
    return f"{request.param}:///{tmp_path / ('ledger.' + request.param)}"


def previous_release_ledger(url: str) -> Database:
    """An empty ledger exactly as commit a504654 created it."""
    db = Database(url)
    backend = "postgresql" if db.backend == "postgresql" else db.backend
    ddl = "\n".join(line for line in (FIXTURES / f"{backend}.sql").read_text().splitlines() if not line.startswith("--"))
    with db.engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.exec_driver_sql(statement)
    return db


def _ledger_row(key: str, status: str, **values) -> dict:
    campaign, step, customer, trigger = key.split(":")
    row = {"message_key": key, "campaign": campaign, "step": step, "customer_id": customer, "trigger_key": trigger,
           "variant": None, "channel": "email", "status": status, "reason": None, "detail": None,
           "trigger_at": datetime(2025, 1, 3, 8), "due_at": datetime(2025, 1, 9, 8), "created_at": T,
           "updated_at": T, "content": None, "attempts": 0, "next_attempt_at": None}
    row.update(values)
    return row


#: A ledger with rows in every state the previous release wrote.
ROWS = {
    "engine_ledger": [
        _ledger_row("welcome:hello:1:1", "claimed", attempts=1),
        _ledger_row("welcome:hello:2:2", "claimed", attempts=1, content='{"subject": "Hi", "body": "stored, not sent"}'),
        _ledger_row("welcome:hello:3:3", "sent", attempts=1, variant="b", content='{"subject": "Hi"}'),
        _ledger_row("cart:remind:4:c9", "failed", channel="sms", attempts=3, reason="transient",
                    detail="provider 503", next_attempt_at=datetime(2025, 1, 10, 10)),
        _ledger_row("cart:remind:5:c10", "failed", attempts=5, reason="exhausted", detail="gave up after 5 attempts"),
        _ledger_row("cart:remind:6:c11", "failed", reason="permanent", detail="550 no such user", attempts=1),
        *[_ledger_row(f"winback:nudge:{10 + i}:w{i}", "skipped", reason=reason, detail=f"because {reason}")
          for i, reason in enumerate(("stale", "stopped", "no_variant", "no_contact", "no_consent", "suppressed",
                                      "frequency_cap", "reentry"))],
        _ledger_row("welcome:hello:7:7", "unknown", attempts=1, reason="crashed", content="{}",
                    detail="claimed and rendered, but no outcome was recorded"),
    ],
    "engine_entries": [{"campaign": "vip", "customer_id": "8", "trigger_key": "2025-01-01", "entered_at": T},
                        {"campaign": "vip", "customer_id": "9", "trigger_key": "2025-01-02", "entered_at": T}],
    "engine_tags": [{"customer_id": "8", "tag": "vip", "campaign": "vip", "set_at": T},
                    {"customer_id": "9", "tag": "lapsed", "campaign": None, "set_at": T}],
    "engine_suppressions": [{"kind": "email", "address": "gone@example.com", "reason": "hard_bounce",
                             "detail": "550", "created_at": T},
                            {"kind": "sms", "address": "+4915100000000", "reason": "invalid", "detail": None,
                             "created_at": T}],
    "engine_unsubscribes": [{"customer_id": "1", "kind": "email", "source": "link", "created_at": T},
                            {"customer_id": "2", "kind": "all", "source": "cli", "created_at": T}],
}


def fill(db: Database) -> None:
    with db.engine.begin() as conn:
        for table, rows in ROWS.items():
            columns = list(rows[0])
            conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join(':' + c for c in columns)})"), rows)


def contents(db: Database) -> dict[str, list[dict]]:
    result = {}
    with db.engine.connect() as conn:
        for table, rows in ROWS.items():
            columns = list(rows[0])
            order = ", ".join(columns)
            fetched = conn.execute(sa.text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")).mappings()
            result[table] = [{k: (datetime.fromisoformat(v) if isinstance(v, str) and k.endswith("_at") else v)
                              for k, v in row.items()} for row in fetched]
    return result


def expected_contents() -> dict[str, list[dict]]:
    return {table: sorted(rows, key=lambda r: [str(r[c]) for c in r]) for table, rows in ROWS.items()}


def revisions(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return [row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {migrations.VERSION_TABLE}")]


def schema(db: Database) -> dict:
    """Every table and index of the engine as the database describes it."""
    tables = tuple(sorted(migrations.BASELINE_TABLES))
    if db.backend in ("duckdb", "sqlite"):  # the DDL the database keeps (DuckDB: regenerated from its catalog)
        catalog = ("SELECT sql FROM duckdb_tables() WHERE table_name IN {0} UNION ALL "
                   "SELECT sql FROM duckdb_indexes() WHERE table_name IN {0}" if db.backend == "duckdb"
                   else "SELECT sql FROM sqlite_master WHERE tbl_name IN {0} AND sql IS NOT NULL")
        with db.engine.connect() as conn:
            return {"ddl": sorted(" ".join(row[0].split()) for row in conn.exec_driver_sql(catalog.format(tables)))}
    inspector = sa.inspect(db.engine)
    found = {}
    for table in tables:
        found[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in inspector.get_columns(table)],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
        }
    return found


HEAD = migrations.HEAD
#: the revisions after the baseline (a previous release's ledger is stamped 0001, then upgraded by these)
LATER = [r for r in migrations.revisions() if r != migrations.BASELINE]
ALL = ", ".join(migrations.revisions())


def test_the_scripts_head_is_the_head_the_fast_path_knows():
    assert migrations._script().get_current_head() == migrations.HEAD


def test_revision_1_builds_the_tables_the_previous_release_created(url, tmp_path):
    """A fresh ledger (0001, then the later revisions) has the same tables as the previous release's
    once stamped 0001 and upgraded by the same later revisions: 0001 built what create_all built."""
    old = previous_release_ledger(url)
    assert migrations.ensure(old) == LATER
    expected = schema(old)
    old.dispose()
    fresh_url = pg.server().new_database() if url.startswith("postgresql") else url.replace("ledger.", "fresh.")
    fresh = Database(fresh_url)
    assert migrations.ensure(fresh) == ["0001", *LATER]
    assert schema(fresh) == expected
    assert revisions(fresh) == [migrations.HEAD]
    fresh.dispose()


def test_a_previous_release_ledger_upgrades_in_place_with_every_row(url):
    db = previous_release_ledger(url)
    fill(db)
    before = contents(db)
    assert before == expected_contents()
    assert migrations.status(db).unversioned

    Ledger(db).ensure_schema()  # what every start does
    assert revisions(db) == [migrations.HEAD]
    assert contents(db) == before
    state = migrations.status(db)
    assert (state.current, state.pending, state.unversioned) == ((migrations.HEAD,), (), False)
    # the upgraded ledger serves the engine as before
    ledger = Ledger(db)
    assert ledger.tags("8") == ["vip"]
    assert ledger.unsubscribed(["1", "2"]) == {("1", "email"), ("2", "all")}
    assert ledger.get("welcome:hello:3:3")["status"] == "sent"

    assert migrations.ensure(db) == []  # a second upgrade is a no-op
    assert revisions(db) == [migrations.HEAD] and contents(db) == before
    db.dispose()


def test_a_ledger_of_a_newer_engine_is_refused(url):
    db = Database(url)
    migrations.ensure(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0099'")
    for attempt in (Ledger(db).ensure_schema, lambda: migrations.status(db)):
        with pytest.raises(WarehouseError) as error:
            attempt()
        message = str(error.value)
        assert "0099" in message and "newer engine" in message and "ledger.url in engine.yaml" in message
        assert "Upgrade the engine" in message
    assert revisions(db) == ["0099"]
    db.dispose()


def test_tables_that_are_not_the_previous_release_are_refused_not_stamped(url):
    db = Database(url)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE engine_tags (customer_id VARCHAR(128), label VARCHAR(64))")
    with pytest.raises(WarehouseError, match=r"engine_tags .*missing campaign, set_at, tag; unexpected label"):
        Ledger(db).ensure_schema()
    assert not sa.inspect(db.engine).has_table(migrations.VERSION_TABLE)
    db.dispose()


def _extra_revisions(directory: Path, body: str) -> Path:
    directory.mkdir()
    (directory / "0002_example.py").write_text(textwrap.dedent('''
        import sqlalchemy as sa
        from alembic import op

        revision = "9001"
        down_revision = "{head}"
        branch_labels = None
        depends_on = None


        def upgrade():
        ''').format(head=migrations.HEAD) + textwrap.indent(textwrap.dedent(body), "    "))
    return directory


def test_a_migration_adding_a_column_applies_to_a_previous_release_ledger(url, tmp_path):
    extra = _extra_revisions(tmp_path / "versions", """
        # nullable: DuckDB cannot add a NOT NULL column to a table with an index (engine_ledger has two)
        op.add_column("engine_ledger", sa.Column("priority", sa.Integer, server_default="5"))
    """)
    db = previous_release_ledger(url)
    fill(db)
    before = contents(db)
    state = migrations.status(db, [extra])
    assert (state.head, state.pending, state.unversioned) == ("9001", (*LATER, "9001"), True)

    assert migrations.ensure(db, [extra]) == [*LATER, "9001"]  # stamped 0001, then upgraded
    assert revisions(db) == ["9001"]
    assert contents(db) == before
    with db.engine.connect() as conn:
        priorities = conn.exec_driver_sql("SELECT DISTINCT priority FROM engine_ledger").all()
    assert priorities == [(5,)]
    assert migrations.ensure(db, [extra]) == []
    # and this engine, which does not know 9001, refuses the upgraded ledger
    with pytest.raises(WarehouseError, match="9001, which this engine does not know"):
        Ledger(db).ensure_schema()
    db.dispose()


def test_a_failed_migration_leaves_nothing_half_written(url, tmp_path):
    """DDL is transactional on DuckDB, SQLite and PostgreSQL: the column added before the failing
    statement is rolled back with it, and the revision stays where it was."""
    extra = _extra_revisions(tmp_path / "versions", """
        op.add_column("engine_ledger", sa.Column("priority", sa.Integer))
        op.execute("INSERT INTO no_such_table VALUES (1)")
    """)
    db = Database(url)
    migrations.ensure(db)
    with pytest.raises(WarehouseError) as error:
        migrations.ensure(db, [extra])
    assert "migration to revision 9001 failed (rolled back, nothing changed)" in str(error.value)
    assert revisions(db) == [migrations.HEAD]
    with db.engine.connect() as conn:
        assert "priority" not in conn.exec_driver_sql("SELECT * FROM engine_ledger WHERE 1 = 0").keys()
    db.dispose()


STARTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.state import migrations
    from engine.state.ledger import Ledger
    from engine.state.warehouse import Database
    url, go = sys.argv[1], Path(sys.argv[2])
    db = Database(url)
    db.check()  # connected, and alembic and the scripts loaded, before the common start:
    migrations._script().get_current_head()  # the upgrades themselves overlap
    pending = migrations._pending
    def slow_pending(*args):  # widen the window between reading the revision and creating the tables
        found = pending(*args)
        time.sleep(0.5)
        return found
    migrations._pending = slow_pending
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    Ledger(db).ensure_schema()
    print("ok")
""")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_replicas_starting_together_on_an_empty_ledger(backend, tmp_path):
    """Each replica waits for the lock (pg_advisory_xact_lock, BEGIN IMMEDIATE); without it they all
    read "empty" and all create the tables (this test fails so when the lock is taken out)."""
    url = pg.server().new_database() if backend == "postgresql" else f"sqlite:///{tmp_path / 'ledger.db'}"
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", STARTER, url, str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
                 for _ in range(4)]
    assert [p.stdout.readline() for p in processes] == ["ready\n"] * 4
    go.touch()
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, results
    db = Database(url)
    assert revisions(db) == [migrations.HEAD]
    assert set(migrations.BASELINE_TABLES) <= set(sa.inspect(db.engine).get_table_names())
    db.dispose()


def _engine(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli.main", "--project", str(root), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=root)


def test_engine_ledger_status_and_upgrade(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "p")
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"sqlite:///{ledger_path}")
    db = previous_release_ledger(f"sqlite:///{ledger_path}")
    fill(db)

    status = _engine(root, "ledger", "status")
    assert status.returncode == 0, status.stderr
    assert "Revision: none (tables of the release before versioned migrations; stamped 0001 on upgrade)" in status.stdout
    assert f"Head: {HEAD}" in status.stdout and f"Pending: {', '.join(LATER)}" in status.stdout
    assert not sa.inspect(db.engine).has_table(migrations.VERSION_TABLE)  # status writes nothing

    upgrade = _engine(root, "ledger", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"applied {', '.join(LATER)}; now at {HEAD}." in upgrade.stdout  # stamping is not a migration
    assert revisions(db) == [HEAD] and contents(db) == expected_contents()
    status = _engine(root, "ledger", "status")
    assert f"Revision: {HEAD}\nHead: {HEAD}\nPending: none" in status.stdout

    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0099'")
    for command in ("status", "upgrade"):
        refused = _engine(root, "ledger", command)
        assert refused.returncode == 1
        assert refused.stderr.startswith("Error: the ledger in sqlite:///") and refused.stderr.count("\n") == 1
        assert "Upgrade the engine" in refused.stderr and "Traceback" not in refused.stderr
    run = _engine(root, "run", "--once", "--as-of", "2025-01-10T00:00:00Z")
    assert run.returncode == 1 and "0099, which this engine does not know" in run.stderr
    assert "Traceback" not in run.stderr
    db.dispose()


def test_a_read_only_ledger_is_refused_with_the_fix_and_nothing_written(tmp_path):
    path = tmp_path / "ledger.db"
    Database(f"sqlite:///{path}").check()  # an empty database file
    read_only = Database(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(WarehouseError) as error:
        Ledger(read_only).ensure_schema()
    assert "readonly" in str(error.value) and "must be writable" in str(error.value)
    assert "ledger.url in engine.yaml" in str(error.value)
    read_only.dispose()
    db = Database(f"sqlite:///{path}")
    assert sa.inspect(db.engine).get_table_names() == []
    db.dispose()


def test_engine_ledger_upgrade_on_an_empty_ledger(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "p")
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", f"sqlite:///{ledger_path}")
    assert f"Revision: none (no database file yet)\nHead: {HEAD}\nPending: {ALL}" in _engine(root, "ledger", "status").stdout
    assert not ledger_path.exists()
    Database(f"sqlite:///{ledger_path}").check()  # an empty database file
    assert f"Revision: none (empty)\nHead: {HEAD}\nPending: {ALL}" in _engine(root, "ledger", "status").stdout
    upgrade = _engine(root, "ledger", "upgrade")
    assert upgrade.returncode == 0 and f"applied {ALL}; now at {HEAD}." in upgrade.stdout
    assert f"already at {HEAD}, nothing to do." in _engine(root, "ledger", "upgrade").stdout


def test_an_unreachable_ledger_is_one_error_line(tmp_path, monkeypatch):
    root = copy_project(tmp_path / "p")
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", "postgresql+psycopg://engine:secret@127.0.0.1:1/ledger")
    for command in ("status", "upgrade"):
        result = _engine(root, "ledger", command)
        assert result.returncode == 1 and result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        assert "secret" not in result.stderr and "Traceback" not in result.stderr
        assert "warehouse.url" in result.stderr


# --- revision 0009: the ledger's keys stored uncompressed where the dialect says so (DuckDB) ---------------------

KEYS = ("customer_id", "trigger_key")


def upgrade_to(db: Database, target: str) -> None:
    """Bring ``db`` to ``target`` only, as an engine whose head it was did (one transaction)."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    script = migrations._script()
    with db.engine.connect() as conn:
        conn.begin()
        context = MigrationContext.configure(conn, opts={
            "version_table": migrations.VERSION_TABLE, "fn": lambda rev, _context: script._upgrade_revs(target, rev)})
        with Operations.context(context):
            context.run_migrations()
        conn.commit()


def fill_interleaved(db: Database, rows: int = 6000) -> None:
    """``rows`` ledger rows of 4 campaigns interleaved (as passes leave them), every column set, beside ROWS."""
    fill(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"""
            INSERT INTO engine_ledger SELECT
                'c' || (i % 4) || ':s:' || (i % 997) || ':' || i, 'c' || (i % 4), 's', CAST(i % 997 AS VARCHAR),
                'order-' || i, CASE WHEN i % 3 = 0 THEN 'b' END, 'email', CASE WHEN i % 5 = 0 THEN 'skipped' ELSE 'sent' END,
                CASE WHEN i % 5 = 0 THEN 'stale' END, CASE WHEN i % 7 = 0 THEN 'detail ' || i END,
                TIMESTAMP '2025-01-01 08:00:00' + INTERVAL (i) SECOND, TIMESTAMP '2025-01-02 08:00:00.123456',
                TIMESTAMP '2025-01-03 08:00:00', TIMESTAMP '2025-01-04 08:00:00' + INTERVAL (i) MICROSECOND,
                CASE WHEN i % 2 = 0 THEN '{{"subject": "é ' || i || '"}}' END, i % 4,
                CASE WHEN i % 11 = 0 THEN TIMESTAMP '2025-01-05 08:00:00' END
            FROM range({rows}) AS r(i)""")


def every_row(db: Database) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM engine_ledger ORDER BY message_key")]


def duckdb_catalog(db: Database) -> dict:
    """The ledger's columns (type, default, nullability), constraints and indexes as DuckDB's catalog has them."""
    with db.engine.connect() as conn:
        def rows(sql: str) -> list[tuple]:
            return sorted(tuple(map(str, row)) for row in conn.exec_driver_sql(sql))
        return {
            "columns": rows("SELECT column_index, column_name, data_type, column_default, is_nullable "
                            "FROM duckdb_columns() WHERE table_name = 'engine_ledger'"),
            "constraints": rows("SELECT constraint_type, constraint_text, constraint_column_names "
                                "FROM duckdb_constraints() WHERE table_name = 'engine_ledger'"),
            "indexes": rows("SELECT index_name, is_unique, sql FROM duckdb_indexes() WHERE table_name = 'engine_ledger'"),
        }


def stored_compressions(db: Database) -> dict[str, set[str]]:
    """Per ledger column, the compressions of its stored string segments (after a checkpoint), and in the
    catalog's DDL whether the column is declared uncompressed."""
    with db.engine.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")
        found: dict[str, set[str]] = {}
        for column, compression in conn.exec_driver_sql(
                "SELECT column_name, compression FROM pragma_storage_info('engine_ledger') "
                "WHERE segment_type = 'VARCHAR'"):
            found.setdefault(column, set()).add(compression)
        ddl = conn.exec_driver_sql("SELECT sql FROM duckdb_tables() WHERE table_name = 'engine_ledger'").scalar()
    declared = {column for column in found if f"{column} VARCHAR USING COMPRESSION Uncompressed" in ddl}
    return {**found, "declared uncompressed": declared}


def test_duckdb_0009_stores_the_ledger_keys_uncompressed_keeping_every_row_and_index(tmp_path):
    """A ledger at 0008 (as the engine before this revision left it) with interleaved campaigns: 0009 keeps every
    row value for value, every column's type, default and nullability, the keys and the index, and stores
    customer_id and trigger_key uncompressed (declared in the catalog and so written); other columns as before."""
    db = Database(f"duckdb:///{tmp_path / 'ledger.duckdb'}")
    upgrade_to(db, "0008")
    fill_interleaved(db)
    rows, catalog = every_row(db), duckdb_catalog(db)
    before = stored_compressions(db)
    assert before["declared uncompressed"] == set() and all(before[key] != {"Uncompressed"} for key in KEYS)

    assert migrations.ensure(db) == ["0009", "0010"]
    assert revisions(db) == ["0010"]
    assert every_row(db) == rows and len(rows) == 6000 + len(ROWS["engine_ledger"])
    assert duckdb_catalog(db) == catalog
    after = stored_compressions(db)
    assert after["declared uncompressed"] == set(KEYS)
    assert all(after[key] == {"Uncompressed"} for key in KEYS)
    assert after["campaign"] == before["campaign"] != {"Uncompressed"}  # only the keys changed
    # the upgraded ledger serves the engine: its keys still refuse a second claim of an identity
    ledger = Ledger(db)
    assert ledger.get("welcome:hello:3:3")["status"] == "sent"
    assert ledger.existing_keys(["c1:s:1:1", "nope"]) == {"c1:s:1:1"}
    with pytest.raises(sa.exc.IntegrityError):
        with db.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO engine_ledger SELECT * REPLACE ('other' AS message_key) "
                                 "FROM engine_ledger WHERE message_key = 'c1:s:1:1'")
    with pytest.raises(sa.exc.IntegrityError):
        with db.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO engine_ledger SELECT * REPLACE ('x' AS trigger_key) "
                                 "FROM engine_ledger WHERE message_key = 'c1:s:1:1'")
    assert every_row(db) == rows
    db.dispose()


def test_a_new_duckdb_ledger_stores_its_keys_uncompressed(tmp_path):
    db = Database(f"duckdb:///{tmp_path / 'ledger.duckdb'}")
    assert migrations.ensure(db)[-2:] == ["0009", "0010"]
    fill_interleaved(db)
    stored = stored_compressions(db)
    assert stored["declared uncompressed"] == set(KEYS)
    assert all(stored[key] == {"Uncompressed"} for key in KEYS) and stored["campaign"] != {"Uncompressed"}
    db.dispose()


def test_0009_changes_nothing_on_sqlite_and_postgresql(url):
    if url.startswith("duckdb"):
        pytest.skip("DuckDB's rebuild: the tests above")
    db = Database(url)
    upgrade_to(db, "0008")
    fill(db)
    shape, before = schema(db), contents(db)
    upgrade_to(db, "0009")
    assert (schema(db), contents(db)) == (shape, before)
    db.dispose()


# --- revision 0010: no index led by the customer where the dialect says so (SQLite) --------------------------


def test_0010_drops_the_customer_index_where_the_dialect_says_so_keeping_every_row(url):
    """A ledger at 0009 with rows in every state: 0010 keeps every row; on SQLite (``ledger_customer_index``
    False) engine_ledger_customer gives way to engine_ledger_sends, elsewhere the schema is unchanged. The
    readers on such a ledger: tests/test_ledger_customer_reads.py."""
    db = Database(url)
    upgrade_to(db, "0009")
    fill(db)
    shape, before = schema(db), contents(db)
    assert migrations.ensure(db) == ["0010"]
    assert revisions(db) == ["0010"] and contents(db) == before
    if dialect_of_backend(db.engine.dialect.name).ledger_customer_index:
        assert schema(db) == shape
    else:
        ddl = set(schema(db)["ddl"])
        assert set(shape["ddl"]) - ddl == {"CREATE INDEX engine_ledger_customer ON engine_ledger (customer_id)"}
        assert ddl - set(shape["ddl"]) == {"CREATE INDEX engine_ledger_sends ON engine_ledger (campaign, step, updated_at) "
                                           "WHERE status NOT IN ('failed', 'skipped')"}
    assert Ledger(db).customer_messages("3", ("message_key", "status")) == [
        {"message_key": "welcome:hello:3:3", "status": "sent"}]
    db.dispose()


CRASHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.state import migrations
    from engine.state.warehouse import Database
    migrations.ensure(Database(sys.argv[1]), [Path(sys.argv[2])])
""")


@pytest.mark.parametrize("ending", ["error", "kill"])
def test_a_duckdb_0009_that_fails_or_is_killed_midway_leaves_the_old_ledger(tmp_path, ending):
    """0009 runs in the upgrade's one transaction: a failure after its rebuild (a later revision failing in the
    same upgrade), or the process killed there, leaves the ledger at 0008 with every row, compressed keys."""
    marker = tmp_path / "rebuilt"
    body = (f'op.execute("INSERT INTO no_such_table VALUES (1)")\n' if ending == "error" else
            f'import time, pathlib\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)\n')
    ran = "SELECT sql FROM duckdb_tables() WHERE table_name = 'engine_ledger'"
    extra = _extra_revisions(tmp_path / "versions", f"assert op.get_bind().exec_driver_sql({ran!r}).scalar()"
                                                    f".count('USING COMPRESSION') == 2  # 0009 ran before\n" + body)
    url = f"duckdb:///{tmp_path / 'ledger.duckdb'}"
    db = Database(url)
    upgrade_to(db, "0008")
    fill_interleaved(db)
    rows, catalog = every_row(db), duckdb_catalog(db)
    db.dispose()
    if ending == "error":
        with pytest.raises(WarehouseError, match="migration to revision 9001 failed"):
            migrations.ensure(Database(url), [extra])
    else:
        process = subprocess.Popen([sys.executable, "-c", CRASHER, url, str(extra)],
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the upgrade never reached the revision after 0009"
        process.kill()
        process.wait()
    db = Database(url)
    assert revisions(db) == ["0008"]
    assert every_row(db) == rows and duckdb_catalog(db) == catalog
    assert stored_compressions(db)["declared uncompressed"] == set()
    assert migrations.ensure(db) == ["0009", "0010"]  # and the next start upgrades it
    assert every_row(db) == rows and stored_compressions(db)["declared uncompressed"] == set(KEYS)
    db.dispose()


def test_a_duckdb_0009_without_the_memory_it_needs_says_so_and_leaves_the_old_ledger(tmp_path):
    """The rebuild copies the whole ledger in one transaction: under a memory_limit too small for it the start
    fails with DuckDB's out-of-memory error and the hint to raise the limit (not the one-writer hint, which its
    "could not allocate block" once matched), and the ledger stays at 0008 with every row."""
    path = tmp_path / "ledger.duckdb"
    db = Database(f"duckdb:///{path}")
    upgrade_to(db, "0008")
    fill_interleaved(db, 30000)
    rows = every_row(db)
    db.dispose()
    limited = Database(f"duckdb:///{path}", duckdb_settings={"memory_limit": "4MB"})
    with pytest.raises(WarehouseError) as error:
        Ledger(limited).ensure_schema()
    limited.dispose()
    message = str(error.value)
    assert "could not allocate block" in message and "raise or remove warehouse.duckdb.memory_limit" in message
    assert "one writing process" not in message
    db = Database(f"duckdb:///{path}")
    assert revisions(db) == ["0008"] and every_row(db) == rows
    db.dispose()
