"""The ledger as a pass sees it: opened to write (``engine run``) or only to read (every other command),
and the engine state its queries join, brought to a warehouse in another database.

- ``open_ledger``: ``run`` creates or upgrades the ledger's tables (and only there: the warehouse is
  never written to unless the ledger shares its database). A read-only command never creates
  anything: a ledger database without the engine's tables (or a ledger file that does not exist yet)
  reads as an empty ledger, held in memory. Failures name the engine.yaml setting at its line.
- ``shipped_state``: the segment entries, tags and response events a pass's queries join, copied into the warehouse
  session (engine.sql.shipping) when the ledger lives elsewhere, dropped when the pass ends.
- ``record_segment_entries``: who entered a segment, computed in the warehouse, recorded in the ledger.

Must not: write to the warehouse's own schema (session-scoped temporary tables only), decide about
messages, or create or upgrade a ledger for a command that only reads.
"""
from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Iterator

from engine.errors import WarehouseError
from engine.model import Campaign, ProjectConfig
from engine.spec.config import CONFIG_FILE, database_url
from engine.spec.load import load_yaml_file
from engine.sql.compile import StateRelations, render_sql
from engine.sql import shipping
from engine.sql.due import entries_select
from engine.sql.triggers.registry import kind_of
from engine.sql.shipping import (
    StateNeeds, copy_relation, create_copy, drop_copy, insert_copy, state_needs, values_relation,
)
from engine.state import migrations
from engine.state.ledger import Ledger
from engine.state.tables import ENTRIES_TABLE, EVENTS_TABLE
from engine.state.warehouse import Database, Session, file_of

#: A ledger that does not exist yet, for commands that only read: empty, in memory, written by nothing.
EMPTY_LEDGER_URL = "sqlite://"


def setting_at(config: ProjectConfig, path: tuple[str, ...]) -> str:
    """``engine.yaml:LINE: a.b`` for the setting at ``path`` (its nearest ancestor present)."""
    doc = load_yaml_file(config.root / CONFIG_FILE, CONFIG_FILE)
    line, _ = doc.position(path)
    return f"{CONFIG_FILE}:{line}: {'.'.join(path)}"


def _ledger_setting(config: ProjectConfig) -> str:
    return setting_at(config, ("warehouse", "url") if config.ledger_shares_warehouse else ("ledger", "url"))


def _located(config: ProjectConfig, exc: WarehouseError, fix: str = "") -> WarehouseError:
    return WarehouseError(f"{_ledger_setting(config)}: {exc}{fix}")


_WRITABLE_FIX = ("; `engine run` writes only to the ledger: give its role INSERT, UPDATE and DELETE there (or open "
                 "it without mode=ro / read_only), or point the setting at a writable database. Commands that only "
                 "read (plan, explain, export, ...) work on a read-only ledger")


def _refused(exc: WarehouseError) -> bool:
    text = str(exc).lower().replace("-", "").replace(" ", "")
    return "readonly" in text or "permissiondenied" in text


def open_ledger(config: ProjectConfig, warehouse: Database, writes: bool) -> tuple[Ledger, bool]:
    """The project's ledger and whether it shares the warehouse's database (its tables joined in SQL).

    ``writes``: its tables are created or upgraded (``engine run``); a ledger that is read-only or
    unreachable is an error naming its engine.yaml setting. Otherwise nothing is created anywhere.
    """
    shares = config.ledger_shares_warehouse
    if writes:
        db = warehouse if shares else Database(database_url(config, "ledger"))
        ledger = Ledger(db)
        try:
            ledger.ensure_schema()
            ledger.check_writable()
            db.hold_checkpoints()  # checkpointed between passes (Ledger.checkpoint), not inside a pass's commits
        except WarehouseError as exc:
            raise _located(config, exc, _WRITABLE_FIX if _refused(exc) and "must be writable" not in str(exc) else "") from None
        return ledger, shares
    if shares:
        db = warehouse
    else:
        url = database_url(config, "ledger")
        path = file_of(url)
        if path is not None and not path.exists():
            return _empty_ledger(), False
        db = Database(url)
    if migrations.at_head(db):  # the usual case: one query, no alembic import at start-up
        return Ledger(db), shares
    try:
        status = migrations.status(db)
    except WarehouseError as exc:
        raise _located(config, exc) from None
    if status.current or status.unversioned:
        return Ledger(db), shares
    if db is not warehouse:
        db.dispose()
    return _empty_ledger(), False


def _empty_ledger() -> Ledger:
    ledger = Ledger(Database(EMPTY_LEDGER_URL))
    ledger.ensure_schema()
    return ledger


@contextlib.contextmanager
def shipped_state(session: Session, ledger: Ledger, needs: StateNeeds, config: ProjectConfig) -> Iterator[StateRelations]:
    """Copy the engine state ``needs`` names from the ledger into the warehouse ``session`` for as long
    as the block runs; yields where each query finds it (compile's ``state``)."""
    dialect = config.dialect
    relations: dict = {}
    created: list[str] = []
    try:
        for table in needs.tables():
            if table == ENTRIES_TABLE:
                rows = ledger.segment_entries(list(needs.segment_campaigns))
            elif table == EVENTS_TABLE:
                rows = ledger.engagement_rows()
            else:
                rows = ledger.tag_holders(list(needs.tags))
            if shipping.transport(dialect) == "values":
                relations[table] = values_relation(table, rows, dialect)
                continue
            try:
                stale = drop_copy(table, dialect)  # left on a pooled connection by a pass that died
                if stale is not None:
                    session.execute(stale)
                session.execute(create_copy(table, dialect))
                created.append(table)
                for statement in insert_copy(table, rows, dialect):
                    session.execute(statement)
            except WarehouseError as exc:
                raise _temporary_table_error(config, exc) from None
            relations[table] = copy_relation(table)
        yield relations
    finally:
        for table in created:
            try:
                session.execute(drop_copy(table, dialect, created=True))
            except WarehouseError:  # do not hide the error that ended the pass
                break


def _temporary_table_error(config: ProjectConfig, exc: WarehouseError) -> WarehouseError:
    fix = ""
    if "permission denied" in str(exc).lower():
        fix = ("; the engine copies the ledger's segment entries and tags into temporary tables of its warehouse "
               "session: grant the warehouse role the TEMP privilege (GRANT TEMP ON DATABASE <shop> TO <role>; "
               "PostgreSQL grants it to PUBLIC by default), or keep the ledger in the warehouse's database")
    return WarehouseError(f"{setting_at(config, ('warehouse', 'url'))}: {exc}{fix}")


def record_segment_entries(warehouse: Database, ledger: Ledger, campaign: Campaign, config: ProjectConfig,
                           now: datetime) -> None:
    """Who entered ``campaign``'s segment since the last pass, computed in the warehouse against the
    entries the ledger holds, recorded in the ledger (the ledger is not the warehouse's database)."""
    if not kind_of(campaign.trigger).records_entries:
        return
    with warehouse.session() as session:
        # the segment's entries, and the tags and responses its filter reads
        with shipped_state(session, ledger, state_needs([campaign], config), config) as state:
            select = entries_select(campaign, config, now, state)
            if select is None:
                return
            rows = [(name, str(customer_id), str(key), now)
                    for batch in session.stream(render_sql(select, config.dialect))
                    for name, customer_id, key, _ in batch]
    ledger.record_entries(rows)


@contextlib.contextmanager
def warehouse_with_state(warehouse: Database, ledger: Ledger, shares: bool, needs: StateNeeds,
                         config: ProjectConfig) -> Iterator[tuple[Session, StateRelations]]:
    """A warehouse session and where its queries find the engine state ``needs`` names: the ledger's
    tables when ``shares`` (the same database), else the session's copies (``shipped_state``)."""
    with warehouse.session() as session:
        with shipped_state(session, ledger, StateNeeds() if shares else needs, config) as relations:
            yield session, relations
