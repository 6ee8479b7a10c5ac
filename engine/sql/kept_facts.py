"""The SQL of the per-customer facts the engine keeps in its own tables (issue 15 point 5).

A pass's due queries join per-customer facts (compile.SHARED_FACTS: order count, first and last
order, total spent; the newest event and login). Computed from scratch they are a GROUP BY over
the source's whole history at every pass. Where the source maps a change column
(``updated_at``, model.CHANGE_COLUMN) the engine instead keeps them in a permanent table next to
the warehouse's (``KEPT_FACTS``) and recomputes, at each pass, only the customers whose rows
changed. This module builds those statements; when they are used (and the watermark) is
engine.run.incremental's.

A kept row holds a customer's facts as of the instant ``facts_at`` it was computed at (the rows
with ``created_at <= facts_at``, exactly what ``compile.facts_select`` gives at that instant: a
fact over no row is NULL, as a customer missing from the GROUP BY reads through the LEFT JOIN)
plus ``pending_at``, the earliest of their rows dated after it: an order placed in the future of
the pass (a clock ahead, a pre-order) becomes a fact when the instant reaches it, so a later
refresh recomputes such customers too. Touched customers are recomputed from all their rows (not
patched from the delta), so a status update, a changed total or a row that arrives late all end
in the same facts a full computation gives. The order facts also count the orders of each status
set the project's campaigns rank by (``counted``: ``compile.counted_column``, as the pass's
temporary facts do) and, where the dialect finds it in the same scan, the last order's id
(``compile.last_order_in_facts(kept=True)``, ``Dialect.kept_last_by_sql``: the at_risk trigger's key, also
where the pass's own facts leave it out for its cost; a table kept without it has another
``fingerprint``, so the next pass rebuilds it whole), so the shared order rows (``compile.SHARED_ROWS``) read the kept table too
and a pass with kept facts runs no GROUP BY of the orders; the sets are part of the
``fingerprint``, so a campaign that ranks by another set rebuilds the table. Beside them the shared
order rows (``KEPT_ROWS``: the campaigns' windows' orders ranked, ``TriggerKind.shared_rows_select``
over the kept facts) are kept for the same touched customers (``kept_rows_select`` says why that is
exact); their statement is part of the order facts' ``fingerprint``.

Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from collections.abc import Sequence

from sqlglot import exp

from engine.dialects import analyze_kept_table, dialect_named
from engine.model import CHANGE_COLUMN, Campaign, ProjectConfig
from engine.sql.compile import (
    LAST_ORDER_ID, SHARED_FACTS, SHARED_ROWS, QueryBuilder, StateRelations, col, counted_column, last_by,
    last_order_in_facts, lit, render_sql,
)
from engine.sql.triggers.registry import kind_of

#: Permanent fact tables the engine keeps (entity -> table), in the warehouse's database when the
#: ledger shares it. Separate names from the pass's temporary SHARED_FACTS tables.
KEPT_FACTS = {"orders": "engine_kept_order_facts", "events": "engine_kept_event_facts"}
#: The shared per-order rows kept beside the order facts (``compile.SHARED_ROWS`` name -> permanent table),
#: refreshed for the same touched customers (``kept_rows_replace``).
KEPT_ROWS = {"order_rows": "engine_kept_order_rows"}
#: Temporary table of the customers one refresh recomputes (entity -> name).
TOUCHED = {"orders": "engine_touched_orders", "events": "engine_touched_events"}
#: The instant column of each source the facts are computed over.
TIME_COLUMN = {"orders": "created_at", "events": "occurred_at"}
_UTC = timezone.utc
#: Changes when the facts or the way they are kept change: every kept table is then rebuilt.
FACTS_VERSION = 2
#: status sets whose per-customer order count the kept order facts hold (``compile.counted_column``)
Counted = Sequence[Sequence[str]]


def change_expression(config: ProjectConfig, entity: str) -> str | None:
    """The warehouse expression of ``entity``'s change column, or None when it maps none."""
    source = config.sources.get(entity)
    return None if source is None else source.columns.get(CHANGE_COLUMN)


def _sets(entity: str, counted: Counted) -> list[list[str]]:
    """The status sets an ``entity``'s kept facts count, each sorted, in a stable order (orders only)."""
    return sorted({tuple(sorted(set(s))) for s in counted}) if entity == "orders" else []


def fingerprint(config: ProjectConfig, entity: str, counted: Counted = (), rows: str | None = None) -> str:
    """What the kept facts of ``entity`` were computed from (the source's mapping, the status sets
    counted): a different one means a rebuild."""
    source = config.sources[entity]
    shape = [FACTS_VERSION, config.dialect, entity, source.table, source.query, sorted(source.columns.items()),
             [list(s) for s in _sets(entity, counted)]]
    if entity == "orders" and last_order_in_facts(config.dialect, kept=True):  # a table kept without the column is rebuilt
        shape.append(LAST_ORDER_ID)
    if entity == "orders" and rows is not None:  # the kept order rows' statement (``rows_fingerprint``)
        shape.append(rows)
    text = json.dumps(shape)
    return hashlib.sha256(text.encode()).hexdigest()


def _facts_columns(entity: str, row: str, facts_at: exp.Expression, dialect: str,
                   counted: Counted = ()) -> list[exp.Expression]:
    """The facts of ``compile.facts_select`` as of ``facts_at`` (with its ``counted`` columns), as
    conditional aggregates, and ``pending_at``."""
    at = col(row, TIME_COLUMN[entity])
    settled = at <= facts_at

    def when(condition: exp.Expression, value: exp.Expression) -> exp.Case:
        return exp.Case(ifs=[exp.If(this=condition, true=value)])

    if entity == "orders":
        facts = [
            exp.alias_(exp.func("NULLIF", exp.Count(this=when(settled.copy(), exp.Literal.number(1))), exp.Literal.number(0)),
                       "order_count"),
            exp.alias_(exp.Min(this=when(settled.copy(), at.copy())), "first_order_at"),
            exp.alias_(exp.Max(this=when(settled.copy(), at.copy())), "last_order_at"),
            exp.alias_(exp.Sum(this=when(settled.copy(), col(row, "total"))), "total_spent"),
        ]
        if last_order_in_facts(dialect, kept=True):  # of the orders settled by facts_at: the others' instant NULL
            facts.append(exp.alias_(last_by(col(row, "order_id"), when(settled.copy(), at.copy()), dialect, kept=True),
                                    LAST_ORDER_ID))
        facts += [exp.alias_(exp.Sum(this=exp.Case(ifs=[exp.If(
            this=exp.and_(settled.copy(), col(row, "status").isin(*[lit(s) for s in statuses])),
            true=exp.Literal.number(1))], default=exp.Literal.number(0))), counted_column(statuses))
            for statuses in _sets(entity, counted)]
    else:
        login = exp.and_(settled.copy(), col(row, "type").eq(lit("login")))
        facts = [exp.alias_(exp.Max(this=when(settled.copy(), at.copy())), "last_event_at"),
                 exp.alias_(exp.Max(this=when(login, at.copy())), "last_login_at")]
    pending = exp.alias_(exp.Min(this=when(at.copy() > facts_at.copy(), at.copy())), "pending_at")
    return [col(row, "customer_id"), *facts, pending]


def kept_facts_select(config: ProjectConfig, entity: str, facts_at: datetime, touched: str | None = None,
                      counted: Counted = ()) -> exp.Query:
    """One row per customer (every customer with a row; only those in the ``touched`` table when given)
    with their facts as of ``facts_at`` (the orders of each ``counted`` status set counted) and ``pending_at``."""
    builder = QueryBuilder(config, facts_at, config.dialect)
    rows = builder.source(entity)
    query = exp.select(*_facts_columns(entity, "r", builder.ts(facts_at), config.dialect, counted)).from_(exp.to_table(rows).as_("r"))
    if touched is not None:
        query = query.where(col("r", "customer_id").isin(query=exp.select(col("k", "customer_id"))
                                                          .from_(exp.to_table(touched).as_("k"))))
    return builder.with_ctes(query.group_by(col("r", "customer_id")))


def kept_create(config: ProjectConfig, entity: str, facts_at: datetime, counted: Counted = ()) -> exp.Create:
    """CREATE TABLE of the kept facts of every customer (a build: the first pass, or after a rebuild)."""
    return exp.Create(this=exp.to_table(KEPT_FACTS[entity]), kind="TABLE",
                      expression=kept_facts_select(config, entity, facts_at, counted=counted))


def kept_drop(entity: str) -> str:
    return f"DROP TABLE IF EXISTS {KEPT_FACTS[entity]}"


def changes_select(config: ProjectConfig, entity: str, since: datetime | None) -> exp.Query:
    """How many rows changed after ``since`` (all rows when None) and the newest change value among them."""
    builder = QueryBuilder(config, since or datetime.min, config.dialect)
    rows = builder.source(entity)
    changed = col("r", CHANGE_COLUMN)
    query = exp.select(exp.alias_(exp.Count(this=exp.Star()), "rows_read"),
                       exp.alias_(exp.Max(this=changed), "newest")).from_(exp.to_table(rows).as_("r"))
    if since is not None:
        query = query.where(changed.copy() > builder.ts(since))
    return builder.with_ctes(query)


def touched_create(config: ProjectConfig, entity: str, since: datetime | None, now: datetime,
                   rows: bool = False) -> exp.Create:
    """CREATE TEMPORARY TABLE of the customers to recompute, with what was read of each: those with
    rows changed after ``since`` (how many, the newest change) and those with a row dated after their
    facts' instant that ``now`` has reached (``pending_at``). One scan of the source's change column.
    ``rows``: the kept order rows are kept too, and the statement names their table (no row of it), so
    that it fails, and the refresh builds both again, when that table is gone."""
    builder = QueryBuilder(config, now, config.dialect)
    changed = (exp.select(col("r", "customer_id"), exp.alias_(exp.Count(this=exp.Star()), "rows_read"),
                          exp.alias_(exp.Max(this=col("r", CHANGE_COLUMN)), "newest"))
               .from_(builder.scanned(entity, "r")).group_by(col("r", "customer_id")))
    if since is not None:
        changed = changed.where(col("r", CHANGE_COLUMN) > builder.ts(since))
    pending = (exp.select(col("p", "customer_id"), exp.alias_(exp.Literal.number(0), "rows_read"),
                          exp.alias_(exp.Null(), "newest"))
               .from_(exp.to_table(KEPT_FACTS[entity]).as_("p")).where(col("p", "pending_at") <= builder.ts(now)))
    if rows:
        pending = exp.union(pending, exp.select(col("w", "customer_id"), exp.Literal.number(0), exp.Null())
                            .from_(exp.to_table(KEPT_ROWS["order_rows"]).as_("w")).where(exp.false()), distinct=False)
    query = builder.with_ctes(exp.union(changed, pending, distinct=False))
    return exp.Create(this=exp.to_table(TOUCHED[entity]), kind="TABLE", expression=query,
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))


def touched_summary(entity: str) -> exp.Query:
    """The customers to recompute, the rows read and the newest change value read."""
    return exp.select(exp.Count(this=exp.Distinct(expressions=[exp.column("customer_id")])),
                      exp.func("COALESCE", exp.Sum(this=exp.column("rows_read")), exp.Literal.number(0)),
                      exp.Max(this=exp.column("newest"))).from_(exp.to_table(TOUCHED[entity]))


def kept_replace(config: ProjectConfig, entity: str, facts_at: datetime, counted: Counted = ()) -> list[exp.Expression]:
    """DELETE the touched customers' kept rows and INSERT them recomputed as of ``facts_at``
    (one transaction: the caller's)."""
    kept, touched = KEPT_FACTS[entity], TOUCHED[entity]
    delete = exp.delete(kept).where(exp.column("customer_id").isin(
        query=exp.select(col("k", "customer_id")).from_(exp.to_table(touched).as_("k"))))
    insert = exp.insert(kept_facts_select(config, entity, facts_at, touched, counted), kept)
    return [delete, insert]


def kept_relations(entities: list[str]) -> StateRelations:
    """The relations the due queries read ``entities``' facts from instead of computing them
    (compile.QueryBuilder._facts: by the SHARED_FACTS name, as engine state)."""
    return {SHARED_FACTS[entity]: exp.to_table(KEPT_FACTS[entity]) for entity in entities}


def row_readers(campaigns: Sequence[Campaign]) -> list[Campaign]:
    """The campaigns reading the shared order rows (one trigger kind per shared table, as a pass builds them)."""
    readers = [c for c in campaigns if kind_of(c.trigger).shared_rows == "order_rows" and kind_of(c.trigger).reads_shared_rows(c)]
    return readers if len({kind_of(c.trigger).name for c in readers}) == 1 else []


def kept_rows_select(config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign],
                     touched: str | None = None) -> exp.Query | None:
    """The shared order rows of ``campaigns`` at ``now`` (``TriggerKind.shared_rows_select``) over the kept
    order facts, only the customers of the ``touched`` table when given; None when no campaign reads them.

    Kept exact from the delta: a customer's rows depend on their orders in the window and their order
    facts only; a customer none of whose rows changed and none of whose orders came due (``pending_at``)
    keeps rows a computation at ``now`` gives too, but for those older than the window's start now, which
    every reader leaves out by its own window. Rows are recomputed for the customers the facts are."""
    readers = row_readers(campaigns)
    if not readers:
        return None
    builder = QueryBuilder(config, now, config.dialect, shared_facts=True, state=kept_relations(["orders"]))
    builder.whole_scans = touched is None
    rows = kind_of(readers[0].trigger).shared_rows_select(builder, readers)
    if rows is None:
        return None
    if touched is not None:
        rows = rows.where(col("n", "customer_id").isin(
            query=exp.select(col("k", "customer_id")).from_(exp.to_table(touched).as_("k"))))
    return builder.with_ctes(rows)


def rows_fingerprint(config: ProjectConfig, campaigns: Sequence[Campaign]) -> str | None:
    """What the kept order rows are computed by (their statement at a fixed instant: the readers' windows,
    status sets and columns), part of the order facts' ``fingerprint``; None when no campaign reads them."""
    query = kept_rows_select(config, datetime(2000, 1, 1, tzinfo=_UTC), campaigns)
    return None if query is None else render_sql(query, config.dialect)


def kept_rows_build(config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign]) -> list[str]:
    """DROP and CREATE TABLE of the kept order rows at ``now`` (none when no campaign reads them), rendered."""
    query = kept_rows_select(config, now, campaigns)
    if query is None:
        return []
    create = exp.Create(this=exp.to_table(KEPT_ROWS["order_rows"]), kind="TABLE", expression=query)
    # analysed where the planner needs it, as the pass's own order rows were (their readers' plans at 1M on
    # PostgreSQL without statistics: second-order 0.02 -> 0.41 s, order-follow-up 0.14 -> 0.32 s server CPU)
    return [f"DROP TABLE IF EXISTS {KEPT_ROWS['order_rows']}", render_sql(create, config.dialect),
            *analyze_kept_table(dialect_named(config.dialect), KEPT_ROWS["order_rows"])]


def kept_rows_delete() -> exp.Delete:
    """DELETE the touched customers' kept order rows (``kept_rows_replace``'s first)."""
    return exp.delete(KEPT_ROWS["order_rows"]).where(exp.column("customer_id").isin(
        query=exp.select(col("k", "customer_id")).from_(exp.to_table(TOUCHED["orders"]).as_("k"))))


def kept_rows_insert(config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign]) -> exp.Insert | None:
    """INSERT the touched customers' kept order rows computed at ``now`` (``kept_rows_replace``'s second);
    None when no campaign reads them. ``now``: an instant or a ``PassInstant`` (compiled once:
    sql.prepared.kept_rows_replace_statements)."""
    query = kept_rows_select(config, now, campaigns, TOUCHED["orders"])
    return None if query is None else exp.insert(query, KEPT_ROWS["order_rows"])


def kept_rows_replace(config: ProjectConfig, now: datetime, campaigns: Sequence[Campaign]) -> list[str]:
    """DELETE the touched customers' kept order rows and INSERT them computed at ``now`` (after the facts'
    ``kept_replace``, in its transaction), rendered; none when no campaign reads them."""
    insert = kept_rows_insert(config, now, campaigns)
    return [] if insert is None else [render_sql(statement, config.dialect) for statement in (kept_rows_delete(), insert)]


def kept_rows_relations() -> StateRelations:
    """The relation the due queries read the shared order rows from instead of the pass's table
    (compile.QueryBuilder.shared_rows: by the SHARED_ROWS name)."""
    return {SHARED_ROWS[name]: exp.to_table(table) for name, table in KEPT_ROWS.items()}
