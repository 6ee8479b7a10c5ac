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

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlglot
from sqlglot import exp

from .clock import sql_timestamp_text, to_utc
from .filters import bind_filter, parse_filter
from .model import (
    CUSTOMER_FACTS, ENTITY_COLUMNS, SINCE_TRIGGER_FACTS, Anniversary, AtRisk, Campaign, CheckoutAbandoned, EntitySource, Event,
    LastActivity, OrderDate, OrderPlaced, ProjectConfig, Registration, Step,
)
from .validate import filter_attributes

LEDGER_TABLE = "engine_ledger"
ENTRIES_TABLE = "engine_entries"
TAGS_TABLE = "engine_tags"
CUSTOMER_PREFIX = "cust__"
VARIANT_PREFIX = "variant_match_"

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
    return exp.cast(exp.Literal.string(sql_timestamp_text(value)), exp.DataType.build("TIMESTAMP"))


def text(value: exp.Expression) -> exp.Expression:
    return exp.cast(value, exp.DataType.build("VARCHAR"))


def col(table: str, name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name), table=exp.to_identifier(table))


def lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def day_text(value: exp.Expression, dialect: str) -> exp.Expression:
    """'YYYY-MM-DD' of an instant, the same text in every dialect."""
    if dialect == "sqlite":
        return exp.Substring(this=value, start=exp.Literal.number(1), length=exp.Literal.number(10))
    return text(exp.cast(value, exp.DataType.build("DATE")))


def month_day(value: exp.Expression, dialect: str) -> exp.Expression:
    """month * 100 + day of a date, as an integer (0229 = 229)."""
    if dialect == "sqlite":
        return exp.cast(exp.Anonymous(this="STRFTIME", expressions=[lit("%m%d"), value]), exp.DataType.build("INT"))
    return exp.Add(this=exp.Mul(this=exp.Month(this=value), expression=exp.Literal.number(100)), expression=exp.Day(this=value))


def exists(query: exp.Select) -> exp.Exists:
    return exp.Exists(this=query)


def one_from(table: str, alias: str) -> exp.Select:
    return exp.select(exp.Literal.number(1)).from_(exp.to_table(table).as_(alias))


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
    # a local send time is at most a day plus a DST shift (1 h; 2 h in Antarctica/Troll) after
    # trigger + delay; a slack of exactly one day lost stale rows on fall-back days
    slack = timedelta(days=2) if step.send_at is not None else timedelta(0)
    return StepWindow(due_cutoff, due_cutoff - step.freshness - stale_horizon - slack)


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


class _QueryBuilder:
    """Collects the CTEs one campaign query needs, each added once, and binds filters."""

    def __init__(self, config: ProjectConfig, now: datetime, dialect: str):
        self.config = config
        self.now = now
        self.dialect = dialect
        self.ctes: dict[str, exp.Expression] = {}
        self.uses_facts = False

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

    def ordered_after_trigger(self) -> exp.Exists:
        orders = self.source("orders")
        return exists(one_from(orders, "o2").where(
            col("o2", "customer_id").eq(col("t", "customer_id")),
            col("o2", "created_at") > col("t", "trigger_at"),
            col("o2", "created_at") <= self.ts(self.now),
        ))

    def active_after_trigger(self) -> exp.Exists:
        events = self.source("events")
        return exists(one_from(events, "e2").where(
            col("e2", "customer_id").eq(col("t", "customer_id")),
            col("e2", "occurred_at") > col("t", "trigger_at"),
            col("e2", "occurred_at") <= self.ts(self.now),
        ))

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
            return exists(one_from(TAGS_TABLE, "g").where(
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


def _trigger_cte(builder: _QueryBuilder, campaign: Campaign) -> exp.Query:
    """trigger_instances(customer_id, trigger_key, trigger_at [, nth | anniversary])."""
    trigger = campaign.trigger
    now = builder.ts(builder.now)
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
        conditions = [col("o", "created_at") <= now]
        if trigger.statuses:
            conditions.append(col("o", "status").isin(*[lit(s) for s in trigger.statuses]))
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
            .from_(exp.to_table(ENTRIES_TABLE).as_("e"))
            .join(exp.to_table(customers).as_("c"), on=text(col("c", "customer_id")).eq(col("e", "customer_id")))
            .where(col("e", "campaign").eq(lit(campaign.name)), col("e", "entered_at") <= now)
        )
        entering = (
            exp.select(col("m", "customer_id"), col("m", "trigger_key"), exp.alias_(now.copy(), "trigger_at"))
            .from_(exp.to_table("at_risk_members").as_("m"))
            .where(exists(_entry_exists(campaign)).not_())
        )
        return exp.union(entered, entering, distinct=False)
    raise TypeError(f"unknown trigger {trigger!r}")  # pragma: no cover


def _last_activity(builder: _QueryBuilder, trigger: LastActivity) -> exp.Select:
    """The newest activity per customer; its key ('order:12', 'login:98') names the instance."""
    now = builder.ts(builder.now)
    parts = []
    if "order" in trigger.activities:
        orders = builder.source("orders")
        parts.append(
            exp.select(col("o", "customer_id"),
                       exp.alias_(exp.DPipe(this=lit("order:"), expression=text(col("o", "order_id")), safe=True), "activity_key"),
                       exp.alias_(col("o", "created_at"), "activity_at"))
            .from_(exp.to_table(orders).as_("o")).where(col("o", "created_at") <= now))
    if "login" in trigger.activities:
        events = builder.source("events")
        parts.append(
            exp.select(col("e", "customer_id"),
                       exp.alias_(exp.DPipe(this=lit("login:"), expression=text(col("e", "event_id")), safe=True), "activity_key"),
                       exp.alias_(col("e", "occurred_at"), "activity_at"))
            .from_(exp.to_table(events).as_("e")).where(col("e", "type").eq(lit("login")), col("e", "occurred_at") <= now))
    activities = parts[0]
    for part in parts[1:]:
        activities = exp.union(activities, part, distinct=False)
    builder.ctes["activities"] = activities
    newest_first = exp.Window(
        this=exp.RowNumber(),
        partition_by=[col("a", "customer_id")],
        order=exp.Order(expressions=[exp.Ordered(this=col("a", "activity_at"), desc=True),
                                     exp.Ordered(this=col("a", "activity_key"), desc=True)]),
    )
    builder.ctes["ranked_activities"] = (
        exp.select(col("a", "customer_id"), col("a", "activity_key"), col("a", "activity_at"), exp.alias_(newest_first, "recency"))
        .from_(exp.to_table("activities").as_("a"))
    )
    return (
        exp.select(col("r", "customer_id"), exp.alias_(col("r", "activity_key"), "trigger_key"),
                   exp.alias_(col("r", "activity_at"), "trigger_at"))
        .from_(exp.to_table("ranked_activities").as_("r"))
        .where(col("r", "recency").eq(1))
    )


def _entry_exists(campaign: Campaign) -> exp.Select:
    return one_from(ENTRIES_TABLE, "e").where(
        col("e", "campaign").eq(lit(campaign.name)),
        col("e", "customer_id").eq(text(col("m", "customer_id"))),
        col("e", "trigger_key").eq(col("m", "trigger_key")),
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
        .where(col("l", "recency_rank").eq(1), col("l", "last_order_at") > builder.ts(now - trigger.window))
    )
    builder.ctes["at_risk_members"] = (
        exp.select(col("r", "customer_id"), exp.alias_(col("r", "last_order_key"), "trigger_key"))
        .from_(exp.to_table("active_ranked").as_("r"))
        .where(exp.Mul(this=col("r", "position"), expression=exp.Literal.number(100))
               <= exp.Mul(this=col("r", "population"), expression=exp.Literal.number(trigger.percent)))
    )


def _without_ledger_rows(query: exp.Select, campaign: Campaign, step: Step) -> tuple[exp.Select, exp.Expression]:
    """``query`` left-joined to the step's ledger rows, and the condition that keeps rows without one.

    An anti-join written as a join rather than ``NOT EXISTS``: DuckDB cannot
    decorrelate a subquery whose correlation casts the outer column (the
    customer id compares as text), so it buffers every candidate row with all
    its columns (a "delim join", about 200 MB per million due rows) before the
    first one streams out. As a join the ledger side is the hash table and the
    candidates stream. Same rows: the join condition holds for no ledger row
    with a NULL ``customer_id``, so only candidates with no match survive, once.
    """
    joined = query.join(exp.to_table(LEDGER_TABLE).as_("l"), join_type="left", on=exp.and_(
        col("l", "campaign").eq(lit(campaign.name)),
        col("l", "step").eq(lit(step.id)),
        col("l", "customer_id").eq(text(col("t", "customer_id"))),
        col("l", "trigger_key").eq(col("t", "trigger_key")),
    ))
    return joined, col("l", "customer_id").is_(exp.null())


def keys_in_sql(campaign: Campaign) -> bool:
    """Whether trigger keys come from SQL (else Python derives them, e.g. the birthday's year)."""
    return not isinstance(campaign.trigger, Anniversary)


def variant_columns(campaign: Campaign) -> int:
    return max(len(step.variants) for step in campaign.steps)


def due_query(campaign: Campaign, config: ProjectConfig, now: datetime, *, exclude_ledger: bool,
              dialect: str | None = None, customer_id: str | None = None) -> exp.Query:
    """All due (and recently stale or stopped) rows of every step of ``campaign`` at ``now``.

    Columns: DUE_COLUMNS, ``anniversary`` for yearly triggers,
    ``variant_match_<i>`` (1/0/NULL) per variant position, then
    ``cust__<attribute>`` for every customer attribute. With ``exclude_ledger``
    rows already in the ledger are left out in SQL (the ledger shares the
    warehouse's database). ``dialect`` defaults to the warehouse's; the AST is
    built for it (SQLite needs its own timestamp form). ``customer_id`` keeps
    only that customer's rows (``engine explain``): the same rules, one customer.
    """
    builder = _QueryBuilder(config, now, dialect or config.dialect)
    customers = builder.source("customers")
    builder.ctes["trigger_instances"] = _trigger_cte(builder, campaign)
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
                value: exp.Expression = exp.cast(exp.null(), exp.DataType.build("INT"))
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
        if builder.uses_facts:
            facts = builder.customer_facts()
            query = query.join(exp.to_table(facts).as_("f"), on=col("f", "customer_id").eq(col("t", "customer_id")), join_type="left")
        if exclude_ledger and keys_in_sql(campaign):
            query, absent = _without_ledger_rows(query, campaign, step)
            conditions.append(absent)
        selects.append(query.where(*conditions))
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
                  dialect: str | None = None) -> tuple[exp.Query, list[FilterCheck]]:
    """Every trigger instance of one customer (newest first, no time window) with each filter
    and stop condition of the campaign evaluated on its own: which one excluded them.

    Columns: ``trigger_key``, ``trigger_at`` (``anniversary`` for yearly
    triggers), then one 1/0 column per ``FilterCheck``. The filters are bound
    exactly as ``due_query`` binds them, so the answer is the due query's.
    """
    builder = _QueryBuilder(config, now, dialect or config.dialect)
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
    if builder.uses_facts:
        facts = builder.customer_facts()
        query = query.join(exp.to_table(facts).as_("f"), on=col("f", "customer_id").eq(col("t", "customer_id")), join_type="left")
    conditions = [is_customer(col("t", "customer_id"), customer_id)]
    if isinstance(campaign.trigger, OrderPlaced) and campaign.trigger.nth is not None:
        conditions.append(col("t", "nth").eq(campaign.trigger.nth))
    query = query.where(*conditions).order_by(exp.Ordered(this=col("t", "trigger_at"), desc=True),
                                              exp.Ordered(this=col("t", "trigger_key"), desc=True))
    return builder.with_ctes(query), checks


def segment_attributes(config: ProjectConfig) -> list[str]:
    """What a segment filter may name: a campaign filter's attributes minus those about a trigger."""
    return [a for a in filter_attributes(config) if a not in SINCE_TRIGGER_FACTS]


def segment_query(config: ProjectConfig, now: datetime, where: str, dialect: str | None = None) -> exp.Query:
    """customer_id and every mapped customer attribute of the customers matching ``where``
    (the campaign filter language; facts like order_count are as of ``now``), by customer id."""
    builder = _QueryBuilder(config, now, dialect or config.dialect)
    customers = builder.source("customers")
    condition = builder.bind(where, segment_attributes(config))
    query = (
        exp.select(*[exp.alias_(col("c", a), exp.to_identifier(a)) for a in config.customer_attributes()])
        .from_(exp.to_table(customers).as_("c"))
    )
    if builder.uses_facts:
        facts = builder.customer_facts()
        query = query.join(exp.to_table(facts).as_("f"), on=col("f", "customer_id").eq(col("c", "customer_id")), join_type="left")
    return builder.with_ctes(query.where(condition).order_by(col("c", "customer_id")))


def entries_insert(campaign: Campaign, config: ProjectConfig, now: datetime) -> exp.Insert | None:
    """For segment triggers: INSERT the customers who entered the segment since the last pass."""
    if not isinstance(campaign.trigger, AtRisk):
        return None
    builder = _QueryBuilder(config, now, config.dialect)
    _at_risk_members(builder, campaign.trigger)
    select = (
        exp.select(lit(campaign.name), text(col("m", "customer_id")), col("m", "trigger_key"), builder.ts(now))
        .from_(exp.to_table("at_risk_members").as_("m"))
        .where(exists(_entry_exists(campaign)).not_())
    )
    return exp.insert(builder.with_ctes(select), ENTRIES_TABLE, columns=["campaign", "customer_id", "trigger_key", "entered_at"])


def render_sql(expression: exp.Expression, dialect: str, pretty: bool = False) -> str:
    return expression.sql(dialect=dialect, pretty=pretty)
