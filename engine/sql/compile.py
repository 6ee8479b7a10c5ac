"""Campaign -> sqlglot AST of its due rows, rendered per dialect.

The warehouse does the set work: one query per campaign returns, for every
step, the (customer, trigger instance) pairs whose step is due at ``now``
(within a conservative time window that also covers the stale horizon, so
late messages can be recorded as skipped), with the stop condition that ended
the series if any and, per variant, whether its audience matches. Time
cut-offs are computed here in Python and inlined as timestamp literals, so the
SQL needs no dialect-specific date arithmetic; exact due times (delay, local
send time, yearly dates) are computed back in Python per row.

Each entity is first read through a CTE that renames the shop's columns to
the engine's canonical names (the source mapping, R-O5), so everything after
it speaks one vocabulary. Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Mapping, Sequence
from zoneinfo import ZoneInfo

import sqlglot
from sqlglot import exp

from engine.clock import sql_timestamp_text, to_utc
from engine.decide import customer_zone
from engine.spec.filter_types import filter_attributes, segment_attributes
from engine.spec.filters import bind_filter, parse_filter
from engine.state.tables import ENTRIES_TABLE, LEDGER_TABLE, TAGS_TABLE
from engine.model import (
    CUSTOMER_FACTS, ENTITY_COLUMNS, Anniversary, AtRisk, Campaign, CheckoutAbandoned, EntitySource, Event,
    LastActivity, OrderDate, OrderPlaced, ProjectConfig, Registration, Step,
)

#: Where the engine state a query joins lives when the ledger is in another database: ledger table
#: name (ENTRIES_TABLE, TAGS_TABLE) -> a temporary table, or a SELECT (over VALUES) read as a CTE.
StateRelations = Mapping[str, exp.Expression]

CUSTOMER_PREFIX = "cust__"
VARIANT_PREFIX = "variant_match_"
#: Per-customer fact tables a reconciler pass materialises once and every campaign query of
#: the pass joins (entity they are derived from -> temporary table name).
SHARED_FACTS = {"orders": "engine_order_facts", "events": "engine_event_facts"}
#: Dialects whose sessions have CREATE TEMPORARY TABLE ... AS; elsewhere each query computes its facts itself.
TEMP_TABLE_DIALECTS = frozenset({"duckdb", "sqlite", "postgres", "snowflake"})

#: The columns every due row starts with, in this order.
DUE_COLUMNS = ("campaign", "step", "customer_id", "trigger_key", "trigger_at", "stopped_by")

#: Canonical columns holding instants. SQLite has no timestamp type: there they
#: are normalised to one text format so that comparisons are exact.
INSTANT_COLUMNS = frozenset({"created_at", "completed_at", "occurred_at", "unsubscribed_at", "delivery_date"})
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%f"


def ts(value: datetime, dialect: str) -> exp.Expression:
    """A timestamp literal that compares exactly with the dialect's timestamp columns."""
    if dialect == "sqlite":
        naive = to_utc(value).replace(tzinfo=None)
        return exp.Literal.string(naive.strftime("%Y-%m-%d %H:%M:%S.") + f"{naive.microsecond // 1000:03d}")
    return exp.cast(exp.Literal.string(sql_timestamp_text(value)), _type("TIMESTAMP"))


def text(value: exp.Expression) -> exp.Expression:
    return exp.cast(value, _type("VARCHAR"))


def col(table: str, name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name), table=exp.to_identifier(table))


def lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def day_text(value: exp.Expression, dialect: str) -> exp.Expression:
    """'YYYY-MM-DD' of an instant, the same text in every dialect."""
    if dialect == "sqlite":
        return exp.Substring(this=value, start=exp.Literal.number(1), length=exp.Literal.number(10))
    return text(exp.cast(value, _type("DATE")))


def month_day(value: exp.Expression, dialect: str) -> exp.Expression:
    """month * 100 + day of a date, as an integer (0229 = 229)."""
    if dialect == "sqlite":
        return exp.cast(exp.Anonymous(this="STRFTIME", expressions=[lit("%m%d"), value]), _type("INT"))
    return exp.Add(this=exp.Mul(this=exp.Month(this=value), expression=exp.Literal.number(100)), expression=exp.Day(this=value))


def exists(query: exp.Select) -> exp.Exists:
    return exp.Exists(this=query)


def one_from(table: str, alias: str) -> exp.Select:
    return exp.select(exp.Literal.number(1)).from_(exp.to_table(table).as_(alias))


#: How much later than trigger + delay a local send time can be: the next time the local clock
#: shows it is at most a day plus a DST shift away (1 h; 2 h in Antarctica/Troll). A slack of
#: exactly one day lost stale rows on fall-back days; 27 h keeps an hour of margin. Every row in
#: the slack is fetched and decided in Python each pass, so wider costs every pass.
SEND_AT_SLACK = timedelta(hours=27)


@dataclass(frozen=True)
class StepWindow:
    """Which trigger times may make a step due now: ``earliest <= trigger_at <= due_cutoff``.

    The window is conservative (a local send time can only push the due time
    later, by less than a day plus a DST shift: up to 25 h on a fall-back day);
    Python drops rows that are not due yet.
    """

    due_cutoff: datetime
    earliest: datetime | None


def step_window(step: Step, now: datetime, stale_horizon: timedelta) -> StepWindow:
    due_cutoff = now - step.delay
    if step.freshness is None:
        return StepWindow(due_cutoff, None)
    slack = SEND_AT_SLACK if step.send_at is not None else timedelta(0)
    return StepWindow(due_cutoff, due_cutoff - step.freshness - stale_horizon - slack)


#: How far the per-zone window (``zone_window``) is widened on each side. Rows inside the margin
#: are decided in Python like any other; it only has to cover DST oddities of the local clock.
ZONE_MARGIN = timedelta(hours=3)
#: More distinct time zone values than this in the customers and the plan keeps the plain window.
MAX_ZONES = 500


def _last_local_time(before: datetime, clock, zone: ZoneInfo, inclusive: bool) -> datetime:
    """The latest instant (UTC) at or before ``before`` (strictly before unless ``inclusive``)
    at which the local clock in ``zone`` shows ``clock``."""
    day = before.astimezone(zone).date() + timedelta(days=1)
    while True:
        candidate = datetime.combine(day, clock, tzinfo=zone).astimezone(before.tzinfo)
        if candidate < before or (inclusive and candidate == before):
            return candidate
        day -= timedelta(days=1)


def zone_window(step: Step, now: datetime, stale_horizon: timedelta, zone: ZoneInfo) -> StepWindow:
    """``step_window`` for customers in one time zone: far tighter for a step with ``send_at``.

    A message is due once the local clock has shown ``send_at`` at or after
    trigger + delay, so every trigger up to the last local ``send_at`` before
    ``now`` (minus the delay) is due, and none after it; likewise it is stale
    beyond the stale horizon exactly when that local time came before
    ``now - freshness - horizon``. The plain window must allow any zone (27 h
    of slack on each side, rows Python then drops at every pass); per zone the
    query can cut at those instants, widened by ``ZONE_MARGIN``.
    """
    cutoff = _last_local_time(now, step.send_at, zone, inclusive=True) + ZONE_MARGIN - step.delay
    if step.freshness is None:
        return StepWindow(cutoff, None)
    gone = _last_local_time(now - step.freshness - stale_horizon, step.send_at, zone, inclusive=False)
    return StepWindow(cutoff, gone - ZONE_MARGIN - step.delay)


def anniversary_month_days(window: StepWindow) -> list[int] | None:
    """month*100+day of every date whose midnight falls in ``window``; None = all dates.

    Feb 28 of a common year also stands for Feb 29, so leap-day birthdays come
    round every year.
    """
    if window.earliest is None or window.due_cutoff - window.earliest >= timedelta(days=366):
        return None
    days: set[int] = set()
    day: date = window.earliest.date()
    while day <= window.due_cutoff.date():
        days.add(day.month * 100 + day.day)
        if day.month == 2 and day.day == 28 and not _is_leap(day.year):
            days.add(229)
        day += timedelta(days=1)
    return sorted(days)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@functools.lru_cache(maxsize=None)
def _type(name: str) -> exp.DataType:
    """A parsed type; exp.cast copies it, so one parse serves every query (parsing dominated compiling)."""
    return exp.DataType.build(name)


#: (id of the source, dialect) -> (the source, its parsed SELECT); compiled once, copied per query
_SOURCE_SELECTS: dict[tuple[int, str], tuple[EntitySource, exp.Select]] = {}


def source_select(source: EntitySource, dialect: str) -> exp.Select:
    """SELECT <shop expression> AS <canonical column>, ... FROM <shop table or query>.

    The shop's expressions are parsed once per source and dialect (a pass
    compiles every campaign, each reading the same sources); callers get a copy.
    """
    key = (id(source), dialect)
    cached = _SOURCE_SELECTS.get(key)
    if cached is None or cached[0] is not source:
        cached = _SOURCE_SELECTS[key] = (source, _source_select(source, dialect))
    return cached[1].copy()


def _source_select(source: EntitySource, dialect: str) -> exp.Select:
    required, optional = ENTITY_COLUMNS[source.entity]
    projections = []
    names = list(required) + [c for c in optional if c not in required]
    if source.entity == "customers":
        names += [c for c in source.columns if c not in names]
    for name in names:
        if name in source.columns:
            value = sqlglot.parse_one(source.columns[name], read=dialect)
            if dialect == "sqlite" and name in INSTANT_COLUMNS:
                value = exp.Anonymous(this="STRFTIME", expressions=[lit(SQLITE_TIMESTAMP_FORMAT), value])
        else:
            value = exp.Null()
        projections.append(exp.alias_(value, exp.to_identifier(name)))
    if source.query is not None:
        origin: exp.Expression = sqlglot.parse_one(source.query, read=dialect).subquery("src")
    else:
        origin = exp.to_table(source.table, dialect=dialect)
    return exp.select(*projections).from_(origin)


def _later(value: exp.Expression, than: exp.Expression) -> exp.Expression:
    """``value > than``, false (never NULL) when either side is NULL, so that NOT of it is true."""
    # parenthesised: a filter may negate it (NOT ordered_since_trigger)
    return exp.paren(exp.and_(value.is_(exp.null()).not_(), than.copy().is_(exp.null()).not_(), value.copy() > than.copy()))


def facts_select(builder: "_QueryBuilder", entity: str) -> exp.Select:
    """One row per customer with what ``entity`` says about them up to ``now``.

    orders: order_count, first_order_at, last_order_at, total_spent;
    events: last_event_at (any type), last_login_at. A plain GROUP BY each, the cost of the benchmark's floor.
    """
    now = builder.ts(builder.now)
    if entity == "orders":
        orders = builder.source("orders")
        return (
            exp.select(
                col("o", "customer_id"),
                exp.alias_(exp.Count(this=exp.Star()), "order_count"),
                exp.alias_(exp.Min(this=col("o", "created_at")), "first_order_at"),
                exp.alias_(exp.Max(this=col("o", "created_at")), "last_order_at"),
                exp.alias_(exp.Sum(this=col("o", "total")), "total_spent"),
            )
            .from_(exp.to_table(orders).as_("o"))
            .where(col("o", "created_at") <= now)
            .group_by(col("o", "customer_id"))
        )
    events = builder.source("events")
    login_at = exp.Case(ifs=[exp.If(this=col("e", "type").eq(lit("login")), true=col("e", "occurred_at"))])
    return (
        exp.select(col("e", "customer_id"), exp.alias_(exp.Max(this=col("e", "occurred_at")), "last_event_at"),
                   exp.alias_(exp.Max(this=login_at), "last_login_at"))
        .from_(exp.to_table(events).as_("e"))
        .where(col("e", "occurred_at") <= now)
        .group_by(col("e", "customer_id"))
    )


def shared_facts_create(entity: str, config: ProjectConfig, now: datetime) -> exp.Create:
    """CREATE TEMPORARY TABLE of one ``SHARED_FACTS`` relation, for a pass on one connection."""
    builder = _QueryBuilder(config, now, config.dialect)
    query = builder.with_ctes(facts_select(builder, entity))
    return exp.Create(this=exp.to_table(SHARED_FACTS[entity]), kind="TABLE", expression=query,
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))


#: Where each dialect keeps a session's temporary tables: DROP names it, so that it can never
#: drop a permanent table of the same name (an unqualified DROP does when no temporary one exists).
TEMP_SCHEMAS = {"duckdb": "temp.main", "sqlite": "temp", "postgres": "pg_temp"}


def shared_facts_drop(entity: str, dialect: str) -> str | None:
    """DROP TABLE IF EXISTS for one ``SHARED_FACTS`` table left on a pooled connection by an
    earlier pass; None where the temporary schema cannot be named (nothing is dropped then)."""
    schema = TEMP_SCHEMAS.get(dialect)
    return f"DROP TABLE IF EXISTS {schema}.{SHARED_FACTS[entity]}" if schema else None


def shared_facts_used(query: exp.Expression) -> list[str]:
    """The entities whose ``SHARED_FACTS`` table ``query`` reads (to create before running it)."""
    names = {table.name for table in query.find_all(exp.Table)}
    return [entity for entity, table in SHARED_FACTS.items() if table in names]


class _QueryBuilder:
    """Collects the CTEs one campaign query needs, each added once, and binds filters."""

    def __init__(self, config: ProjectConfig, now: datetime, dialect: str, shared_facts: bool = False,
                 state: StateRelations | None = None):
        self.config = config
        #: ledger table -> the relation holding its rows in the warehouse (see ``state_table``)
        self.state = state or {}
        self.now = now
        self.dialect = dialect
        self.ctes: dict[str, exp.Expression] = {}
        #: the query reads per-customer facts (joined as ``f`` for orders, ``fe`` for events)
        self.uses_facts = False
        self.uses_event_facts = False
        #: facts come from the pass's shared tables (``SHARED_FACTS``) instead of CTEs of this query
        self.shared_facts = shared_facts

    def ts(self, value: datetime) -> exp.Expression:
        return ts(value, self.dialect)

    def source(self, entity: str) -> str:
        name = f"src_{entity}"
        if name not in self.ctes:
            self.ctes[name] = source_select(self.config.sources[entity], self.dialect)
        return name

    def state_table(self, name: str) -> str:
        """Where this query reads the ledger's table ``name`` (entries, tags): the table itself when the
        ledger shares the warehouse's database; else the pass's copy (``state.shipping``), a temporary
        table or a SELECT over VALUES that becomes a CTE of this query."""
        relation = self.state.get(name)
        if relation is None:
            return name
        if isinstance(relation, exp.Table):
            return relation.name
        cte = f"{name}_rows"
        if cte not in self.ctes:
            self.ctes[cte] = relation.copy()
        return cte

    def customer_facts(self) -> str:
        """Per-customer order facts as of ``now``: the shared pass table, or a CTE of this query."""
        return self._facts("orders")

    def event_facts(self) -> str:
        """Per-customer time of the newest event as of ``now`` (for came_back)."""
        return self._facts("events")

    def _facts(self, entity: str) -> str:
        if self.shared_facts:
            return SHARED_FACTS[entity]
        name = f"{entity[:-1]}_facts"
        if name not in self.ctes:
            self.ctes[name] = facts_select(self, entity)
        return name

    def with_ctes(self, body: exp.Query) -> exp.Query:
        for name, query in self.ctes.items():
            body = body.with_(name, as_=query, materialized=self._materialized(name), copy=False)  # built fresh: no copy
        return body

    def _materialized(self, name: str) -> bool | None:
        """``False`` (NOT MATERIALIZED) for DuckDB's source CTEs, else the database's choice.

        DuckDB materialises a CTE that is read twice - ``src_customers`` is, by
        the trigger and by the customer join - and holds every row and column of
        it in memory while the query runs: 200 MB per million customers. A
        source CTE only renames columns, so reading the table again costs a scan
        and lets the rows stream. Other dialects keep their default (PostgreSQL
        spills a materialised CTE to disk; others may not know the keyword).
        """
        return False if self.dialect == "duckdb" and name.startswith("src_") else None

    # --- what happened after the trigger (stop conditions, since-trigger facts) ---

    def ordered_after_trigger(self) -> exp.Expression:
        """An order after the trigger (and by ``now``) exists exactly when the newest order by
        ``now`` is after the trigger: a column comparison on the shared facts, not a scan per row."""
        self.uses_facts = True
        return _later(col("f", "last_order_at"), col("t", "trigger_at"))

    def active_after_trigger(self) -> exp.Expression:
        self.uses_event_facts = True
        return _later(col("fe", "last_event_at"), col("t", "trigger_at"))

    def join_facts(self, query: exp.Select, customer: exp.Column, orders: bool | None = None,
                   events: bool | None = None) -> exp.Select:
        """LEFT JOIN the fact relations (order facts as ``f``, event facts as ``fe``) on ``customer``:
        by default those this query's filters and stop conditions used."""
        if self.uses_facts if orders is None else orders:
            query = query.join(exp.to_table(self.customer_facts()).as_("f"),
                               on=col("f", "customer_id").eq(customer.copy()), join_type="left")
        if self.uses_event_facts if events is None else events:
            query = query.join(exp.to_table(self.event_facts()).as_("fe"),
                               on=col("fe", "customer_id").eq(customer.copy()), join_type="left")
        return query

    def stop_condition(self, stop: str) -> exp.Expression:
        if stop == "ordered_again":
            return self.ordered_after_trigger()
        if stop == "came_back":
            return self.active_after_trigger()
        if stop == "unsubscribed":
            unsubscribed = col("c", "unsubscribed_at")
            return exp.and_(unsubscribed.is_(exp.null()).not_(), unsubscribed <= self.ts(self.now))
        raise ValueError(f"unknown stop condition {stop}")  # pragma: no cover

    # --- filters ---------------------------------------------------------------

    def attribute(self, name: str) -> exp.Expression:
        if name in ("order_count", "total_spent"):
            self.uses_facts = True
            return exp.func("COALESCE", col("f", name), exp.Literal.number(0))
        if name == "last_payment_method":
            orders = self.source("orders")
            latest = (
                exp.select(col("o4", "payment_method")).from_(exp.to_table(orders).as_("o4"))
                .where(col("o4", "customer_id").eq(col("c", "customer_id")), col("o4", "created_at") <= self.ts(self.now))
                .order_by(exp.Ordered(this=col("o4", "created_at"), desc=True), exp.Ordered(this=col("o4", "order_id"), desc=True))
                .limit(1)
            )
            return latest.subquery()
        if name in CUSTOMER_FACTS:
            self.uses_facts = True
            return col("f", name)
        if name == "ordered_since_trigger":
            return self.ordered_after_trigger()
        if name == "came_back_since_trigger":
            return self.active_after_trigger()
        return col("c", name)

    def function(self, name: str, argument: exp.Literal) -> exp.Expression:
        if name == "days_ago":
            return self.ts(self.now - timedelta(days=float(argument.this)))
        if name == "hours_ago":
            return self.ts(self.now - timedelta(hours=float(argument.this)))
        if name == "has_tag":
            return exists(one_from(self.state_table(TAGS_TABLE), "g").where(
                col("g", "customer_id").eq(text(col("c", "customer_id"))), col("g", "tag").eq(lit(argument.this))))
        if name == "bought_category":
            orders, items = self.source("orders"), self.source("order_items")
            return exists(
                one_from(orders, "o3")
                .join(exp.to_table(items).as_("i3"), on=col("i3", "order_id").eq(col("o3", "order_id")))
                .where(col("o3", "customer_id").eq(col("c", "customer_id")),
                       col("i3", "category").eq(lit(argument.this)),
                       col("o3", "created_at") <= self.ts(self.now)))
        raise ValueError(f"unknown function {name}")  # pragma: no cover

    def bind(self, text_: str, attributes: list[str]) -> exp.Expression:
        return bind_filter(parse_filter(text_, attributes), self.attribute, self.function)


# --- trigger instances -----------------------------------------------------------


def _trigger_cte(builder: _QueryBuilder, campaign: Campaign, earliest: datetime | None = None) -> exp.Query:
    """trigger_instances(customer_id, trigger_key, trigger_at [, nth | anniversary]).

    ``earliest``: no step can use an instance triggered before it (the steps'
    time windows), so the nth-order rank only needs the orders from then on
    plus a count of each customer's earlier orders - a GROUP BY instead of a
    window sorted over every order.
    """
    trigger = campaign.trigger
    now = builder.ts(builder.now)
    if isinstance(trigger, OrderPlaced):
        orders = builder.source("orders")
        projections = [
            col("o", "customer_id"),
            exp.alias_(text(col("o", "order_id")), "trigger_key"),
            exp.alias_(col("o", "created_at"), "trigger_at"),
        ]
        conditions = [col("o", "created_at") <= now]
        if trigger.statuses:
            conditions.append(col("o", "status").isin(*[lit(s) for s in trigger.statuses]))
        query = exp.select(*projections).from_(exp.to_table(orders).as_("o"))
        if trigger.nth is not None:
            rank: exp.Expression = exp.Window(
                this=exp.RowNumber(),
                partition_by=[col("o", "customer_id")],
                order=exp.Order(expressions=[exp.Ordered(this=col("o", "created_at")), exp.Ordered(this=col("o", "order_id"))]),
            )
            if earliest is not None:
                # every order before ``earliest`` precedes every order from then on
                before = [col("b", "created_at") < builder.ts(earliest)]
                if trigger.statuses:
                    before.append(col("b", "status").isin(*[lit(s) for s in trigger.statuses]))
                builder.ctes["orders_before_window"] = (
                    exp.select(col("b", "customer_id"), exp.alias_(exp.Count(this=exp.Star()), "placed"))
                    .from_(exp.to_table(orders).as_("b")).where(*before).group_by(col("b", "customer_id"))
                )
                query = query.join(exp.to_table("orders_before_window").as_("w"),
                                   on=col("w", "customer_id").eq(col("o", "customer_id")), join_type="left")
                rank = exp.Add(this=exp.func("COALESCE", col("w", "placed"), exp.Literal.number(0)), expression=rank)
                conditions.append(col("o", "created_at") >= builder.ts(earliest))
            query = query.select(exp.alias_(rank, "nth"))
        return query.where(*conditions)
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
            .where(col("k", "created_at") <= now, exp.or_(completed.is_(exp.null()), completed > now))
        )
    if isinstance(trigger, Registration):
        customers = builder.source("customers")
        return (
            exp.select(col("r", "customer_id"), exp.alias_(text(col("r", "customer_id")), "trigger_key"),
                       exp.alias_(col("r", "created_at"), "trigger_at"))
            .from_(exp.to_table(customers).as_("r"))
            .where(col("r", "created_at") <= now)
        )
    if isinstance(trigger, Event):
        events = builder.source("events")
        conditions = [col("e", "type").eq(lit(trigger.type)), col("e", "occurred_at") <= now]
        if trigger.per == "event":
            return (
                exp.select(col("e", "customer_id"), exp.alias_(text(col("e", "event_id")), "trigger_key"),
                           exp.alias_(col("e", "occurred_at"), "trigger_at"))
                .from_(exp.to_table(events).as_("e")).where(*conditions)
            )
        day = day_text(col("e", "occurred_at"), builder.dialect)
        return (
            exp.select(col("e", "customer_id"), exp.alias_(day, "trigger_key"),
                       exp.alias_(exp.Max(this=col("e", "occurred_at")), "trigger_at"))
            .from_(exp.to_table(events).as_("e")).where(*conditions)
            .group_by(col("e", "customer_id"), day.copy())
        )
    if isinstance(trigger, Anniversary):
        customers = builder.source("customers")
        value = col("a", trigger.attribute)
        conditions = [value.is_(exp.null()).not_()]
        if "created_at" in builder.config.sources["customers"].columns:
            # only customers who exist at ``now`` (no look-ahead when ``now`` is in the past: backtest)
            created = col("a", "created_at")
            conditions.append(exp.or_(created.is_(exp.null()), created <= now))
        return (
            exp.select(col("a", "customer_id"), exp.alias_(exp.null(), "trigger_key"),
                       exp.alias_(exp.null(), "trigger_at"), exp.alias_(value.copy(), "anniversary"))
            .from_(exp.to_table(customers).as_("a"))
            .where(*conditions)
        )
    if isinstance(trigger, OrderDate):
        orders = builder.source("orders")
        return (
            exp.select(col("o", "customer_id"), exp.alias_(text(col("o", "order_id")), "trigger_key"),
                       exp.alias_(col("o", trigger.column), "trigger_at"))
            .from_(exp.to_table(orders).as_("o"))
            .where(col("o", trigger.column).is_(exp.null()).not_(), col("o", "created_at") <= now)
        )
    if isinstance(trigger, LastActivity):
        return _last_activity(builder, trigger)
    if isinstance(trigger, AtRisk):
        _at_risk_members(builder, trigger)
        customers = builder.source("customers")
        entered = (
            exp.select(col("c", "customer_id"), col("e", "trigger_key"), exp.alias_(col("e", "entered_at"), "trigger_at"))
            .from_(exp.to_table(builder.state_table(ENTRIES_TABLE)).as_("e"))
            .join(exp.to_table(customers).as_("c"), on=text(col("c", "customer_id")).eq(col("e", "customer_id")))
            .where(col("e", "campaign").eq(lit(campaign.name)), col("e", "entered_at") <= now)
        )
        entering = (
            exp.select(col("m", "customer_id"), col("m", "trigger_key"), exp.alias_(now.copy(), "trigger_at"))
            .from_(exp.to_table("at_risk_members").as_("m"))
            .where(exists(_entry_exists(builder, campaign)).not_())
        )
        return exp.union(entered, entering, distinct=False)
    raise TypeError(f"unknown trigger {trigger!r}")  # pragma: no cover


def _last_activity(builder: _QueryBuilder, trigger: LastActivity) -> exp.Select:
    """The newest activity per customer; its key ('order:12', 'login:98') names the instance.

    When that was comes from the per-customer facts (newest order, newest
    login); only those customers' activities at that very instant are read
    back for the key. Ties take the greatest key, as ORDER BY key DESC would.
    """
    now = builder.ts(builder.now)
    parts, newest = [], []
    if "order" in trigger.activities:
        orders = builder.source("orders")
        parts.append(
            exp.select(col("o", "customer_id"),
                       exp.alias_(exp.DPipe(this=lit("order:"), expression=text(col("o", "order_id")), safe=True), "activity_key"),
                       exp.alias_(col("o", "created_at"), "activity_at"))
            .from_(exp.to_table(orders).as_("o")).where(col("o", "created_at") <= now))
        newest.append(col("f", "last_order_at"))
    if "login" in trigger.activities:
        events = builder.source("events")
        parts.append(
            exp.select(col("e", "customer_id"),
                       exp.alias_(exp.DPipe(this=lit("login:"), expression=text(col("e", "event_id")), safe=True), "activity_key"),
                       exp.alias_(col("e", "occurred_at"), "activity_at"))
            .from_(exp.to_table(events).as_("e")).where(col("e", "type").eq(lit("login")), col("e", "occurred_at") <= now.copy()))
        newest.append(col("fe", "last_login_at"))
    activities = parts[0]
    for part in parts[1:]:
        activities = exp.union(activities, part, distinct=False)
    builder.ctes["activities"] = activities
    if len(newest) == 1:
        activity_at = newest[0]
    else:  # the later of the two; either may be NULL
        order_at, login_at = newest
        activity_at = exp.Case(ifs=[exp.If(this=exp.or_(login_at.is_(exp.null()), order_at >= login_at.copy()), true=order_at.copy())],
                               default=login_at.copy())
    customers = builder.source("customers")
    base = exp.select(col("c", "customer_id"), exp.alias_(activity_at, "activity_at")).from_(exp.to_table(customers).as_("c"))
    base = builder.join_facts(base, col("c", "customer_id"), orders="order" in trigger.activities,
                              events="login" in trigger.activities)
    builder.ctes["last_activity"] = base.where(activity_at.copy().is_(exp.null()).not_())
    return (
        exp.select(col("l", "customer_id"), exp.alias_(exp.Max(this=col("a", "activity_key")), "trigger_key"),
                   exp.alias_(col("l", "activity_at"), "trigger_at"))
        .from_(exp.to_table("last_activity").as_("l"))
        .join(exp.to_table("activities").as_("a"), on=exp.and_(col("a", "customer_id").eq(col("l", "customer_id")),
                                                               col("a", "activity_at").eq(col("l", "activity_at"))))
        .group_by(col("l", "customer_id"), col("l", "activity_at"))
    )


def _entry_exists(builder: _QueryBuilder, campaign: Campaign) -> exp.Select:
    return one_from(builder.state_table(ENTRIES_TABLE), "e").where(
        col("e", "campaign").eq(lit(campaign.name)),
        col("e", "customer_id").eq(text(col("m", "customer_id"))),
        col("e", "trigger_key").eq(col("m", "trigger_key")),
    )


def _at_risk_members(builder: _QueryBuilder, trigger: AtRisk) -> None:
    """CTEs ending in ``at_risk_members(customer_id, trigger_key)``; the key is the last order.

    Ranks the customers' last orders from the per-customer facts (no window over
    all orders); only the members' last order ids are looked up in the orders.
    """
    now = builder.now
    facts = builder.customer_facts()
    position = exp.Window(
        this=exp.RowNumber(),
        order=exp.Order(expressions=[exp.Ordered(this=col("l", "last_order_at")), exp.Ordered(this=col("l", "customer_id"))]),
    )
    builder.ctes["active_ranked"] = (
        exp.select(
            col("l", "customer_id"),
            col("l", "last_order_at"),
            exp.alias_(position, "position"),
            exp.alias_(exp.Window(this=exp.Count(this=exp.Star())), "population"),
        )
        .from_(exp.to_table(facts).as_("l"))
        .where(col("l", "last_order_at") > builder.ts(now - trigger.window))
    )
    orders = builder.source("orders")
    # ties on the last order's time: the highest order id, as ORDER BY created_at DESC, order_id DESC would pick
    builder.ctes["at_risk_members"] = (
        exp.select(col("r", "customer_id"), exp.alias_(text(exp.Max(this=col("o", "order_id"))), "trigger_key"))
        .from_(exp.to_table("active_ranked").as_("r"))
        .join(exp.to_table(orders).as_("o"), on=exp.and_(col("o", "customer_id").eq(col("r", "customer_id")),
                                                         col("o", "created_at").eq(col("r", "last_order_at"))))
        .where(exp.Mul(this=col("r", "position"), expression=exp.Literal.number(100))
               <= exp.Mul(this=col("r", "population"), expression=exp.Literal.number(trigger.percent)))
        .group_by(col("r", "customer_id"))
    )


def _without_ledger_rows(query: exp.Select, campaign: Campaign, step: Step) -> exp.Select:
    """Leave out instances the ledger already holds for this step: an anti-join written as a
    LEFT JOIN on the ledger's unique identity plus ``IS NULL`` rather than ``NOT EXISTS``.

    DuckDB cannot decorrelate a subquery whose correlation casts the outer
    column (the customer id compares as text): it computes a "delim join" that
    buffers every candidate row with all its columns (about 200 MB per million
    due rows) before the first one streams out, once per step. As a join the
    step's ledger rows are the hash table and the candidates stream (3x cheaper
    at 5M orders). SQLite and PostgreSQL use the identity index either way.
    Same rows: the identity is unique, so a candidate matches at most one row.
    """
    on = exp.and_(
        col("l", "campaign").eq(lit(campaign.name)),
        col("l", "step").eq(lit(step.id)),
        col("l", "customer_id").eq(text(col("t", "customer_id"))),
        col("l", "trigger_key").eq(col("t", "trigger_key")),
    )
    return query.join(exp.to_table(LEDGER_TABLE).as_("l"), on=on, join_type="left").where(
        col("l", "message_key").is_(exp.null()))


def _per_zone_window(builder: _QueryBuilder, step: Step, window: StepWindow, zones: Sequence[object]) -> list[exp.Expression]:
    """The trigger time bounds of ``zone_window`` for each of ``zones`` (the customers' time zone
    values), chosen by the customer's zone column; other values keep the plain ``window``."""
    default = builder.config.default_timezone
    bounds = {value: zone_window(step, builder.now, builder.config.stale_horizon, customer_zone(value, default))
              for value in zones if value is None or isinstance(value, str)}
    zone = col("c", "timezone")

    def pick(attribute: str) -> exp.Expression:
        ifs = [exp.If(this=zone.copy().is_(exp.null()) if value is None else zone.copy().eq(lit(value)),
                      true=builder.ts(getattr(bound, attribute)))
               for value, bound in bounds.items()]
        return exp.Case(ifs=ifs, default=builder.ts(getattr(window, attribute)))

    if not bounds:
        return []
    conditions = [col("t", "trigger_at") <= pick("due_cutoff")]
    if window.earliest is not None:
        conditions.append(col("t", "trigger_at") >= pick("earliest"))
    return conditions


def zones_query(config: ProjectConfig) -> exp.Query:
    """The distinct values of the customers' time zone column (for ``due_query``'s ``zones``)."""
    builder = _QueryBuilder(config, datetime.min, config.dialect)
    customers = builder.source("customers")
    return builder.with_ctes(exp.select(col("c", "timezone")).distinct().from_(exp.to_table(customers).as_("c")))


def keys_in_sql(campaign: Campaign) -> bool:
    """Whether trigger keys come from SQL (else Python derives them, e.g. the birthday's year)."""
    return not isinstance(campaign.trigger, Anniversary)


def variant_columns(campaign: Campaign) -> int:
    return max(len(step.variants) for step in campaign.steps)


def due_query(campaign: Campaign, config: ProjectConfig, now: datetime, *, exclude_ledger: bool,
              dialect: str | None = None, customer_id: str | None = None, shared_facts: bool = False,
              zones: Sequence[object] | None = None, state: StateRelations | None = None) -> exp.Query:
    """All due (and recently stale or stopped) rows of every step of ``campaign`` at ``now``.

    Columns: DUE_COLUMNS, ``anniversary`` for yearly triggers,
    ``variant_match_<i>`` (1/0/NULL) per variant position, then
    ``cust__<attribute>`` for every customer attribute. With ``exclude_ledger``
    rows already in the ledger are left out in SQL (the ledger shares the
    warehouse's database). ``dialect`` defaults to the warehouse's; the AST is
    built for it (SQLite needs its own timestamp form). ``customer_id`` keeps
    only that customer's rows (``engine explain``): the same rules, one customer.
    ``shared_facts`` reads per-customer facts from the pass's temporary tables
    (``SHARED_FACTS``, see ``shared_facts_create``) instead of computing them here.
    ``zones``: the distinct values of the customers' time zone column
    (``zones_query``); steps with a local send time then cut their time window
    per zone (``zone_window``) instead of allowing a day of slack for any zone.
    ``state``: where the engine state it joins (entries, tags) is, when the ledger is elsewhere.
    """
    builder = _QueryBuilder(config, now, dialect or config.dialect, shared_facts=shared_facts, state=state)
    customers = builder.source("customers")
    windows = [step_window(step, now, config.stale_horizon) for step in campaign.steps]
    earliest = None if any(w.earliest is None for w in windows) else min(w.earliest for w in windows)
    builder.ctes["trigger_instances"] = _trigger_cte(builder, campaign, earliest)
    attributes = filter_attributes(config)
    yearly = isinstance(campaign.trigger, Anniversary)
    width = variant_columns(campaign)
    selects = []
    for step in campaign.steps:
        window = step_window(step, now, config.stale_horizon)
        conditions: list[exp.Expression] = []
        if yearly:
            month_days = anniversary_month_days(window)
            if month_days is not None:
                conditions.append(month_day(col("t", "anniversary"), builder.dialect).isin(
                    *[exp.Literal.number(d) for d in month_days]))
        else:
            conditions.append(col("t", "trigger_at") <= builder.ts(window.due_cutoff))
            if window.earliest is not None:
                conditions.append(col("t", "trigger_at") >= builder.ts(window.earliest))
            if step.send_at is not None and zones is not None:
                conditions += _per_zone_window(builder, step, window, zones)
        if isinstance(campaign.trigger, OrderPlaced) and campaign.trigger.nth is not None:
            conditions.append(col("t", "nth").eq(campaign.trigger.nth))
        for text_ in (campaign.audience, step.audience):
            if text_:
                conditions.append(builder.bind(text_, attributes))
        if customer_id is not None:
            conditions.append(is_customer(col("t", "customer_id"), customer_id))
        stopped_by = exp.null()
        if campaign.stop:
            stopped_by = exp.Case(ifs=[exp.If(this=builder.stop_condition(stop), true=lit(stop)) for stop in campaign.stop])
        matches = []
        for index in range(width):
            variant = step.variants[index] if index < len(step.variants) else None
            if variant is None:  # typed: PostgreSQL resolves a UNION of untyped NULLs to text, then fails against 1/0
                value: exp.Expression = exp.cast(exp.null(), _type("INT"))
            elif variant.audience is None:
                value = exp.Literal.number(1)
            else:
                value = exp.Case(ifs=[exp.If(this=builder.bind(variant.audience, attributes), true=exp.Literal.number(1))],
                                 default=exp.Literal.number(0))
            matches.append(exp.alias_(value, f"{VARIANT_PREFIX}{index}"))
        query = (
            exp.select(
                exp.alias_(lit(campaign.name), "campaign"),
                exp.alias_(lit(step.id), "step"),
                exp.alias_(text(col("t", "customer_id")), "customer_id"),
                col("t", "trigger_key"),
                col("t", "trigger_at"),
                exp.alias_(stopped_by, "stopped_by"),
                *([col("t", "anniversary")] if yearly else []),
                *matches,
                *[exp.alias_(col("c", a), exp.to_identifier(CUSTOMER_PREFIX + a)) for a in config.customer_attributes()],
            )
            .from_(exp.to_table("trigger_instances").as_("t"))
            .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")))
        )
        query = builder.join_facts(query, col("t", "customer_id")).where(*conditions)
        if exclude_ledger and keys_in_sql(campaign):
            query = _without_ledger_rows(query, campaign, step)
        selects.append(query)
    body: exp.Query = selects[0]
    for other in selects[1:]:
        body = exp.union(body, other, distinct=False)
    ordered = campaign.reentry.mode != "per_trigger"
    if not isinstance(body, exp.Select) or ordered:
        body = exp.select("*").from_(body.subquery("due_steps"))
    if ordered:  # re-entry rules let the earliest instance in: it must come first
        body = body.order_by(exp.column("trigger_at"), exp.column("customer_id"), exp.column("trigger_key"))
    return builder.with_ctes(body)


def is_customer(column: exp.Expression, customer_id: str) -> exp.Expression:
    """``column`` is this customer: ids compare as text, as in the ledger."""
    return text(column).eq(lit(customer_id))


@dataclass(frozen=True)
class FilterCheck:
    """One audience filter or stop condition of a campaign, evaluated alone for ``engine explain``.

    ``scope`` is "campaign", "step" or "variant" (an audience filter, ``text``
    its expression) or "stop" (``text`` the stop condition's name); ``column``
    names its 1/0 result in ``explain_query``.
    """

    column: str
    scope: str
    text: str
    step: str | None = None
    variant: str | None = None


def explain_query(campaign: Campaign, config: ProjectConfig, now: datetime, customer_id: str,
                  dialect: str | None = None, state: StateRelations | None = None) -> tuple[exp.Query, list[FilterCheck]]:
    """Every trigger instance of one customer (newest first, no time window) with each filter
    and stop condition of the campaign evaluated on its own: which one excluded them.

    Columns: ``trigger_key``, ``trigger_at`` (``anniversary`` for yearly
    triggers), then one 1/0 column per ``FilterCheck``. The filters are bound
    exactly as ``due_query`` binds them, so the answer is the due query's.
    """
    builder = _QueryBuilder(config, now, dialect or config.dialect, state=state)
    customers = builder.source("customers")
    builder.ctes["trigger_instances"] = _trigger_cte(builder, campaign)
    attributes = filter_attributes(config)
    checks: list[FilterCheck] = []

    def add(scope: str, text_: str, step: str | None = None, variant: str | None = None) -> None:
        checks.append(FilterCheck(f"check_{len(checks)}", scope, text_, step, variant))

    if campaign.audience:
        add("campaign", campaign.audience)
    for step in campaign.steps:
        if step.audience:
            add("step", step.audience, step.id)
        for variant in step.variants:
            if variant.audience:
                add("variant", variant.audience, step.id, variant.id)
    for stop in campaign.stop:
        add("stop", stop)
    results = []
    for check in checks:
        condition = builder.stop_condition(check.text) if check.scope == "stop" else builder.bind(check.text, attributes)
        value = exp.Case(ifs=[exp.If(this=condition, true=exp.Literal.number(1))], default=exp.Literal.number(0))
        results.append(exp.alias_(value, check.column))
    yearly = isinstance(campaign.trigger, Anniversary)
    query = (
        exp.select(col("t", "trigger_key"), col("t", "trigger_at"), *([col("t", "anniversary")] if yearly else []), *results)
        .from_(exp.to_table("trigger_instances").as_("t"))
        .join(exp.to_table(customers).as_("c"), on=col("c", "customer_id").eq(col("t", "customer_id")))
    )
    query = builder.join_facts(query, col("t", "customer_id"))
    conditions = [is_customer(col("t", "customer_id"), customer_id)]
    if isinstance(campaign.trigger, OrderPlaced) and campaign.trigger.nth is not None:
        conditions.append(col("t", "nth").eq(campaign.trigger.nth))
    query = query.where(*conditions).order_by(exp.Ordered(this=col("t", "trigger_at"), desc=True),
                                              exp.Ordered(this=col("t", "trigger_key"), desc=True))
    return builder.with_ctes(query), checks


def segment_query(config: ProjectConfig, now: datetime, where: str, dialect: str | None = None,
                  state: StateRelations | None = None) -> exp.Query:
    """customer_id and every mapped customer attribute of the customers matching ``where``
    (the campaign filter language; facts like order_count are as of ``now``), by customer id."""
    builder = _QueryBuilder(config, now, dialect or config.dialect, state=state)
    customers = builder.source("customers")
    condition = builder.bind(where, segment_attributes(config))
    query = (
        exp.select(*[exp.alias_(col("c", a), exp.to_identifier(a)) for a in config.customer_attributes()])
        .from_(exp.to_table(customers).as_("c"))
    )
    query = builder.join_facts(query, col("c", "customer_id"))
    return builder.with_ctes(query.where(condition).order_by(col("c", "customer_id")))


def entries_select(campaign: Campaign, config: ProjectConfig, now: datetime,
                   state: StateRelations | None = None) -> exp.Query | None:
    """For segment triggers: (campaign, customer_id, trigger_key, entered_at) of the customers who
    entered the segment since the last pass (``state``: where the recorded entries are, as in ``due_query``)."""
    if not isinstance(campaign.trigger, AtRisk):
        return None
    builder = _QueryBuilder(config, now, config.dialect, state=state)
    _at_risk_members(builder, campaign.trigger)
    select = (
        exp.select(lit(campaign.name), text(col("m", "customer_id")), col("m", "trigger_key"), builder.ts(now))
        .from_(exp.to_table("at_risk_members").as_("m"))
        .where(exists(_entry_exists(builder, campaign)).not_())
    )
    return builder.with_ctes(select)


def entries_insert(campaign: Campaign, config: ProjectConfig, now: datetime) -> exp.Insert | None:
    """For segment triggers: INSERT the customers who entered the segment since the last pass
    (the ledger shares the warehouse's database)."""
    select = entries_select(campaign, config, now)
    if select is None:
        return None
    return exp.insert(select, ENTRIES_TABLE, columns=["campaign", "customer_id", "trigger_key", "entered_at"])


def render_sql(expression: exp.Expression, dialect: str, pretty: bool = False) -> str:
    return expression.sql(dialect=dialect, pretty=pretty)
