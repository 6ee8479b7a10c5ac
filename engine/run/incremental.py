"""The incremental pass (issue 15 point 5): per-customer facts kept from what changed, not recomputed.

Every due query joins per-customer facts (order count, first/last order, total spent; newest
event and login: compile.SHARED_FACTS), which a pass otherwise computes with a GROUP BY over the
source's whole history. Where a source maps a change column (``sources.orders.columns.updated_at``:
the time a row was inserted or last updated, model.CHANGE_COLUMN), a pass run by ``engine run``
instead keeps those facts in a permanent table of the engine's (sql.kept_facts.KEPT_FACTS) and
refreshes it before it plans:

1. read the rows whose change column is after the watermark minus ``SAFETY_LAG`` (a count and the
   newest value: the "rows read" of ``--explain-cost``);
2. list the customers touched: those rows' customers, and those whose kept row waits for a row
   dated after its instant that ``now`` has reached (``pending_at``, sql.kept_facts);
3. recompute those customers' facts from all of their rows (``WHERE customer_id IN touched``:
   exact under status updates, changed totals and rows that arrive late) and replace their kept
   rows, in one transaction (on PostgreSQL under an advisory lock: replicas take turns);
4. move the watermark (engine_watermarks in the ledger, migration 0006) to the newest change value
   read, never past ``now``; the due queries then join the kept table instead of the GROUP BY, and so
   do the shared order rows: the kept order facts count the orders of every status set the project's
   campaigns rank by (``campaigns``: sql.kept_facts ``counted``), so a pass with kept order facts
   runs no GROUP BY of the orders. The shared order rows themselves (the windows' orders ranked) are
   kept too (sql.kept_facts ``KEPT_ROWS``), recomputed in step 3's transaction for the same touched
   customers, so a pass ranks only their orders; their readers' windows are part of the fingerprint.

The watermark is the warehouse's own value (no clock of this host is compared with it), read
again with ``SAFETY_LAG`` of overlap, which catches rows whose transaction committed up to that
long after the change time it wrote. The kept table is rebuilt whole (one GROUP BY, as without a
change column) the first time, when the source's mapping changes (``fingerprint``), when the
table is gone, when a campaign counts another status set, and after ``REBUILD_AFTER`` - which also bounds what no watermark can see: a row
deleted from the source, or one committed later than the lag.

Limits, said by ``engine plan --explain-cost``: a change column must move on every insert and
update. ``updated_at: created_at`` (the creation time as the change column) is accepted but sees
neither an update of an order's status or total nor a row that arrives with a ``created_at``
older than the watermark minus the lag; they count from the next rebuild on.

Full computation (the GROUP BY into the pass's temporary table, as before) where: the source maps
no change column; the ledger is not in the warehouse's database (the engine writes only to its
own database, never next to a warehouse it reads); the command only reads (plan, explain,
backtest's replay into a scratch ledger: nothing is created for them); the pass's instant is
before the kept facts' (``--as-of`` in the past); or the database has no temporary tables.

Must not: decide about messages, write to the warehouse's own tables, or keep facts for a
command that only reads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from engine.clock import UTC, parse_stored_timestamp, to_utc
from engine.dialects import dialect_named, drop_temporary_table
from engine.errors import WarehouseError
from engine.model import CHANGE_COLUMN, Campaign, ProjectConfig
from engine.sql.compile import StateRelations, instant_text, render_sql
from engine.sql.due import counted_statuses
from engine.sql.prepared import kept_rows_replace_statements
from engine.sql.kept_facts import (
    KEPT_FACTS, TOUCHED, changes_select, change_expression, fingerprint, kept_create, kept_drop, kept_relations,
    kept_replace, kept_rows_build, kept_rows_relations, rows_fingerprint, touched_create,
    touched_summary,
)
from engine.state.ledger import Ledger
from engine.state.warehouse import Database, Session
from engine.state.watermarks import Watermark

#: Rows are read again from this long before the watermark: a row whose transaction commits up to
#: this long after the change time it wrote is still seen.
SAFETY_LAG = timedelta(minutes=10)
#: Kept facts older than this are rebuilt whole (a deleted row, a commit later than the lag).
REBUILD_AFTER = timedelta(days=1)
#: The lock number of Dialect.refresh_lock ("kept" in ASCII; the migrations' is "engine").
REFRESH_LOCK_KEY = 0x6B657074


@dataclass(frozen=True)
class SourceCost:
    """How a pass reads one source's per-customer facts: ``mode`` "incremental" or "full", and why."""

    entity: str
    mode: str
    reason: str
    mark: Watermark | None = None

    def line(self) -> str:
        if self.mode == "full":
            return f"{self.entity}: full scan ({self.reason})"
        mark = self.mark
        read = "" if mark is None else (f", watermark {_shown(mark.watermark)}, last refresh read {mark.rows_read:,} "
                                         f"row(s) and recomputed {mark.customers_touched:,} customer(s), facts as of "
                                         f"{_shown(mark.facts_at)}")
        return f"{self.entity}: incremental ({self.reason}{read})"


def _shown(value: datetime | None) -> str:
    return "none" if value is None else to_utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _full_reason(config: ProjectConfig, entity: str, *, writes: bool, shares: bool) -> str | None:
    """Why ``entity``'s facts are computed whole at every pass, or None when they can be kept."""
    if entity not in config.sources:
        return "not mapped"
    if change_expression(config, entity) is None:
        return (f"no change column: map sources.{entity}.columns.{CHANGE_COLUMN} (the time a row was inserted or "
                f"last updated) to read only what changed")
    if not shares:
        return "the ledger is in another database than the warehouse: the engine keeps facts only in its own database"
    if not dialect_named(config.dialect).temporary_tables:
        return f"{config.dialect} has no temporary tables"
    if not writes:
        return "this command only reads: `engine run` keeps the facts"
    return None


def _caveat(config: ProjectConfig, entity: str) -> str:
    source = config.sources[entity]
    if change_expression(config, entity) == source.columns.get("created_at" if entity == "orders" else "occurred_at"):
        return ("change column is the creation time: status updates and rows arriving more than "
                f"{int(SAFETY_LAG.total_seconds() // 60)} min after their time are seen only at the daily rebuild")
    return f"change column {CHANGE_COLUMN} = {change_expression(config, entity)}"


def costs(config: ProjectConfig, ledger: Ledger, now: datetime, *, writes: bool, shares: bool,
          campaigns: Sequence[Campaign]) -> list[SourceCost]:
    """Per source with per-customer facts, how a pass at ``now`` reads them (without reading them).
    ``campaigns``: the project's (all of them, so a pass over a few keeps the same table): the
    status sets their shared order rows count are kept too."""
    found = []
    counted, rows = counted_statuses(campaigns), _rows_fingerprint(config, campaigns)
    reasons = {entity: _full_reason(config, entity, writes=writes, shares=shares) for entity in KEPT_FACTS}
    kept = [entity for entity, reason in reasons.items() if reason is None]
    marks = ledger.watermarks(kept) if kept else {}  # one read for every kept source
    for entity in KEPT_FACTS:
        reason = reasons[entity]
        if reason is not None:
            found.append(SourceCost(entity, "full", reason))
            continue
        mark = marks.get(entity)
        if mark is not None and to_utc(now) < mark.facts_at:
            found.append(SourceCost(entity, "full", f"the instant is before the kept facts' ({_shown(mark.facts_at)}): "
                                                    "a past instant is computed whole", mark))
            continue
        rebuild = _rebuild_reason(config, entity, mark, to_utc(now), counted, rows)
        found.append(SourceCost(entity, "incremental", _caveat(config, entity) + (f"; {rebuild}" if rebuild else ""), mark))
    return found


#: (project config's identity, the campaigns' identities) -> (config, campaigns, ``rows_fingerprint``)
_rows_shapes: dict[tuple, tuple] = {}


def _rows_fingerprint(config: ProjectConfig, campaigns: Sequence[Campaign]) -> str | None:
    """``kept_facts.rows_fingerprint``, rendered once per project version."""
    key = (id(config), tuple(id(c) for c in campaigns))
    entry = _rows_shapes.get(key)
    if entry is None or entry[0] is not config:
        entry = (config, list(campaigns), rows_fingerprint(config, campaigns))
        while len(_rows_shapes) >= 16:  # older project versions fall out
            _rows_shapes.pop(next(iter(_rows_shapes)))
        _rows_shapes[key] = entry
    return entry[2]


def _rebuild_reason(config: ProjectConfig, entity: str, mark: Watermark | None, now: datetime,
                    counted: Sequence[Sequence[str]], rows: str | None) -> str | None:
    if mark is None:
        return "the first pass builds the kept table whole"
    if mark.fingerprint != fingerprint(config, entity, counted, rows):
        return ("the mapping, the order status sets the campaigns count or the windows of the order rows they read "
                "changed since the kept table was built: the next pass rebuilds it whole")
    if now - mark.built_at > REBUILD_AFTER:
        return f"built more than {REBUILD_AFTER.days} day(s) ago: the next pass rebuilds it whole"
    return None


def cost_report(config: ProjectConfig, ledger: Ledger, now: datetime, *, shares: bool,
                campaigns: Sequence[Campaign]) -> list[str]:
    """``engine plan --explain-cost``: how a pass of ``engine run`` at ``now`` reads each source's
    per-customer facts, and what the last refresh read."""
    lines = [f"Per-customer facts of an `engine run` pass at {_shown(now)}:"]
    lines += [f"  {cost.line()}" for cost in costs(config, ledger, now, writes=True, shares=shares, campaigns=campaigns)]
    if "checkouts" in config.sources:
        lines.append("  checkouts: no per-customer facts (each campaign reads only its steps' time window)")
    lines.append("Commands that only read (plan, explain, backtest) compute the facts whole: they keep nothing.")
    return lines


def refresh(warehouse: Database, ledger: Ledger, config: ProjectConfig, now: datetime, *, writes: bool,
            shares: bool, campaigns: Sequence[Campaign]) -> tuple[StateRelations, list[SourceCost]]:
    """Bring every kept fact table up to ``now``; the relations the due queries and the shared order
    rows read them from (compile.QueryBuilder: by the shared facts' name) and what each source cost.
    ``campaigns``: as ``costs``'."""
    planned = costs(config, ledger, now, writes=writes, shares=shares, campaigns=campaigns)
    counted = counted_statuses(campaigns)
    if not any(cost.mode == "incremental" for cost in planned):
        return {}, planned
    done, kept = [], []
    with warehouse.session() as session:
        for cost in planned:
            if cost.mode == "incremental":
                cost = _refresh(session, config, cost.entity, to_utc(now), cost, counted, campaigns)
                kept.append(cost.entity)
            done.append(cost)
    # after every source's kept facts, in one transaction: a crash before it makes the next pass read the rows again
    ledger.save_watermarks([cost.mark for cost in done if cost.mode == "incremental"])
    relations = kept_relations(kept)
    if "orders" in kept and _rows_fingerprint(config, campaigns) is not None:  # kept with the order facts
        relations = {**relations, **kept_rows_relations()}
    return relations, done


def _locked(dialect: str, statements: list[str]) -> list[str]:
    """``statements`` after the dialect's refresh lock: replicas refreshing at once take turns (each
    then deletes what the other inserted before inserting its own, never a customer twice)."""
    lock = dialect_named(dialect).refresh_lock
    return statements if lock is None else [lock.format(key=REFRESH_LOCK_KEY), *statements]


def _newest(value, now: datetime) -> datetime | None:
    return None if value is None else min(parse_stored_timestamp(value), now)


def _one(session: Session, sql: str) -> tuple:
    (row,) = [tuple(r) for rows in session.stream(sql) for r in rows]
    return row


#: Stand-in instants the refresh statements are rendered with once (``_statements``); a pass writes
#: its own instants' text in their place. Dates no shop's SQL holds, to the millisecond.
_STAND_IN_SINCE = datetime(1901, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
_STAND_IN_NOW = datetime(1902, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
#: (project config's identity, statement, entity, counted sets, since given) -> (config, rendered texts)
_rendered: dict[tuple, tuple[ProjectConfig, list[str]]] = {}


def _statements(config: ProjectConfig, what: str, entity: str, counted: Sequence[Sequence[str]],
                since: datetime | None, now: datetime, build) -> list[str]:
    """``build(since, now)``'s statements (sqlglot expressions), built and rendered once per project
    version with stand-in instants (their sqlglot work cost more than the statements themselves at
    every pass) and given the pass's instants as the literals ``compile.ts`` writes."""
    key = (id(config), what, entity, tuple(map(tuple, counted)), since is None)
    entry = _rendered.get(key)
    if entry is None or entry[0] is not config:
        built = build(None if since is None else _STAND_IN_SINCE, _STAND_IN_NOW)
        entry = (config, [render_sql(statement, config.dialect) for statement in built])
        while len(_rendered) >= 64:  # older project versions fall out
            _rendered.pop(next(iter(_rendered)))
        _rendered[key] = entry
    dialect = config.dialect
    texts = [text.replace(instant_text(_STAND_IN_NOW, dialect), instant_text(now, dialect)) for text in entry[1]]
    if since is not None:
        texts = [text.replace(instant_text(_STAND_IN_SINCE, dialect), instant_text(since, dialect)) for text in texts]
    return texts


def _refresh(session: Session, config: ProjectConfig, entity: str, now: datetime,
             cost: SourceCost, counted: Sequence[Sequence[str]], campaigns: Sequence[Campaign]) -> SourceCost:
    """``entity``'s kept facts brought up to ``now``; the cost with the watermark to save (``refresh`` saves them)."""
    dialect, mark = config.dialect, cost.mark
    touched = None
    rows = _rows_fingerprint(config, campaigns) if entity == "orders" else None
    if _rebuild_reason(config, entity, mark, now, counted, rows) is None:
        since = None if mark.watermark is None else mark.watermark - SAFETY_LAG
        drop = drop_temporary_table(dialect_named(dialect), TOUCHED[entity])
        if drop is not None:
            session.execute(drop)
        try:
            (create,) = _statements(config, "touched" if rows is None else "touched, rows", entity, (), since, now,
                                    lambda since_, now_: [touched_create(config, entity, since_, now_, rows is not None)])
            session.execute(create)
        except WarehouseError:  # a kept table is gone (dropped by hand): built again below
            pass
        else:
            try:
                (summary,) = _statements(config, "summary", entity, (), None, now, lambda *_: [touched_summary(entity)])
                touched, rows_read, newest = _one(session, summary)
                if touched:
                    session.execute_together(_locked(dialect, _statements(
                        config, "replace", entity, counted, None, now,
                        lambda _since, now_: kept_replace(config, entity, now_, counted))
                        + (kept_rows_replace_statements(config, now, campaigns) if rows is not None else [])))
            finally:
                done = drop_temporary_table(dialect_named(dialect), TOUCHED[entity], created=True)
                if done is not None:
                    session.execute(done)
    if touched is None:  # a build: the newest change first, so what changes meanwhile is read again next time
        rows_read, newest = _one(session, render_sql(changes_select(config, entity, None), dialect))
        session.execute_together(_locked(dialect, [kept_drop(entity), render_sql(kept_create(config, entity, now, counted), dialect)]
                                         + (kept_rows_build(config, now, campaigns) if rows is not None else [])))
        (customers,) = _one(session, f"SELECT COUNT(*) FROM {KEPT_FACTS[entity]}")
        mark = Watermark(entity, _newest(newest, now), now, now, fingerprint(config, entity, counted, rows), int(rows_read),
                         int(customers))
        return replace(cost, reason=f"built whole; {cost.reason}", mark=mark)
    newest = _newest(newest, now)
    watermark = mark.watermark if newest is None or (mark.watermark is not None and newest < mark.watermark) else newest
    mark = Watermark(entity, watermark, max(now, mark.facts_at), mark.built_at, mark.fingerprint, int(rows_read),
                     int(touched))
    return replace(cost, mark=mark)
