"""Versioned schema of the ledger: which revision a ledger database is at, and bringing it to head.

Owns the alembic scripts (``versions/``, shipped inside the package) and runs
them programmatically - no alembic.ini, no env.py. The revision is kept in
``engine_schema_version`` (``VERSION_TABLE``), never in ``alembic_version``, so
a shop's own alembic table in a shared warehouse database is left alone.

``ensure`` is what every start calls: at head it costs one query; otherwise it
takes a lock (PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN
IMMEDIATE``; DuckDB: one writing process per file already, plus the
transaction), stamps a ledger created before versioned migrations (its tables
checked first) as ``0001``, and upgrades, all in one transaction. DDL is
transactional on all three backends, so a failed migration leaves nothing
half-written (a failed script is rolled back with the revision it would
have set). DuckDB cannot add a NOT NULL column to a table that has an index
(engine_ledger has two): a script adds such a column nullable with a server
default, or drops and recreates the indexes around it. It refuses a ledger at a revision this engine does not know
(written by a newer engine).

Must not: know the ledger's queries (ledger.py), read engine.yaml, or print.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import sqlalchemy as sa

from engine.errors import WarehouseError
from engine.state.warehouse import Database

VERSION_TABLE = "engine_schema_version"
#: The newest revision in versions/ (tests/test_ledger_migrations.py checks it against alembic's head),
#: known without importing alembic so the start-up check at head stays one query.
HEAD = "0010"
#: Revision 0001's tables and columns: what a ledger of the release before versioned migrations holds.
BASELINE = "0001"
BASELINE_TABLES = {
    "engine_ledger": {"message_key", "campaign", "step", "customer_id", "trigger_key", "variant", "channel", "status",
                      "reason", "detail", "trigger_at", "due_at", "created_at", "updated_at", "content", "attempts",
                      "next_attempt_at"},
    "engine_entries": {"campaign", "customer_id", "trigger_key", "entered_at"},
    "engine_tags": {"customer_id", "tag", "campaign", "set_at"},
    "engine_suppressions": {"kind", "address", "reason", "detail", "created_at"},
    "engine_unsubscribes": {"customer_id", "kind", "source", "created_at"},
}
#: pg_advisory_xact_lock's key: "engine" in ASCII; held only while a start checks or upgrades the schema.
PG_LOCK_KEY = 0x656E67696E65
VERSIONS = Path(__file__).parent / "versions"
SETTING = "ledger.url in engine.yaml (warehouse.url when the ledger shares the warehouse)"


@dataclass(frozen=True)
class Status:
    """Where a ledger database stands: ``current`` is () for an empty or unversioned database."""

    current: tuple[str, ...]
    head: str
    pending: tuple[str, ...]
    unversioned: bool = False  # engine tables without a version table: the release before migrations


def _script(version_locations: Sequence[Path] = ()):
    from alembic.script import ScriptDirectory

    from engine.state.migrations import duckdb_impl  # noqa: F401 - registers alembic's DuckDB dialect impl

    return ScriptDirectory(str(Path(__file__).parent), version_locations=[str(VERSIONS), *map(str, version_locations)])


def _current(conn: sa.Connection) -> tuple[str, ...] | None:
    """The revisions in the version table, None when there is no version table."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return tuple(sorted(row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")))


def _engine_tables(conn: sa.Connection) -> dict[str, set[str]]:
    """The baseline tables present, with their column names (read from an empty SELECT:
    SQLAlchemy's column reflection does not work on duckdb_engine)."""
    names = set(sa.inspect(conn).get_table_names())
    return {t: set(conn.exec_driver_sql(f"SELECT * FROM {t} WHERE 1 = 0").keys()) for t in BASELINE_TABLES if t in names}


def _newer_error(db: Database, current: Iterable[str], head: str) -> WarehouseError:
    return WarehouseError(
        f"the ledger in {db.url} is at schema revision {', '.join(current)}, which this engine does not know "
        f"(it knows up to {head}): a newer engine wrote it. Upgrade the engine to that release (or newer), "
        f"or point {SETTING} at another ledger")


def _pending(script, current: tuple[str, ...], target: str) -> tuple[str, ...]:
    revisions = script.iterate_revisions(target, current[0] if current else "base")
    return tuple(reversed([r.revision for r in revisions]))


def revisions(version_locations: Sequence[Path] = ()) -> tuple[str, ...]:
    """Every revision, oldest first: what an empty database is upgraded through."""
    script = _script(version_locations)
    return _pending(script, (), script.get_current_head())


def status(db: Database, version_locations: Sequence[Path] = ()) -> Status:
    """Read where ``db`` stands, writing nothing."""
    script = _script(version_locations)
    head = script.get_current_head()
    try:
        with db.engine.connect() as conn:
            current = _current(conn)
            unversioned = current is None and bool(_engine_tables(conn))
    except sa.exc.SQLAlchemyError as exc:
        raise _error(db, "cannot read the ledger's schema revision from", exc) from None
    current = current or ()
    if current and not _known(script, current):
        raise _newer_error(db, current, head)
    # an unversioned ledger is at 0001 already: it is stamped, not migrated
    pending = _pending(script, (BASELINE,) if unversioned else current, head)
    return Status(current=current, head=head, pending=pending, unversioned=unversioned)


def _known(script, current: Iterable[str]) -> bool:
    from alembic.util import CommandError

    for revision in current:
        try:
            if script.get_revision(revision) is None:
                return False
        except (CommandError, KeyError):
            return False
    return True


def ensure(db: Database, version_locations: Sequence[Path] = ()) -> list[str]:
    """Bring ``db``'s ledger schema to head; returns the revisions applied (a stamp of an
    unversioned ledger is not one). At head: one query, no alembic import."""
    current = _probe(db)
    if not version_locations and current == (HEAD,):
        return []
    if current and not _known(_script(version_locations), current):  # refused before asking for a write lock
        raise _newer_error(db, current, _script(version_locations).get_current_head())
    try:
        with db.engine.connect() as conn:
            applied = _upgrade_locked(db, conn, version_locations)
            conn.commit()
            return applied
    except WarehouseError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise _error(db, "cannot create or upgrade the ledger tables in", exc) from None


def at_head(db: Database) -> bool:
    """Whether ``db``'s ledger is at this engine's head: the fast path's one query, no alembic import."""
    return _probe(db) == (HEAD,)


def _probe(db: Database) -> tuple[str, ...] | None:
    """The fast path's one query; None when it cannot tell (no version table yet, or an error that
    the locked path then reports properly)."""
    try:
        with db.engine.connect() as conn:
            return tuple(sorted(row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")))
    except sa.exc.SQLAlchemyError:
        return None


def _lock(db: Database, conn: sa.Connection) -> None:
    """Start the transaction the check and the upgrade run in, holding the backend's lock."""
    # SQLite: BEGIN IMMEDIATE (the write lock, now); PostgreSQL: an advisory lock (Dialect.migration_lock)
    if db.dialect.migration_lock is not None:
        conn.exec_driver_sql(db.dialect.migration_lock.format(key=PG_LOCK_KEY))
    else:
        conn.begin()


def _upgrade_locked(db: Database, conn: sa.Connection, version_locations: Sequence[Path]) -> list[str]:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    _lock(db, conn)
    script = _script(version_locations)
    head = script.get_current_head()
    current = _current(conn)
    if current and not _known(script, current):
        raise _newer_error(db, current, head)
    opts = {"version_table": VERSION_TABLE}
    if current is None:
        existing = _engine_tables(conn)
        if existing:
            _check_baseline(db, existing)
            missing = [t for t in BASELINE_TABLES if t not in existing]
            if missing:
                raise WarehouseError(
                    f"the ledger in {db.url} has the engine's tables {', '.join(sorted(existing))} but not "
                    f"{', '.join(missing)}, and no {VERSION_TABLE} table: it is not a ledger this engine made. "
                    f"Point {SETTING} at the engine's ledger, or restore it from a backup")
            MigrationContext.configure(conn, opts=opts).stamp(script, BASELINE)
            current = (BASELINE,)
    applied = list(_pending(script, current or (), head))
    if applied:
        opts["fn"] = lambda rev, _context: script._upgrade_revs(head, rev)
        try:
            context = MigrationContext.configure(conn, opts=opts)
            with Operations.context(context):  # the ``op`` the scripts call
                context.run_migrations()
        except sa.exc.SQLAlchemyError as exc:
            conn.rollback()
            raise _error(db, f"migration to revision {head} failed (rolled back, nothing changed) on", exc) from None
    return applied


def _check_baseline(db: Database, existing: dict[str, set[str]]) -> None:
    for table, columns in existing.items():
        expected = BASELINE_TABLES[table]
        if columns != expected:
            differences = [f"missing {', '.join(sorted(expected - columns))}" if expected - columns else "",
                           f"unexpected {', '.join(sorted(columns - expected))}" if columns - expected else ""]
            raise WarehouseError(
                f"the ledger table {table} in {db.url} is not the one the engine's previous release made "
                f"({'; '.join(d for d in differences if d)}) and there is no {VERSION_TABLE} table, so it cannot "
                f"be upgraded safely. Point {SETTING} at the engine's ledger, or restore it from a backup")


def _error(db: Database, what: str, exc: Exception) -> WarehouseError:
    error = db._error(what, exc)
    text = str(error)
    if "readonly" in text.lower().replace("-", "") or "read-only" in text.lower() or "permission denied" in text.lower():
        return WarehouseError(f"{text}; the ledger must be writable to create or upgrade its tables: give the engine "
                              f"write access there, or point {SETTING} at a writable database")
    # "lock" as a word's start: DuckDB's out-of-memory errors say "could not allocate block"
    if re.search(r"\block", text.lower()) and db.dialect.one_writer_per_file:
        return WarehouseError(f"{text}; DuckDB allows one writing process per file: stop the other engine process, "
                              "or use PostgreSQL (or SQLite) to run replicas")
    return WarehouseError(f"{text}; check {SETTING}")
