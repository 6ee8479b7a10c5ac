"""Campaign -> sqlglot AST of its due rows, rendered per dialect.

The warehouse does the set work: one query per campaign returns, for every
step, the (customer, trigger instance) pairs whose step is due at ``now`` and
still inside its freshness window (plus the stale horizon, so late messages
can be recorded as skipped). Time cut-offs are computed here in Python and
inlined as timestamp literals, so the SQL needs no dialect-specific date
arithmetic; due times (trigger + delay) are added back in Python per row.

Each entity is first read through a CTE that renames the shop's columns to
the engine's canonical names (the source mapping, R-O5), so everything after
it speaks one vocabulary. Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlglot
from sqlglot import exp

from .clock import sql_timestamp_text, to_utc
from .filters import bind_filter, parse_filter, referenced_attributes
from .model import (
    CUSTOMER_FACTS, ENTITY_COLUMNS, AtRisk, Campaign, CheckoutAbandoned, EntitySource,
    OrderPlaced, ProjectConfig, Step,
)
from .validate import filter_attributes

LEDGER_TABLE = "engine_ledger"
ENTRIES_TABLE = "engine_entries"
CUSTOMER_PREFIX = "cust__"

#: The columns every due row starts with, in this order.
DUE_COLUMNS = ("campaign", "step", "customer_id", "trigger_key", "trigger_at")


#: Canonical columns holding instants. SQLite has no timestamp type: there they
#: are normalised to one text format so that comparisons are exact.
TIMESTAMP_COLUMNS = frozenset({"created_at", "completed_at", "occurred_at"})
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%f"


def ts(value: datetime, dialect: str) -> exp.Expression:
    """A timestamp literal that compares exactly with the dialect's timestamp columns."""
    if dialect == "sqlite":
        naive = to_utc(value).replace(tzinfo=None)
        return exp.Literal.string(naive.strftime("%Y-%m-%d %H:%M:%S.") + f"{naive.microsecond // 1000:03d}")
    return exp.cast(exp.Literal.string(sql_timestamp_text(value)), exp.DataType.build("TIMESTAMP"))


def text(value: exp.Expression) -> exp.Expression:
    return exp.cast(value, exp.DataType.build("VARCHAR"))


def col(table: str, name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name), table=exp.to_identifier(table))


@dataclass(frozen=True)
class StepWindow:
    """Which trigger times make a step due now: ``earliest <= trigger_at <= due_cutoff``."""

    due_cutoff: datetime
    earliest: datetime | None


def step_window(step: Step, now: datetime, stale_horizon: timedelta) -> StepWindow:
    due_cutoff = now - step.delay
    if step.freshness is None:
        return StepWindow(due_cutoff, None)
    return StepWindow(due_cutoff, due_cutoff - step.freshness - stale_horizon)


def source_select(source: EntitySource, dialect: str) -> exp.Select:
    """SELECT <shop expression> AS <canonical column>, ... FROM <shop table or query>."""
    required, optional = ENTITY_COLUMNS[source.entity]
    projections = []
    names = list(required) + [c for c in optional if c not in required]
    if source.entity == "customers":
        names += [c for c in source.columns if c not in names]
    for name in names:
        if name in source.columns:
            value = sqlglot.parse_one(source.columns[name], read=dialect)
            if dialect == "sqlite" and name in TIMESTAMP_COLUMNS:
                value = exp.Anonymous(this="STRFTIME", expressions=[exp.Literal.string(SQLITE_TIMESTAMP_FORMAT), value])
        else:
            value = exp.Null()
        projections.append(exp.alias_(value, exp.to_identifier(name)))
    if source.query is not None:
        origin: exp.Expression = sqlglot.parse_one(source.query, read=dialect).subquery("src")
    else:
        origin = exp.to_table(source.table, dialect=dialect)
    return exp.select(*projections).from_(origin)


class _QueryBuilder:
    """Collects the CTEs one campaign query needs, each added once."""

    def __init__(self, config: ProjectConfig, now: datetime, dialect: str):
        self.config = config
        self.now = now
        self.dialect = dialect
        self.ctes: dict[str, exp.Expression] = {}

    def ts(self, value: datetime) -> exp.Expression:
        return ts(value, self.dialect)

    def source(self, entity: str) -> str:
        name = f"src_{entity}"
        if name not in self.ctes:
            self.ctes[name] = source_select(self.config.sources[entity], self.dialect)
        return name

    def customer_facts(self) -> str:
        name = "customer_facts"
        if name not in self.ctes:
            orders = self.source("orders")
            self.ctes[name] = (
                exp.select(
                    col("o", "customer_id"),
                    exp.alias_(exp.Count(this=exp.Star()), "order_count"),
                    exp.alias_(exp.Min(this=col("o", "created_at")), "first_order_at"),
                    exp.alias_(exp.Max(this=col("o", "created_at")), "last_order_at"),
                    exp.alias_(exp.Sum(this=col("o", "total")), "total_spent"),
                )
                .from_(exp.to_table(orders).as_("o"))
                .where(col("o", "created_at") <= self.ts(self.now))
                .group_by(col("o", "customer_id"))
            )
        return name

    def with_ctes(self, body: exp.Select) -> exp.Select:
        for name, query in self.ctes.items():
            body = body.with_(name, as_=query)
        return body


def _trigger_cte(builder: _QueryBuilder, campaign: Campaign) -> exp.Select:
    trigger = campaign.trigger
    now = builder.now
    if isinstance(trigger, OrderPlaced):
        orders = builder.source("orders")
        projections = [
            col("o", "customer_id"),
            exp.alias_(text(col("o", "order_id")), "trigger_key"),
            exp.alias_(col("o", "created_at"), "trigger_at"),
        ]
        if trigger.nth is not None:
            rank = exp.Window(
                this=exp.RowNumber(),
                partition_by=[col("o", "customer_id")],
                order=exp.Order(expressions=[exp.Ordered(this=col("o", "created_at")), exp.Ordered(this=col("o", "order_id"))]),
            )
            projections.append(exp.alias_(rank, "nth"))
        conditions = [col("o", "created_at") <= builder.ts(now)]
        if trigger.statuses:
            conditions.append(col("o", "status").isin(*[exp.Literal.string(s) for s in trigger.statuses]))
        return exp.select(*projections).from_(exp.to_table(orders).as_("o")).where(*conditions)
    if isinstance(trigger, CheckoutAbandoned):
        checkouts = builder.source("checkouts")
        completed = col("k", "completed_at")
        return (
            exp.select(
                col("k", "customer_id"),
                exp.alias_(text(col("k", "checkout_id")), "trigger_key"),
                exp.alias_(col("k", "created_at"), "trigger_at"),
            )
            .from_(exp.to_table(checkouts).as_("k"))
            .where(
                col("k", "created_at") <= builder.ts(now),
                exp.or_(completed.is_(exp.Null()), completed > builder.ts(now)),
            )
        )
    if isinstance(trigger, AtRisk):
        _at_risk_members(builder, trigger)
        customers = builder.source("customers")
        entries = exp.to_table(ENTRIES_TABLE).as_("e")
        entered = (
            exp.select(col("c", "customer_id"), col("e", "trigger_key"), exp.alias_(col("e", "entered_at"), "trigger_at"))
            .from_(entries)
            .join(exp.to_table(customers).as_("c"), on=text(col("c", "customer_id")).eq(col("e", "customer_id")))
            .where(
                col("e", "campaign").eq(exp.Literal.string(campaign.name)),
                col("e", "entered_at") <= builder.ts(now),
            )
        )
        entering = (
            exp.select(col("m", "customer_id"), col("m", "trigger_key"), exp.alias_(builder.ts(now), "trigger_at"))
            .from_(exp.to_table("at_risk_members").as_("m"))
            .where(exp.not_(exp.Exists(this=_entry_exists(campaign))))
        )
        return exp.union(entered, entering, distinct=False)
    raise TypeError(f"unknown trigger {trigger!r}")  # pragma: no cover


def _entry_exists(campaign: Campaign) -> exp.Select:
    return (
        exp.select(exp.Literal.number(1))
        .from_(exp.to_table(ENTRIES_TABLE).as_("e"))
        .where(
            col("e", "campaign").eq(exp.Literal.string(campaign.name)),
            col("e", "customer_id").eq(text(col("m", "customer_id"))),
            col("e", "trigger_key").eq(col("m", "trigger_key")),
        )
    )


def _at_risk_members(builder: _QueryBuilder, trigger: AtRisk) -> None:
    """CTEs ending in ``at_risk_members(customer_id, trigger_key)``; the key is the last order."""
    orders = builder.source("orders")
    now = builder.now
    latest_first = exp.Window(
        this=exp.RowNumber(),
        partition_by=[col("o", "customer_id")],
        order=exp.Order(expressions=[
            exp.Ordered(this=col("o", "created_at"), desc=True),
            exp.Ordered(this=col("o", "order_id"), desc=True),
        ]),
    )
    builder.ctes["last_orders"] = (
        exp.select(
            col("o", "customer_id"),
            exp.alias_(text(col("o", "order_id")), "last_order_key"),
            exp.alias_(col("o", "created_at"), "last_order_at"),
            exp.alias_(latest_first, "recency_rank"),
        )
        .from_(exp.to_table(orders).as_("o"))
        .where(col("o", "created_at") <= builder.ts(now))
    )
    position = exp.Window(
        this=exp.RowNumber(),
        order=exp.Order(expressions=[exp.Ordered(this=col("l", "last_order_at")), exp.Ordered(this=col("l", "customer_id"))]),
    )
    builder.ctes["active_ranked"] = (
        exp.select(
            col("l", "customer_id"),
            col("l", "last_order_key"),
            exp.alias_(position, "position"),
            exp.alias_(exp.Window(this=exp.Count(this=exp.Star())), "population"),
        )
        .from_(exp.to_table("last_orders").as_("l"))
        .where(
            col("l", "recency_rank").eq(1),
            col("l", "last_order_at") > builder.ts(now - trigger.window),
        )
    )
    builder.ctes["at_risk_members"] = (
        exp.select(col("r", "customer_id"), exp.alias_(col("r", "last_order_key"), "trigger_key"))
        .from_(exp.to_table("active_ranked").as_("r"))
        .where(exp.Mul(this=col("r", "position"), expression=exp.Literal.number(100))
               <= exp.Mul(this=col("r", "population"), expression=exp.Literal.number(trigger.percent)))
    )


def _attribute(name: str) -> exp.Expression:
    if name in ("order_count", "total_spent"):
        return exp.func("COALESCE", col("f", name), exp.Literal.number(0))
    if name in CUSTOMER_FACTS:
        return col("f", name)
    return col("c", name)


def _stop_condition(builder: _QueryBuilder, stop: str) -> exp.Expression:
    if stop == "ordered_again":
        orders = builder.source("orders")
        later_order = (
            exp.select(exp.Literal.number(1))
            .from_(exp.to_table(orders).as_("o2"))
            .where(
                col("o2", "customer_id").eq(col("t", "customer_id")),
                col("o2", "created_at") > col("t", "trigger_at"),
                col("o2", "created_at") <= builder.ts(builder.now),
            )
        )
        return exp.not_(exp.Exists(this=later_order))
    raise ValueError(f"unknown stop condition {stop}")  # pragma: no cover


def _ledger_absent(campaign: Campaign, step: Step) -> exp.Expression:
    recorded = (
        exp.select(exp.Literal.number(1))
        .from_(exp.to_table(LEDGER_TABLE).as_("l"))
        .where(
            col("l", "campaign").eq(exp.Literal.string(campaign.name)),
            col("l", "step").eq(exp.Literal.string(step.id)),
            col("l", "customer_id").eq(text(col("t", "customer_id"))),
            col("l", "trigger_key").eq(col("t", "trigger_key")),
        )
    )
    return exp.not_(exp.Exists(this=recorded))


def due_query(campaign: Campaign, config: ProjectConfig, now: datetime, *, exclude_ledger: bool,
              dialect: str | None = None) -> exp.Select:
    """All due (and recently stale) rows of every step of ``campaign`` at ``now``.

    Columns: DUE_COLUMNS, then ``cust__<attribute>`` for every customer attribute.
    With ``exclude_ledger`` the rows already in the ledger are left out in SQL
    (the ledger shares the warehouse's database). ``dialect`` defaults to the
    warehouse's; the AST is built for it (SQLite needs its own timestamp form).
    """
    builder = _QueryBuilder(config, now, dialect or config.dialect)
    customers = builder.source("customers")
    builder.ctes["trigger_instances"] = _trigger_cte(builder, campaign)
    attributes = filter_attributes(config)
    campaign_filter = parse_filter(campaign.audience, attributes) if campaign.audience else None
    selects = []
    for step in campaign.steps:
        window = step_window(step, now, config.stale_horizon)
        filters = [f for f in (campaign_filter, parse_filter(step.audience, attributes) if step.audience else None) if f is not None]
        uses_facts = any(referenced_attributes(f) & set(CUSTOMER_FACTS) for f in filters)
        conditions: list[exp.Expression] = [col("t", "trigger_at") <= builder.ts(window.due_cutoff)]
        if window.earliest is not None:
            conditions.append(col("t", "trigger_at") >= builder.ts(window.earliest))
        if isinstance(campaign.trigger, OrderPlaced) and campaign.trigger.nth is not None:
            conditions.append(col("t", "nth").eq(campaign.trigger.nth))
        conditions += [_stop_condition(builder, stop) for stop in campaign.stop]
        conditions += [bind_filter(tree, _attribute) for tree in filters]
        if exclude_ledger:
            conditions.append(_ledger_absent(campaign, step))
        query = (
            exp.select(
                exp.alias_(exp.Literal.string(campaign.name), "campaign"),
                exp.alias_(exp.Literal.string(step.id), "step"),
                exp.alias_(text(col("t", "customer_id")), "customer_id"),
                col("t", "trigger_key"),
                col("t", "trigger_at"),
                *[exp.alias_(col("c", a), exp.to_identifier(CUSTOMER_PREFIX + a)) for a in config.customer_attributes()],
            )
            .from_(exp.to_table("trigger_instances").as_("t"))
            .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")))
        )
        if uses_facts:
            facts = builder.customer_facts()
            query = query.join(exp.to_table(facts).as_("f"), on=col("f", "customer_id").eq(col("t", "customer_id")), join_type="left")
        query = query.where(*conditions)
        selects.append(query)
    body = selects[0]
    for other in selects[1:]:
        body = exp.union(body, other, distinct=False)
    if not isinstance(body, exp.Select):
        body = exp.select("*").from_(body.subquery("due_steps"))
    return builder.with_ctes(body)


def entries_insert(campaign: Campaign, config: ProjectConfig, now: datetime) -> exp.Insert | None:
    """For segment triggers: INSERT the customers who entered the segment since the last pass."""
    if not isinstance(campaign.trigger, AtRisk):
        return None
    builder = _QueryBuilder(config, now, config.dialect)
    _at_risk_members(builder, campaign.trigger)
    select = (
        exp.select(
            exp.Literal.string(campaign.name),
            text(col("m", "customer_id")),
            col("m", "trigger_key"),
            builder.ts(now),
        )
        .from_(exp.to_table("at_risk_members").as_("m"))
        .where(exp.not_(exp.Exists(this=_entry_exists(campaign))))
    )
    return exp.insert(builder.with_ctes(select), ENTRIES_TABLE, columns=["campaign", "customer_id", "trigger_key", "entered_at"])


def render_sql(expression: exp.Expression, dialect: str, pretty: bool = False) -> str:
    return expression.sql(dialect=dialect, pretty=pretty)
