"""The parts every campaign query is built from, rendered per dialect.

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
it speaks one vocabulary. Here: those source CTEs, the steps' time windows,
the per-customer facts, ``QueryBuilder`` (a query's CTEs, filters and stop
conditions) and the joins with the engine's state (ledger, tags, segment
entries). ``due.py`` assembles the due query from them and the campaign's
trigger kind (``triggers/``), which builds on them too; nothing here knows a
trigger kind.

What a pass shares (``shared_facts=True``; engine/run/plan.py creates the tables once per pass
on one connection, in temporary tables, and drops them at its end): per-customer facts
(``SHARED_FACTS``: one GROUP BY of the orders, one of the events), and per-order facts
(``SHARED_ROWS``: the rows of a source within the union of the campaigns' windows, with what
the trigger kind derives from them - the order's rank and next order, the day's last event -
built by the kind, ``TriggerKind.shared_rows_select``). So each source is scanned once for
all campaigns' instances, not once (or twice) per campaign, and a rank is counted against the
per-customer facts instead of a scan of the history before the window. A query compiled for one
customer, or for a dialect without temporary tables, computes the same in its own CTEs.
Pure: builds expressions, executes nothing.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

import sqlglot
from sqlglot import exp

from engine.clock import CalendarDuration, sql_timestamp_text, to_utc
from engine.decide import customer_zone
from engine.dialects import dialect_named, drop_temporary_table
from engine.sql.filter_types import segment_attributes
from engine.sql.filters import TRIGGER_PREFIX, bind_filter, parse_filter
from engine.sql import responses
from engine.sql.instants import PassInstant, derive, placeholder
from engine.state.tables import ENTRIES_TABLE, EVENTS_TABLE, LEDGER_TABLE, TAGS_TABLE
from engine.model import CHANGE_COLUMN, CUSTOMER_FACTS, ENTITY_COLUMNS, Campaign, EntitySource, ProjectConfig, Step

#: Where the engine state a query joins lives when the ledger is in another database: ledger table
#: name (ENTRIES_TABLE, TAGS_TABLE) -> a temporary table, or a SELECT (over VALUES) read as a CTE.
StateRelations = Mapping[str, exp.Expression]
#: The ``StateRelations`` key of the ledger's sent instances (campaign, customer, trigger key, first
#: trigger time) the settled rows of a re-entry campaign read when the ledger is in another database
#: (the pass's copy, engine.sql.shipping); with the ledger in the query, they read its table
REENTRY_HISTORY = "reentry_history"


def ledger_relation() -> exp.Table:
    """The ledger's table, for a query that joins it where the ledger shares the warehouse's database
    (the names of engine state are this module's to import: tests/test_ledger_interface.py)."""
    return exp.to_table(LEDGER_TABLE)


CUSTOMER_PREFIX = "cust__"
VARIANT_PREFIX = "variant_match_"
#: Per-customer fact tables a reconciler pass materialises once and every campaign query of
#: the pass joins (entity they are derived from -> temporary table name).
SHARED_FACTS = {"orders": "engine_order_facts", "events": "engine_event_facts"}
#: Per-order fact tables a pass materialises once, from one scan of the source, for every campaign
#: whose trigger kind reads them (``TriggerKind.shared_rows``: the kind builds the rows; name ->
#: temporary table). ``order_rows``: the orders of the union of the campaigns' time windows, each
#: with its rank among the customer's orders (counted against the per-customer facts, so that no
#: campaign scans the history before its window) and the time of the next order.
#: ``event_days``: per customer, event type and UTC day from the earliest window start of the
#: ``per: day`` event campaigns on, the day's last event of the type (their instances).
SHARED_ROWS = {"order_rows": "engine_order_rows", "event_days": "engine_event_days"}
#: False: every campaign computes its per-order facts with its own scans, as before issue 15.2
#: (benchmarks/run.py's and tests/test_shared_rows.py's switch to compare)
SHARE_ROWS = True
#: the pass's copy of the customers' source where Dialect.shared_customers: built once per pass, indexed
#: on the customer id, read by the pass's due queries instead of each materialising the source
SHARED_CUSTOMERS = {"customers": "engine_customers"}
#: the suffix of a source column holding an instant as a number (``QueryBuilder.instant_numbers``)
INSTANT_NUMBER_SUFFIX = "_number"

#: The columns every due row starts with, in this order.
DUE_COLUMNS = ("campaign", "step", "customer_id", "trigger_key", "trigger_at", "stopped_by")

#: Canonical columns holding instants. Where a dialect keeps instants as text (SQLite: no timestamp
#: type; Dialect.instant_text_format) they are normalised to one text format so that comparisons are exact.
INSTANT_COLUMNS = frozenset({"created_at", "completed_at", "occurred_at", "unsubscribed_at", "delivery_date",
                             "valid_from", "valid_to", CHANGE_COLUMN})


def ts(value: datetime | PassInstant, dialect: str) -> exp.Expression:
    """A timestamp literal that compares exactly with the dialect's timestamp columns (text with
    milliseconds where instants are text, as Dialect.instant_text_format's ``%f`` writes them).
    A ``PassInstant`` (a query compiled once, sql.prepared) becomes the same expression around a
    placeholder text, which the pass replaces by ``instant_text`` of its instant."""
    text_ = placeholder(value) if isinstance(value, PassInstant) else instant_text(value, dialect)
    if dialect_named(dialect).instant_text_format is not None:
        return exp.Literal.string(text_)
    return exp.cast(exp.Literal.string(text_), _type("TIMESTAMP"), copy=False)  # both built here: nothing to copy


def instant_text(value: datetime, dialect: str) -> str:
    """The text of ``ts``'s literal for ``value``."""
    if dialect_named(dialect).instant_text_format is not None:
        naive = to_utc(value).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.") + f"{naive.microsecond // 1000:03d}"
    return sql_timestamp_text(value)


def text(value: exp.Expression) -> exp.Expression:
    return exp.cast(value, _type("VARCHAR"))


def col(table: str, name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name), table=exp.to_identifier(table), copy=False)  # identifiers built here


def lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def day_text(value: exp.Expression, dialect: str) -> exp.Expression:
    """'YYYY-MM-DD' of an instant, the same text in every dialect."""
    if dialect_named(dialect).instant_text_format is not None:
        return exp.Substring(this=value, start=exp.Literal.number(1), length=exp.Literal.number(10))
    return text(exp.cast(value, _type("DATE")))


def month_day(value: exp.Expression, dialect: str) -> exp.Expression:
    """month * 100 + day of a date, as an integer (0229 = 229)."""
    if dialect_named(dialect).instant_text_format is not None:
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


#: Calendar months (``6mo``) have no exact inverse: Aug 28 ... Aug 31 + 6 months are all Feb 28, so
#: ``now - 6mo`` can be up to three days before the latest trigger that is due. Each month-valued
#: duration of a step widens its window by this on each side; Python then decides exactly.
MONTH_END_SLACK = timedelta(days=3)


def calendar_slack(step: Step) -> timedelta:
    return sum((MONTH_END_SLACK for value in (step.delay, step.freshness) if isinstance(value, CalendarDuration)),
               timedelta(0))


def step_window(step: Step, now: datetime, stale_horizon: timedelta) -> StepWindow:
    months = calendar_slack(step)
    due_cutoff = now - step.delay
    if step.freshness is None:
        return StepWindow(due_cutoff + months, None)
    slack = SEND_AT_SLACK if step.send_at is not None else timedelta(0)
    latest = due_cutoff if step.wait is None else now - step.wait.at_most  # a wait is due at the latest at_most after
    return StepWindow(due_cutoff + months, latest - step.freshness - stale_horizon - slack - months)


def earliest_start(steps: Sequence[Step], now: datetime, stale_horizon: timedelta) -> datetime:
    """The earliest window start of ``steps`` (each has one) at ``now``: where a table shared by their
    campaigns begins. A step whose window cannot be computed (a delay beyond the calendar) is left out:
    its campaign's own query fails alone (tests/test_campaign_isolation.py), never the others'."""
    starts = []
    for step in steps:
        try:
            starts.append(step_window(step, now, stale_horizon).earliest)
        except OverflowError:
            continue
    return min(starts, default=now)


#: A calendar day starts at the customer's local midnight (date triggers): up to 14 h before midnight
#: UTC (UTC+14, Pacific/Kiritimati) and up to 12 h after it (UTC-12). SQL windows over dates widen by these.
LOCAL_DAY_EARLIER = timedelta(hours=14)
LOCAL_DAY_LATER = timedelta(hours=12)

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
    months = calendar_slack(step)
    cutoff = _last_local_time(now, step.send_at, zone, inclusive=True) + ZONE_MARGIN - step.delay + months
    if step.freshness is None:
        return StepWindow(cutoff, None)
    gone = _last_local_time(now - step.freshness - stale_horizon, step.send_at, zone, inclusive=False)
    return StepWindow(cutoff, gone - ZONE_MARGIN - step.delay - months)


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
    text_format = dialect_named(dialect).instant_text_format
    if source.entity == "customers":
        names += [c for c in source.columns if c not in names]
    for name in names:
        if name == CHANGE_COLUMN and name not in source.columns:
            continue  # read by the incremental pass only, where mapped (no NULL column in every query)
        if name in source.columns:
            value = sqlglot.parse_one(source.columns[name], read=dialect)
            if text_format is not None and name in INSTANT_COLUMNS:
                value = exp.Anonymous(this="STRFTIME", expressions=[lit(text_format), value])
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
    # ``is_`` and ``>`` copy ``value`` and ``than``: what they build is this function's, used once (no further copies)
    return exp.paren(exp.and_(not_null(value), not_null(than), value > than, copy=False), copy=False)


def not_null(value: exp.Expression) -> exp.Expression:
    """``value IS NOT NULL`` written as ``NOT value IS NULL`` (``value.is_(exp.null()).not_()``'s SQL), with
    one copy of ``value`` (``is_``'s) instead of two."""
    return exp.not_(value.is_(exp.null()), copy=False)


def counted_column(statuses: Sequence[str]) -> str:
    """The order facts' column counting a customer's orders of ``statuses`` (any order of them):
    named by the set, so that a query compiled once finds it whatever other sets a pass counts."""
    digest = hashlib.sha256("\x1f".join(sorted(set(statuses))).encode()).hexdigest()[:12]
    return f"placed_{digest}"


#: False: no dialect's order facts carry the last order id, every at_risk query joins its members'
#: last orders as before (benchmarks' switch to compare; ``last_order_in_facts``)
LAST_ORDER_IN_FACTS = True
#: the column names standing for the picked value and its instant in every ``Dialect.last_by_sql``
LAST_BY_PICKED, LAST_BY_LATEST = "picked", "latest"
#: the order facts' column with the customer's last order id (``last_order_in_facts``)
LAST_ORDER_ID = "last_order_id"


def _last_by_sql(dialect: str, kept: bool) -> str | None:
    found = dialect_named(dialect)
    return (found.kept_last_by_sql or found.last_by_sql) if kept else found.last_by_sql


def last_order_in_facts(dialect: str, kept: bool = False) -> bool:
    """Whether ``dialect``'s order facts carry ``LAST_ORDER_ID``: the id of the customer's last order
    by ``now`` (of those at its instant, the greatest id), as the at_risk trigger keys an entry.
    ``kept``: the incremental pass's kept order facts (``Dialect.kept_last_by_sql``), not the pass's."""
    return LAST_ORDER_IN_FACTS and _last_by_sql(dialect, kept) is not None


@functools.lru_cache(maxsize=None)
def _last_by_template(dialect: str, kept: bool) -> exp.Expression:
    return sqlglot.parse_one(_last_by_sql(dialect, kept), read=dialect)


def last_by(picked: exp.Expression, latest: exp.Expression, dialect: str, kept: bool = False) -> exp.Expression:
    """The aggregate of ``Dialect.last_by_sql`` (``kept``: of ``kept_last_by_sql``, for the kept order facts):
    ``picked`` of the row with the greatest ``latest`` (ties: the greatest ``picked``; rows whose ``latest``
    is NULL left out)."""
    def fill(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table and node.name in (LAST_BY_PICKED, LAST_BY_LATEST):
            return (picked if node.name == LAST_BY_PICKED else latest).copy()
        return node
    return _last_by_template(dialect, kept).copy().transform(fill)


#: the columns standing for an instant's shop value and text form in every ``Dialect.instant_number_sql``
INSTANT_VALUE, INSTANT_TEXT = "instant_value", "instant_text"


def instant_number(value: exp.Expression, text_: exp.Expression, dialect: str) -> exp.Expression:
    """``Dialect.instant_number_sql`` of an instant: its shop ``value`` and its text form ``text_``."""
    def fill(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table and node.name in (INSTANT_VALUE, INSTANT_TEXT):
            return (value if node.name == INSTANT_VALUE else text_).copy()
        return node
    return sqlglot.parse_one(dialect_named(dialect).instant_number_sql, read=dialect).transform(fill)


_COMPARISONS = (exp.LTE, exp.GTE, exp.LT, exp.GT, exp.EQ)


def numbered_comparisons(conditions: Sequence[exp.Expression], column: exp.Column, number: exp.Column,
                         dialect: str) -> list[exp.Expression] | None:
    """``conditions`` comparing the instant ``column`` with instants, written on its number ``number``
    (``QueryBuilder.instant_numbers``) and each compared instant's ``instant_number``: the same rows, since the
    numbers order as the texts do. None when a condition reads ``column`` otherwise (it stays on the text)."""
    def on_number(node: exp.Expression) -> exp.Expression:
        if isinstance(node, _COMPARISONS) and node.this == column and not node.expression.find(exp.Column):
            bound = node.expression
            return type(node)(this=number.copy(), expression=instant_number(bound, bound, dialect))
        return node
    numbered = [condition.transform(on_number) for condition in conditions]
    return None if any(c == column for condition in numbered for c in condition.find_all(exp.Column)) else numbered


def facts_select(builder: "QueryBuilder", entity: str, counted: Sequence[Sequence[str]] = (),
                 last_order: bool = False, kept: bool = False) -> exp.Select:
    """One row per customer with what ``entity`` says about them up to ``now``.

    orders: order_count, first_order_at, last_order_at, total_spent, with ``last_order`` the last
    order's id where the dialect has the aggregate (``last_order_in_facts``), and per status set of ``counted`` the
    number of orders of those statuses (``counted_column``: what the shared order rows number an
    order of those statuses against); events: last_event_at (any type), last_login_at. A plain
    GROUP BY each, the cost of the benchmark's floor. ``kept``: the last order's id as the kept order facts
    find it (``last_order_in_facts(kept=True)``; what they are compared with).
    """
    now = builder.ts(builder.now)
    instant, as_text, by_now = builder.instant_numbers("orders" if entity == "orders" else "events", now)
    if entity == "orders":
        counts = [exp.alias_(exp.Sum(this=exp.Case(
            ifs=[exp.If(this=col("o", "status").isin(*[lit(s) for s in sorted(set(statuses))]), true=exp.Literal.number(1))],
            default=exp.Literal.number(0))), counted_column(statuses)) for statuses in counted]
        last = ([exp.alias_(last_by(col("o", "order_id"), col("o", "created_at"), builder.dialect, kept), LAST_ORDER_ID)]
                if last_order and last_order_in_facts(builder.dialect, kept) else [])
        return (
            exp.select(
                col("o", "customer_id"),
                exp.alias_(exp.Count(this=exp.Star()), "order_count"),
                exp.alias_(as_text(exp.Min(this=col("o", instant("created_at")))), "first_order_at"),
                exp.alias_(as_text(exp.Max(this=col("o", instant("created_at")))), "last_order_at"),
                exp.alias_(exp.Sum(this=col("o", "total")), "total_spent"),
                *last,
                *counts,
            )
            .from_(builder.scanned("orders", "o"))
            .where(col("o", instant("created_at")) <= by_now)
            .group_by(col("o", "customer_id"))
        )
    login_at = exp.Case(ifs=[exp.If(this=col("e", "type").eq(lit("login")), true=col("e", instant("occurred_at")))])
    return (
        exp.select(col("e", "customer_id"),
                   exp.alias_(as_text(exp.Max(this=col("e", instant("occurred_at")))), "last_event_at"),
                   exp.alias_(as_text(exp.Max(this=login_at)), "last_login_at"))
        .from_(builder.scanned("events", "e"))
        .where(col("e", instant("occurred_at")) <= by_now)
        .group_by(col("e", "customer_id"))
    )


def shared_facts_create(entity: str, config: ProjectConfig, now: datetime,
                        counted: Sequence[Sequence[str]] = (), last_order: bool = False) -> exp.Create:
    """CREATE TEMPORARY TABLE of one ``SHARED_FACTS`` relation, for a pass on one connection
    (``counted``, ``last_order``: as ``facts_select``'s)."""
    builder = QueryBuilder(config, now, config.dialect)
    return temporary_table(SHARED_FACTS[entity], builder.with_ctes(facts_select(builder, entity, counted, last_order)))


def shared_customers_create(config: ProjectConfig, now: datetime) -> exp.Create:
    """CREATE TEMPORARY TABLE of the pass's customers (``SHARED_CUSTOMERS``): their source's rows."""
    builder = QueryBuilder(config, now, config.dialect)
    return temporary_table(SHARED_CUSTOMERS["customers"],
                           builder.with_ctes(exp.select("*").from_(builder.source("customers"))))


#: the meta key of a ``QueryBuilder.scanned`` subquery: the name of the source CTE it reads
_SCANNED = "engine_scanned_source"


def temporary_table(name: str, query: exp.Query) -> exp.Create:
    """CREATE TEMPORARY TABLE ``name`` AS ``query``."""
    return exp.Create(this=exp.to_table(name), kind="TABLE", expression=query,
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))


def shared_table(name: str) -> str:
    """The temporary table of a ``SHARED_FACTS`` entity or of a ``SHARED_ROWS`` name."""
    return {**SHARED_FACTS, **SHARED_ROWS, **SHARED_CUSTOMERS}[name]


def shared_facts_drop(entity: str, dialect: str, created: bool = False) -> str | None:
    """DROP TABLE IF EXISTS for one ``SHARED_FACTS`` (or ``SHARED_ROWS``) table left on a pooled connection
    by an earlier pass, by the dialect's temporary schema so that it can never drop a permanent table of
    the same name; where that schema cannot be named, only a table this pass ``created`` (else None)."""
    return drop_temporary_table(dialect_named(dialect), shared_table(entity), created)


def shared_facts_used(query: exp.Expression) -> list[str]:
    """The entities whose ``SHARED_FACTS`` table ``query`` reads, then the names of the ``SHARED_ROWS``
    tables it reads (to create before running it)."""
    names = {table.name for table in query.find_all(exp.Table)}
    return [name for name, table in (*SHARED_CUSTOMERS.items(), *SHARED_FACTS.items(), *SHARED_ROWS.items())
            if table in names]


class QueryBuilder:
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
        #: "an order after the trigger" as the trigger kind knows it by identity (an order trigger: a
        #: later order in its ranking, ties at one instant included); None: by time (``ordered_after_trigger``)
        self.later_order: exp.Expression | None = None
        #: a filter names the trigger's own properties (``trigger.total``): the query joins the trigger's
        #: row as ``tp`` (``join_trigger_properties``)
        self.uses_trigger_properties = False
        #: "the customer no longer matches the trigger's segment" (stop ``left_segment``), set by a segment_entry trigger
        self.left_segment: exp.Expression | None = None
        #: the response facts (last_opened_at, emails_opened(90), ...) the filters use, joined as ``fr``
        self.responses = responses.ResponseColumns()
        #: the time windows of the due query's steps, set before the trigger's instances are built: a kind
        #: may leave out the instances no step can be due for (``TriggerKind.within_windows``); None: a
        #: query without windows (``engine explain``: every instance)
        self.windows: Sequence[StepWindow] | None = None
        #: the CTE holding the campaign's ledger rows that the steps' anti-joins read (``campaign_ledger``);
        #: None: each step's anti-join reads the ledger's table (``without_ledger_rows``)
        self.campaign_ledger: str | None = None
        #: step id -> the earliest ``trigger_at`` a ledger row of an instance in the step's window can hold
        #: (``ledger_since``): the anti-joins leave out the campaign's older ledger rows; empty: every row
        self.ledger_since: dict[str, datetime] = {}
        #: a lower bound on the ``created_at`` of the ledger rows of the query's instances, as an expression of
        #: the query (``TriggerKind.ledger_created_since``): the anti-joins leave out rows written before it
        self.ledger_created: exp.Expression | None = None
        #: CTEs written NOT MATERIALIZED whatever the dialect's default (a due query's trigger instances
        #: and customers where ``Dialect.inline_instances``: ``due.due_query`` names them)
        self.inlined: tuple[str, ...] = ()
        #: the statements built read their sources whole (``scanned``); False for one that keeps only a few
        #: customers' rows afterwards (the kept order rows of the touched customers), whose condition must
        #: reach the source table's index
        self.whole_scans = True

    def ts(self, value: datetime) -> exp.Expression:
        return ts(value, self.dialect)

    def source(self, entity: str) -> str:
        if entity in SHARED_CUSTOMERS and self.shared_facts and dialect_named(self.dialect).shared_customers:
            return SHARED_CUSTOMERS[entity]  # the pass's table (``shared_customers_create``)
        name = f"src_{entity}"
        if name not in self.ctes:
            self.ctes[name] = source_select(self.config.sources[entity], self.dialect)
        return name

    def instant_numbers(self, entity: str, now: exp.Expression) -> tuple[
            Callable[[str], str], Callable[[exp.Expression], exp.Expression], exp.Expression]:
        """For a statement aggregating ``entity``'s instants (``facts_select``) or filtering a whole scan of it on
        them (an order date trigger's instances, the shared order rows), where Dialect.instant_number_sql:
        the name of the source's column holding an instant column as that number (added to the source's CTE,
        computed from the shop's value: no text formatted per row), the aggregate turned back into the
        instant's text, and ``now`` as a number; elsewhere the instant column itself, the aggregate unchanged
        and ``now``."""
        dialect = dialect_named(self.dialect)
        text_format = dialect.instant_text_format
        if dialect.instant_number_sql is None or text_format is None:
            return (lambda name: name), (lambda value: value), now
        source = self.ctes[self.source(entity)]

        def numbered(name: str) -> str:
            number = f"{name}{INSTANT_NUMBER_SUFFIX}"
            if number not in source.named_selects:
                text_ = next(p.this for p in source.expressions if p.alias_or_name == name)
                value = text_.expressions[1] if isinstance(text_, exp.Anonymous) and text_.name.upper() == "STRFTIME" \
                    else text_  # the shop's value (source_select formats it)
                source.select(exp.alias_(instant_number(value, text_, self.dialect), exp.to_identifier(number)),
                              copy=False)
            return number

        def as_text(value: exp.Expression) -> exp.Expression:
            return exp.Anonymous(this="STRFTIME", expressions=[lit(text_format), value])

        return numbered, as_text, instant_number(now, now, self.dialect)

    def scanned(self, entity: str, alias: str) -> exp.Expression:
        """``entity``'s source as ``alias`` for a statement that scans it whole: its CTE, or where
        Dialect.unflattened_scans a subquery of it the planner evaluates once per row (``LIMIT -1``)."""
        source = self.source(entity)
        if not (self.whole_scans and dialect_named(self.dialect).unflattened_scans):
            return exp.to_table(source).as_(alias)
        scan = exp.select("*").from_(source).limit(exp.Neg(this=exp.Literal.number(1))).subquery(alias)
        scan.meta[_SCANNED] = source  # its columns narrowed to those its reader uses (``with_ctes``)
        return scan

    def state_table(self, name: str) -> str:
        """Where this query reads the ledger's table ``name`` (entries, tags): the table itself when the
        ledger shares the warehouse's database; else the pass's copy (``sql.shipping``), a temporary
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

    def last_order_facts(self) -> str | None:
        """The order facts as ``customer_facts``, with ``LAST_ORDER_ID``; None where the dialect cannot
        find it in their scan (``last_order_in_facts``). The kept facts always carry it there, the pass's
        shared table when a campaign of the pass asks (``TriggerKind.last_order_id``: this query's does),
        this query's CTE once asked here. The kept facts carry it where the dialect finds it in their
        build (``last_order_in_facts(kept=True)``: also where the pass's cannot afford it)."""
        kept = isinstance(self.state.get(SHARED_FACTS["orders"]), exp.Table)
        return self._facts("orders", last_order=True) if last_order_in_facts(self.dialect, kept) else None

    def event_facts(self) -> str:
        """Per-customer time of the newest event as of ``now`` (for came_back)."""
        return self._facts("events")

    def shared_rows(self, name: str) -> str | None:
        """The pass's ``SHARED_ROWS`` table ``name`` when this query reads the shared tables, else None
        (the trigger kind computes its per-order facts in CTEs of this query)."""
        if SHARE_ROWS and isinstance(self.state.get(SHARED_ROWS[name]), exp.Table):  # kept by the engine (kept_facts)
            return self.state_table(SHARED_ROWS[name])
        return SHARED_ROWS[name] if self.shared_facts and SHARE_ROWS else None

    def _facts(self, entity: str, last_order: bool = False) -> str:
        if isinstance(self.state.get(SHARED_FACTS[entity]), exp.Table):  # kept by the engine (sql.kept_facts)
            return self.state_table(SHARED_FACTS[entity])
        if self.shared_facts:
            return SHARED_FACTS[entity]
        name = f"{entity[:-1]}_facts"
        # built again with the last order id if a filter built it first (its placeholders then go: built per pass)
        if name not in self.ctes or (last_order and LAST_ORDER_ID not in self.ctes[name].named_selects):
            self.ctes[name] = facts_select(self, entity, last_order=last_order)
        return name

    def with_ctes(self, body: exp.Query) -> exp.Query:
        for name, query in self.ctes.items():
            if name == responses.FACTS_CTE:  # built last: every filter of the query has named its columns
                query = self._response_facts()
            body = body.with_(name, as_=query, materialized=self._materialized(name), copy=False)  # built fresh: no copy
        self._narrow_scans(body)
        return body

    def _narrow_scans(self, query: exp.Query) -> None:
        """Each ``scanned`` subquery of ``query`` selects only its source's columns that the SELECT reading it
        names by its alias (a superset where a nested query reuses the alias; all of them where it names a
        column without its table): the co-routine converts no column nobody reads (an order's delivery date
        for the order facts: x0.85 of that statement at 1M)."""
        for scan in list(query.find_all(exp.Subquery)):
            source = scan.meta.get(_SCANNED)
            reader = scan.find_ancestor(exp.Select) if source is not None else None
            if reader is None:
                continue
            named = [c for key, value in reader.args.items() if key not in ("with", "with_")  # not the CTEs it carries
                     for part in (value if isinstance(value, list) else [value]) if isinstance(part, exp.Expression)
                     for c in part.find_all(exp.Column)]
            available = self.ctes[source].named_selects
            if any(not c.table and c.name in available for c in named):  # it might be the scan's: all kept
                continue
            used = {c.name for c in named if c.table == scan.alias}
            columns = [name for name in available if name in used]
            scan.this.set("expressions", [exp.column(name) for name in columns] or [exp.Star()])

    def _materialized(self, name: str) -> bool | None:
        """``False`` (NOT MATERIALIZED) for the CTEs ``inlined`` and for source CTEs where
        Dialect.stream_source_ctes (DuckDB, SQLite) but not of its ``materialised_sources``, else
        the database's choice.

        DuckDB materialises a CTE that is read twice - ``src_customers`` is, by
        the trigger and by the customer join - and holds every row and column of
        it in memory while the query runs: 200 MB per million customers. A
        source CTE only renames columns, so reading the table again costs a scan
        and lets the rows stream. SQLite materialises one without its table's
        indexes: a join on it by key scanned it whole for every outer row (the
        at_risk trigger's members and their last orders). Other dialects keep their default (PostgreSQL
        spills a materialised CTE to disk; others may not know the keyword).
        """
        dialect = dialect_named(self.dialect)
        if name in self.inlined:
            return False
        if dialect.stream_source_ctes and name.startswith("src_") and name[4:] not in dialect.materialised_sources:
            return False
        return None

    # --- what happened after the trigger (stop conditions, since-trigger facts) ---

    def ordered_after_trigger(self) -> exp.Expression:
        """An order after the trigger (and by ``now``) exists exactly when the newest order by
        ``now`` is after the trigger: a column comparison on the shared facts, not a scan per row.
        Where the trigger kind set ``later_order`` (an order trigger), that: by order identity."""
        if self.later_order is not None:
            return self.later_order.copy()
        self.uses_facts = True
        return _later(col("f", "last_order_at"), col("t", "trigger_at"))

    def active_after_trigger(self) -> exp.Expression:
        self.uses_event_facts = True
        return _later(col("fe", "last_event_at"), col("t", "trigger_at"))

    def join_facts(self, query: exp.Select, customer: exp.Column, orders: bool | None = None,
                   events: bool | None = None) -> exp.Select:
        """LEFT JOIN the fact relations (order facts as ``f``, event facts as ``fe``) on ``customer``:
        by default those this query's filters and stop conditions used. Joins onto ``query`` itself
        (no copy: callers pass a query they are building)."""
        if self.uses_facts if orders is None else orders:
            query = query.join(exp.to_table(self.customer_facts()).as_("f"),
                               on=col("f", "customer_id").eq(customer.copy()), join_type="left", copy=False)
        if self.uses_event_facts if events is None else events:
            query = query.join(exp.to_table(self.event_facts()).as_("fe"),
                               on=col("fe", "customer_id").eq(customer.copy()), join_type="left", copy=False)
        if self.responses:
            query = query.join(exp.to_table(responses.FACTS_CTE).as_("fr"),
                               on=col("fr", "customer_id").eq(text(customer.copy())), join_type="left", copy=False)
        return query

    # --- responses (the ledger's events) -----------------------------------------

    def _response_column(self, name: str) -> exp.Column:
        """``fr.<name>``, registering the response facts CTE (after the relation it reads) on first use."""
        if responses.FACTS_CTE not in self.ctes:
            self._engagement_rows()
            self.ctes[responses.FACTS_CTE] = exp.select(exp.Literal.number(1))  # replaced by with_ctes
        return col("fr", name)

    def _engagement_rows(self) -> str:
        """Where this query reads the human engagement rows: the pass's copy of them (the ledger in another
        database, ``sql.shipping``), else a CTE over the ledger's events table."""
        if EVENTS_TABLE in self.state:
            return self.state_table(EVENTS_TABLE)
        name = "engagements"
        if name not in self.ctes:
            self.ctes[name] = responses.engagement_select(EVENTS_TABLE, dialect_named(self.dialect).instant_text_format)
        return name

    def _response_facts(self) -> exp.Select:
        channels: dict[str, list[str]] = {}
        for channel in self.config.channels.values():
            channels.setdefault(channel.kind, []).append(channel.name)
        return self.responses.facts_select(
            self._engagement_rows(), self.ts(self.now), lambda days: self.ts(self.now - timedelta(days=days)),
            {kind: tuple(sorted(names)) for kind, names in channels.items()})

    def stop_condition(self, stop: str) -> exp.Expression:
        if stop == "ordered_again":
            return self.ordered_after_trigger()
        if stop == "came_back":
            return self.active_after_trigger()
        if stop == "unsubscribed":
            unsubscribed = col("c", "unsubscribed_at")
            return exp.and_(not_null(unsubscribed), unsubscribed <= self.ts(self.now), copy=False)
        if stop == "left_segment" and self.left_segment is not None:
            return self.left_segment.copy()
        raise ValueError(f"unknown stop condition {stop}")  # pragma: no cover

    # --- filters ---------------------------------------------------------------

    def attribute(self, name: str) -> exp.Expression:
        if name.startswith(TRIGGER_PREFIX):
            self.uses_trigger_properties = True
            return col("tp", name[len(TRIGGER_PREFIX):])
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
        if name in responses.ATTRIBUTES:
            return self._response_column(self.responses.attribute(name))
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
        if name in responses.WINDOW_COUNTS:
            column = self._response_column(self.responses.function(name, str(argument.this)))
            return exp.func("COALESCE", column, exp.Literal.number(0))
        if name in responses.FUNCTIONS:
            return self._response_column(self.responses.function(name, str(argument.this)))
        if name == "bought_category":
            orders, items = self.source("orders"), self.source("order_items")
            return exists(
                one_from(orders, "o3")
                .join(exp.to_table(items).as_("i3"), on=col("i3", "order_id").eq(col("o3", "order_id")))
                .where(col("o3", "customer_id").eq(col("c", "customer_id")),
                       col("i3", "category").eq(lit(argument.this)),
                       col("o3", "created_at") <= self.ts(self.now)))
        if name == "trigger_has_category":  # the instance's order (an order trigger's key is the order id)
            return exists(one_from(self.source("order_items"), "i6").where(
                text(col("i6", "order_id")).eq(col("t", "trigger_key")), col("i6", "category").eq(lit(argument.this))))
        raise ValueError(f"unknown function {name}")  # pragma: no cover

    def bind(self, text_: str, attributes: list[str]) -> exp.Expression:
        return bind_filter(parse_filter(text_, attributes), self.attribute, self.function)


#: The due query's column with the instant of a ``wait_until`` step's awaited event (campaigns with such a step).
WAIT_COLUMN = "wait_event_at"


def awaited_event(builder: QueryBuilder, step: Step) -> exp.Expression:
    """The instant of the first event ``step`` awaits (``wait_until``) after the instance's trigger (``t``)
    and by ``now``; NULL while none came. ``ordered``: an order; ``came_back``: any event; else that type."""
    wait = step.wait
    if wait.event == "ordered":
        rows, at, conditions = builder.source("orders"), "created_at", []
    else:
        rows, at = builder.source("events"), "occurred_at"
        conditions = [] if wait.event == "came_back" else [col("w", "type").eq(lit(wait.event))]
    return (exp.select(exp.Min(this=col("w", at))).from_(exp.to_table(rows).as_("w"))
            .where(col("w", "customer_id").eq(col("t", "customer_id")), col("w", at) > col("t", "trigger_at"),
                   col("w", at) <= builder.ts(builder.now), *conditions)).subquery()


def join_trigger_properties(builder: QueryBuilder, query: exp.Select,
                            properties: Callable[[], exp.Query | None]) -> exp.Select:
    """LEFT JOIN the trigger's own properties as ``tp`` on the instance (``t``) when a filter of the query
    named one; ``properties`` builds the kind's rows (customer_id, trigger_key, property...), one per instance.
    Joins onto ``query`` itself (no copy), as ``QueryBuilder.join_facts``."""
    if not builder.uses_trigger_properties:
        return query
    if "trigger_properties" not in builder.ctes:
        rows = properties()
        if rows is None:  # pragma: no cover - validation admits trigger.* only for kinds that have properties
            raise ValueError("this trigger has no properties")
        builder.ctes["trigger_properties"] = rows
    on = exp.and_(col("tp", "customer_id").eq(col("t", "customer_id")), col("tp", "trigger_key").eq(col("t", "trigger_key")))
    return query.join(exp.to_table("trigger_properties").as_("tp"), on=on, join_type="left", copy=False)


def entry_exists(builder: QueryBuilder, campaign: Campaign) -> exp.Select:
    return one_from(builder.state_table(ENTRIES_TABLE), "e").where(
        col("e", "campaign").eq(lit(campaign.name)),
        col("e", "customer_id").eq(text(col("m", "customer_id"))),
        col("e", "trigger_key").eq(col("m", "trigger_key")),
    )


def segment_instances(builder: QueryBuilder, campaign: Campaign, members: str) -> exp.Query:
    """A segment trigger's instances: the recorded entries up to the instant, and the members of the
    ``members`` CTE (customer_id, trigger_key) not entered yet, entering now."""
    now = builder.ts(builder.now)
    entered = (
        exp.select(col("c", "customer_id"), col("e", "trigger_key"), exp.alias_(col("e", "entered_at"), "trigger_at"))
        .from_(exp.to_table(builder.state_table(ENTRIES_TABLE)).as_("e"))
        .join(exp.to_table(builder.source("customers")).as_("c"), on=text(col("c", "customer_id")).eq(col("e", "customer_id")))
        .where(col("e", "campaign").eq(lit(campaign.name)), col("e", "entered_at") <= now)
    )
    entering = (
        exp.select(col("m", "customer_id"), col("m", "trigger_key"), exp.alias_(now.copy(), "trigger_at"))
        .from_(exp.to_table(members).as_("m"))
        .where(exists(entry_exists(builder, campaign)).not_())
    )
    return exp.union(entered, entering, distinct=False)


def new_segment_entries(builder: QueryBuilder, campaign: Campaign, members: str) -> exp.Query:
    """The entries a pass records for a segment trigger: the ``members`` CTE's rows not entered yet,
    as (campaign, customer_id, trigger_key, entered_at = the instant)."""
    select = (
        exp.select(lit(campaign.name), text(col("m", "customer_id")), col("m", "trigger_key"), builder.ts(builder.now))
        .from_(exp.to_table(members).as_("m"))
        .where(exists(entry_exists(builder, campaign)).not_())
    )
    return builder.with_ctes(select)


#: The CTE of a due query with its campaign's ledger rows (``campaign_ledger``)
CAMPAIGN_LEDGER = "engine_campaign_ledger"


#: How much earlier than the instance's own instant a ledger row of it may store its ``trigger_at`` beyond
#: the kind's ``TriggerKind.instant_drift``: the row holds the instant as the pass that recorded it read it
#: (naive UTC, from Python's parse or the settled write's CAST; text with milliseconds or microseconds on
#: SQLite), so the cut by ``ledger_since`` keeps a day below the window for any such representation.
LEDGER_INSTANT_SLACK = timedelta(days=1)


def ledger_since(earliest: datetime | None, drift: timedelta | None) -> datetime | None:
    """The earliest ``trigger_at`` a ledger row can hold and still be the row of an instance whose
    instant is ``earliest`` or later, for a kind whose stored instant lies at most ``drift`` before the
    instance's (``TriggerKind.instant_drift``); None: no such bound (no window start, or a moving instant)."""
    if earliest is None or drift is None:
        return None
    return earliest - drift - LEDGER_INSTANT_SLACK


def campaign_ledger(builder: "QueryBuilder", campaign: Campaign) -> exp.Query:
    """The identities (step, customer, trigger key) of the ledger's rows of ``campaign``: a CTE of the
    due query that every step's anti-join reads (``without_ledger_rows``), where the dialect reads the
    ledger once per campaign instead of once per step (``Dialect.campaign_ledger_cte``). Where steps have
    a ``ledger_since`` bound, their rows only from the earliest of those bounds on; the rows of steps
    without one (no window start: re-engage's letter) whole, in a scan of their own joined by UNION ALL
    (one filter ``step IN (...) OR trigger_at >= bound`` would keep DuckDB from skipping the older row
    groups: re-engage's keys on a ~1M-row grown ledger 15.5 ms whole, 4.9 cut, 12.5 with the OR, 8.4 as the
    UNION ALL). Where the kind bounds the rows' ``created_at`` (``builder.ledger_created``), only the rows
    written from it on."""

    def rows(*conditions: exp.Expression) -> exp.Select:
        query = (exp.select(col("l", "step"), col("l", "customer_id"), col("l", "trigger_key"))
                 .from_(exp.to_table(LEDGER_TABLE).as_("l")).where(col("l", "campaign").eq(lit(campaign.name)), *conditions))
        if builder.ledger_created is not None:
            query = query.where(col("l", "created_at") >= builder.ledger_created.copy())
        return query

    bounds = [builder.ledger_since.get(step.id) for step in campaign.steps]
    cut = [bound for bound in bounds if bound is not None]
    if not cut:
        return rows()
    whole = [lit(step.id) for step, bound in zip(campaign.steps, bounds) if bound is None]
    since = ledger_row_since(builder.ts(min(cut)))
    if not whole:
        return rows(since)
    return exp.union(rows(col("l", "step").isin(*whole)),
                     rows(col("l", "step").isin(*[w.copy() for w in whole]).not_(), since), distinct=False)


def ledger_row_since(bound: exp.Expression) -> exp.Expression:
    """The ledger row ``l`` may be the row of an instance whose ``trigger_at`` is ``bound`` or later: its
    own ``trigger_at`` is not before ``bound``, or it has none (the column allows NULL; this engine always
    writes it, a row without one is never left out). DuckDB still skips the row groups whose zone map lies
    wholly before ``bound`` (one campaign's keys on a ~1M-row ledger grown in time order: 17.1 ms read
    whole, 5.4 ms cut, 5.5 ms with the NULL test)."""
    at = col("l", "trigger_at")
    return exp.paren(exp.or_(at >= bound, at.copy().is_(exp.null()), copy=False), copy=False)


def without_ledger_rows(query: exp.Select, campaign: Campaign, step: Step, ledger: str | None = None,
                        since: exp.Expression | None = None, created: exp.Expression | None = None) -> exp.Select:
    """Leave out instances the ledger already holds for this step: an anti-join written as a
    LEFT JOIN on the ledger's unique identity plus ``IS NULL`` rather than ``NOT EXISTS``.
    ``ledger``: the query's CTE of the campaign's ledger rows (``campaign_ledger``), joined by the
    rest of the identity; None: the ledger's table.

    The column tested is one the join condition compares (``campaign``; ``step`` on the CTE), so that
    PostgreSQL sees the anti-join: with another column (it was ``message_key``) it planned an outer join filtered
    by ``IS NULL`` on a column without NULLs, estimated at 1 row, and nested loops above it over
    every customer (25 s a minute later at 1M orders, benchmarks/README.md).

    DuckDB cannot decorrelate a subquery whose correlation casts the outer
    column (the customer id compares as text): it computes a "delim join" that
    buffers every candidate row with all its columns (about 200 MB per million
    due rows) before the first one streams out, once per step. As a join the
    step's ledger rows are the hash table and the candidates stream (3x cheaper
    at 5M orders). SQLite and PostgreSQL use the identity index either way.
    Same rows: the identity is unique, so a candidate matches at most one row.
    ``since``: a lower bound on the ledger rows' ``trigger_at`` (``ledger_since``) where the step reads the
    ledger's table (the CTE is cut by ``campaign_ledger``: a per-step bound on it as well measured no gain);
    ``created``: likewise a lower bound on their ``created_at`` (``QueryBuilder.ledger_created``).
    Extends ``query`` itself (no copy: callers pass the step's query they are building).
    """
    on = [
        col("l", "step").eq(lit(step.id)),
        col("l", "customer_id").eq(text(col("t", "customer_id"))),
        col("l", "trigger_key").eq(col("t", "trigger_key")),
    ]
    if ledger is None:
        on.insert(0, col("l", "campaign").eq(lit(campaign.name)))
        if since is not None:  # the step's ``ledger_since``: its older ledger rows match none of its instances
            on.append(ledger_row_since(since))
        if created is not None:  # ``QueryBuilder.ledger_created``: rows written before it match none either
            on.append(col("l", "created_at") >= created)
    tested = col("l", "campaign" if ledger is None else "step")
    relation = exp.to_table(LEDGER_TABLE if ledger is None else ledger)
    return query.join(relation.as_("l"), on=exp.and_(*on, copy=False), join_type="left", copy=False).where(
        tested.is_(exp.null()), copy=False)


def _local_day_bound(window: StepWindow, zone: ZoneInfo, attribute: str) -> datetime:
    """A ``zone_window`` bound on trigger instants as a bound on the dates whose local midnight in
    ``zone`` is the instant (a date trigger, ``TriggerKind.local_date``), written as that date's
    midnight, a second before: ``due_cutoff`` becomes the last second of the latest date whose
    midnight is at or before it, ``earliest`` the second before the first date whose midnight is
    at or after it. A second off midnight, so that a date column, a date kept as text (which sorts
    before its own midnight's text) and a timestamp column holding the date with a time of day
    all compare alike. ``zone_window``'s margin covers a midnight the local clock skips or repeats."""
    value = getattr(window, attribute)
    local = value.astimezone(zone)
    day = local.date()
    if attribute == "due_cutoff" or local.time() != datetime.min.time():
        day += timedelta(days=1)
    return datetime.combine(day, datetime.min.time(), tzinfo=value.tzinfo) - timedelta(seconds=1)


def per_zone_window(builder: QueryBuilder, step: Step, window: StepWindow, zones: Sequence[object],
                    dates: bool = False) -> list[exp.Expression]:
    """The trigger time bounds of ``zone_window`` for each of ``zones`` (the customers' time zone
    values), chosen by the customer's zone column; other values keep the plain ``window``.
    ``dates``: the trigger is a date anchored at the customer's local midnight (``TriggerKind.local_date``):
    the bounds become dates (``_local_day_bound``), other values keep the window widened by the
    farthest zones (``LOCAL_DAY_EARLIER``, ``LOCAL_DAY_LATER``)."""
    default, horizon = builder.config.default_timezone, builder.config.stale_horizon
    # zone_window of the pass instant (derive: at bind time when the query is compiled once)
    bounds = {value: derive(builder.now, lambda now, z=customer_zone(value, default): zone_window(step, now, horizon, z))
              for value in zones if value is None or isinstance(value, str)}
    zones_of = {value: customer_zone(value, default) for value in bounds}
    zone = col("c", "timezone")

    def bound_of(value, attribute: str):
        if dates:
            return derive(bounds[value], lambda window, z=zones_of[value]: _local_day_bound(window, z, attribute))
        return derive(bounds[value], lambda window: getattr(window, attribute))

    def pick(attribute: str) -> exp.Expression:
        ifs = [exp.If(this=zone.is_(exp.null()) if value is None else zone.eq(lit(value)),  # both copy ``zone``
                      true=builder.ts(bound_of(value, attribute)))
               for value in bounds]
        plain = getattr(window, attribute)
        if dates:
            plain = plain + LOCAL_DAY_LATER if attribute == "due_cutoff" else plain - LOCAL_DAY_EARLIER
        return exp.Case(ifs=ifs, default=builder.ts(plain))

    if not bounds:
        return []
    conditions = [col("t", "trigger_at") <= pick("due_cutoff")]
    if window.earliest is not None:
        conditions.append(col("t", "trigger_at") >= pick("earliest"))
    return conditions


def zones_query(config: ProjectConfig) -> exp.Query:
    """The distinct values of the customers' time zone column (for ``due_query``'s ``zones``)."""
    builder = QueryBuilder(config, datetime.min, config.dialect)
    customers = builder.source("customers")
    return builder.with_ctes(exp.select(col("c", "timezone")).distinct().from_(exp.to_table(customers).as_("c")))


def variant_columns(campaign: Campaign) -> int:
    return max(len(step.variants) for step in campaign.steps)


def is_customer(column: exp.Expression, customer_id: str) -> exp.Expression:
    """``column`` is this customer: ids compare as text, as in the ledger."""
    return text(column).eq(lit(customer_id))


def segment_query(config: ProjectConfig, now: datetime, where: str, dialect: str | None = None,
                  state: StateRelations | None = None) -> exp.Query:
    """customer_id and every mapped customer attribute of the customers matching ``where``
    (the campaign filter language; facts like order_count are as of ``now``), by customer id."""
    builder = QueryBuilder(config, now, dialect or config.dialect, state=state)
    customers = builder.source("customers")
    condition = builder.bind(where, segment_attributes(config))
    query = (
        exp.select(*[exp.alias_(col("c", a), exp.to_identifier(a)) for a in config.customer_attributes()])
        .from_(exp.to_table(customers).as_("c"))
    )
    query = builder.join_facts(query, col("c", "customer_id"))
    return builder.with_ctes(query.where(condition).order_by(col("c", "customer_id")))


def render_sql(expression: exp.Expression, dialect: str, pretty: bool = False, copy: bool = True) -> str:
    """``expression`` as SQL text of ``dialect``. ``copy=False`` for a tree built only to be rendered:
    sqlglot's generator may rewrite the tree for the dialect, so by default it renders a copy."""
    return expression.sql(dialect=dialect, pretty=pretty, copy=copy)
