"""Campaign statistics (R-S1): what each campaign and step did, and what came of it.

Everything is counted by the databases; Python only adds up aggregates.

- The ledger side (entered, sent, skipped by reason, failed, unknown,
  unsubscribed, group sizes, messages per day) is aggregated by the ledger's
  database: sqlglot queries over the relations the ledger hands out
  (``ledger_reader.messages_relation`` / ``unsubscribes_relation``), run by its
  ``LedgerReader``; this module never names a ledger table.
- Conversions join the campaign's messages to the mapped ``orders``. When the
  ledger shares the warehouse's database that is one query per campaign.
  Otherwise the campaign's messages are streamed from the ledger database in
  batches of whole customers and each batch travels to the warehouse as a
  ``VALUES`` table, so the warehouse runs the very same attribution query:
  both paths give identical numbers, and no order is ever loaded into Python.

Definitions (README "Measuring campaigns"):

- A *message* is a ledger row with status ``sent`` (its time: when the send
  was recorded, ``updated_at``) or a holdout row (``skipped``/``holdout``; its
  time: ``due_at``, when it would have gone out). The period (``since`` /
  ``until``) selects ledger rows by ``due_at``.
- An order *converts* for a campaign when it is placed after one of the
  campaign's messages to that customer and within the campaign's
  ``conversion_window`` of it. It is attributed to exactly one message: the
  last one of the campaign before the order (ties: the step id that sorts last, then
  trigger key). So each order counts once per campaign, in one step, in the
  sent or the holdout group of that message.
- ``converted``: distinct customers with at least one attributed order;
  ``revenue``: the sum of those orders' ``total``.
- ``unsubscribed``: distinct customers with an ``engine_unsubscribes`` row
  after a sent message of the campaign (attributed to its last step the same way).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

from sqlglot import exp

from engine.clock import Duration, sql_timestamp_text
from engine.dialects import dialect_named
from engine.sql.attribution import instant, plus
from engine.sql.compile import col, day_text, lit, render_sql, source_select, text, ts
from engine.errors import ConfigError
from engine.model import Campaign, ProjectConfig
from engine.state.ledger_reader import LedgerReader, messages_relation, unsubscribes_relation
from engine.state.warehouse import Database
from engine.tools.uplift import Comparison, compare

#: messages per warehouse query when the ledger lives in another database (rounded up to whole customers;
#: each query scans the orders once, so fewer, larger batches)
BATCH_SIZE = 2000


@dataclass
class Group:
    """The sent group or the holdout group of a step (or of the whole campaign)."""

    customers: int = 0
    converted: int = 0
    orders: int = 0
    revenue: float = 0.0

    def as_dict(self) -> dict:
        return {"customers": self.customers, "converted": self.converted, "orders": self.orders,
                "revenue": round(self.revenue, 2)}


@dataclass
class StepStats:
    """One step's figures; ``step`` None is the whole campaign."""

    step: str | None
    entered: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    in_flight: int = 0
    skipped: Counter = field(default_factory=Counter)
    unsubscribed: int = 0
    reached: Group = field(default_factory=Group)
    holdout: Group = field(default_factory=Group)

    @property
    def comparison(self) -> Comparison:
        return compare(self.reached.converted, self.reached.customers, self.holdout.converted, self.holdout.customers)

    def as_dict(self) -> dict:
        return {"step": self.step, "entered": self.entered, "sent": self.sent, "failed": self.failed,
                "unknown": self.unknown, "in_flight": self.in_flight, "skipped": dict(sorted(self.skipped.items())),
                "unsubscribed": self.unsubscribed, "sent_group": self.reached.as_dict(),
                "holdout_group": self.holdout.as_dict(), "uplift": self.comparison.as_dict()}


@dataclass
class KindStats:
    """The outcomes of a campaign's messages of one channel kind (email, sms, push, webhook, letter):
    the kind of the channel each ledger row names; "-" for rows decided before a channel was chosen."""

    kind: str
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    in_flight: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "sent": self.sent, "failed": self.failed, "unknown": self.unknown,
                "in_flight": self.in_flight, "skipped": dict(sorted(self.skipped.items()))}


@dataclass
class Day:
    sent: int = 0
    conversions: int = 0  # orders attributed to a sent message, by the order's day
    revenue: float = 0.0


@dataclass
class CampaignStats:
    name: str
    conversion_window: Duration
    holdout_percent: float
    total: StepStats
    steps: list[StepStats]
    daily: dict[str, Day]
    kinds: list[KindStats] = field(default_factory=list)

    def as_dict(self) -> dict:
        window = self.conversion_window  # calendar months have no fixed number of seconds
        return {"campaign": self.name,
                "conversion_window_seconds": int(window.total_seconds()) if isinstance(window, timedelta) else None,
                "holdout_percent": self.holdout_percent, "total": self.total.as_dict(),
                "steps": [s.as_dict() for s in self.steps], "kinds": [k.as_dict() for k in self.kinds],
                "daily": {d: {"sent": v.sent, "conversions": v.conversions, "revenue": round(v.revenue, 2)}
                          for d, v in sorted(self.daily.items())}}


class _Queries:
    """The SQL of one campaign's statistics, for a ledger rendered in ``ledger_dialect``."""

    def __init__(self, campaign: Campaign, ledger_dialect: str, since: datetime | None, until: datetime | None):
        self.campaign = campaign
        self.dialect = ledger_dialect
        self.since = since
        self.until = until

    def rows(self) -> exp.Select:
        """The campaign's ledger rows in the period, as ``l``."""
        conditions = [col("l", "campaign").eq(lit(self.campaign.name))]
        due = instant(col("l", "due_at"), self.dialect)
        if self.since is not None:
            conditions.append(due >= ts(self.since, self.dialect))
        if self.until is not None:
            conditions.append(due < ts(self.until, self.dialect))
        return exp.select().from_(messages_relation("l")).where(*conditions)

    def messages(self) -> exp.Select:
        """step, customer_id, trigger_key, grp ('sent' | 'holdout'), message_at."""
        status, reason = col("l", "status"), col("l", "reason")
        is_sent = status.eq(lit("sent"))
        return self.rows().select(
            col("l", "step"), col("l", "customer_id"), col("l", "trigger_key"),
            exp.alias_(exp.Case(ifs=[exp.If(this=is_sent, true=lit("sent"))], default=lit("holdout")), "grp"),
            exp.alias_(exp.Case(ifs=[exp.If(this=is_sent, true=instant(col("l", "updated_at"), self.dialect))],
                                default=instant(col("l", "due_at"), self.dialect)), "message_at"),
        ).where(exp.or_(is_sent, exp.and_(status.eq(lit("skipped")), reason.eq(lit("holdout")))))

    def outcomes(self) -> exp.Select:
        c = lambda n: col("l", n)  # noqa: E731
        return self.rows().select(c("step"), c("status"), c("reason"), c("channel"), exp.Count(this=exp.Star())
                                  ).group_by(c("step"), c("status"), c("reason"), c("channel"))

    def entered(self) -> exp.Select:
        distinct = self.rows().select(col("l", "customer_id"), col("l", "trigger_key")).distinct()
        return exp.select(exp.Count(this=exp.Star())).from_(distinct.subquery("d"))

    def group_sizes(self) -> exp.Select:
        """(step or '', grp, distinct customers): per step, then for the whole campaign."""
        customers = exp.Count(this=exp.Distinct(expressions=[col("m", "customer_id")]))
        per_step = exp.select(col("m", "step"), col("m", "grp"), customers).from_(
            exp.to_table("msgs").as_("m")).group_by(col("m", "step"), col("m", "grp"))
        whole = exp.select(lit(""), col("m", "grp"), customers.copy()).from_(
            exp.to_table("msgs").as_("m")).group_by(col("m", "grp"))
        return exp.union(per_step, whole, distinct=False).with_("msgs", as_=self.messages())

    def unsubscribed(self) -> exp.Select:
        """(step or '', distinct customers who unsubscribed after a sent message; attributed to the last one)."""
        m, u = "m", "u"
        rank = exp.Window(this=exp.RowNumber(), partition_by=[col(u, "customer_id"), col(u, "kind")],
                          order=exp.Order(expressions=[exp.Ordered(this=col(m, n), desc=True)
                                                       for n in ("message_at", "step", "trigger_key")]))
        hits = (
            exp.select(col(m, "step"), col(m, "customer_id"), exp.alias_(rank, "rn"))
            .from_(exp.to_table("msgs").as_(m))
            .join(unsubscribes_relation(u),
                  on=exp.and_(col(u, "customer_id").eq(col(m, "customer_id")),
                              instant(col(u, "created_at"), self.dialect) > col(m, "message_at")))
            .where(col(m, "grp").eq(lit("sent")))
        )
        customers = exp.Count(this=exp.Distinct(expressions=[col("h", "customer_id")]))
        per_step = exp.select(col("h", "step"), customers).from_(exp.to_table("hits").as_("h")).where(
            col("h", "rn").eq(1)).group_by(col("h", "step"))
        whole = exp.select(lit(""), customers.copy()).from_(exp.to_table("hits").as_("h"))
        return exp.union(per_step, whole, distinct=False).with_("msgs", as_=self.messages()).with_("hits", as_=hits)

    def sent_per_day(self) -> exp.Select:
        day = day_text(col("m", "message_at"), self.dialect)
        return (exp.select(day, exp.Count(this=exp.Star())).from_(exp.to_table("msgs").as_("m"))
                .where(col("m", "grp").eq(lit("sent"))).group_by(day.copy()).with_("msgs", as_=self.messages()))

    def messages_by_customer(self) -> exp.Select:
        return (exp.select("*").from_(self.messages().subquery("m"))
                .order_by(exp.column("customer_id"), exp.column("message_at"), exp.column("step")))


def conversions_query(campaign: Campaign, config: ProjectConfig, messages: exp.Expression) -> exp.Query:
    """(kind 'step' | 'campaign' | 'day', label, grp, customers, orders, revenue) of the orders
    attributed to ``messages`` (a query or VALUES with the columns of ``_Queries.messages``)."""
    dialect = config.dialect
    m, o = "m", "o"
    customer = text(col(o, "customer_id"))
    rank = exp.Window(this=exp.RowNumber(), partition_by=[customer.copy(), col(o, "order_id")],
                      order=exp.Order(expressions=[exp.Ordered(this=col(m, n), desc=True)
                                                   for n in ("message_at", "step", "trigger_key")]))
    attributed = (
        exp.select(col(m, "step"), col(m, "grp"), exp.alias_(customer, "customer_id"), col(o, "total"),
                   exp.alias_(day_text(col(o, "created_at"), dialect), "day"), exp.alias_(rank, "rn"))
        .from_(exp.to_table("msgs").as_(m))
        .join(exp.to_table("src_orders").as_(o), on=exp.and_(
            customer.copy().eq(col(m, "customer_id")),
            col(o, "created_at") > col(m, "message_at"),
            col(o, "created_at") <= plus(col(m, "message_at"), campaign.conversion_window, dialect)))
    )

    def level(kind: str, label: exp.Expression, *keys: exp.Expression) -> exp.Select:
        return (exp.select(lit(kind), label, col("a", "grp"),
                           exp.Count(this=exp.Distinct(expressions=[col("a", "customer_id")])),
                           exp.Count(this=exp.Star()), exp.Sum(this=col("a", "total")))
                .from_(exp.to_table("attributed").as_("a")).where(col("a", "rn").eq(1))
                .group_by(*keys, col("a", "grp")))

    body = exp.union(
        exp.union(level("step", col("a", "step"), col("a", "step")), level("campaign", lit("")), distinct=False),
        level("day", col("a", "day"), col("a", "day")), distinct=False)
    return (body.with_("src_orders", as_=source_select(config.sources["orders"], dialect), copy=False)
            .with_(f"msgs({', '.join(MESSAGE_COLUMNS)})", as_=messages, copy=False)
            .with_("attributed", as_=attributed, copy=False))


MESSAGE_COLUMNS = ("step", "customer_id", "trigger_key", "grp", "message_at")


def messages_values(rows: list, dialect: str) -> exp.Values:
    """A batch of message rows from the ledger database as VALUES for the warehouse (named by the CTE).

    Built without sqlglot's builders (which parse and copy): this runs for every message."""
    timestamp = exp.DataType.build("TIMESTAMP")
    as_text = dialect_named(dialect).instant_text_format is not None

    def instant_literal(value) -> exp.Expression:
        if as_text:
            return ts(_parse(value), dialect)
        return exp.Cast(this=exp.Literal.string(sql_timestamp_text(_parse(value))), to=timestamp.copy())

    return exp.Values(expressions=[
        exp.Tuple(expressions=[lit(str(r.step)), lit(str(r.customer_id)), lit(str(r.trigger_key)), lit(str(r.grp)),
                               instant_literal(r.message_at)]) for r in rows])


def _parse(value) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _money(value) -> float:
    return float(value) if value is not None else 0.0


class StatsReader:
    """Binds a project's campaigns to its warehouse database and its ledger's reader."""

    def __init__(self, config: ProjectConfig, warehouse: Database, ledger: LedgerReader, batch_size: int = BATCH_SIZE):
        if "orders" not in config.sources:
            raise ConfigError("engine stats needs the orders entity to count conversions; map sources.orders in engine.yaml")
        self.config = config
        self.warehouse = warehouse
        self.ledger = ledger
        # a read-only command on a ledger not created yet reads an empty one in memory: not the warehouse's
        self.shared = config.ledger_shares_warehouse and ledger.in_database(warehouse)
        self.batch_size = batch_size

    def campaign(self, campaign: Campaign, since: datetime | None = None, until: datetime | None = None) -> CampaignStats:
        ledger_dialect = self.config.dialect if self.shared else self.ledger.dialect
        queries = _Queries(campaign, ledger_dialect, since, until)
        run = lambda q: self.ledger.select(q, ledger_dialect)  # noqa: E731
        steps = {s.id: StepStats(s.id) for s in campaign.steps}
        total = StepStats(None)

        def step(name: str) -> StepStats:  # a step since removed from the campaign still counts
            return steps.setdefault(name, StepStats(name))

        kinds: dict[str, KindStats] = {}
        for name, status, reason, channel, n in run(queries.outcomes()):
            target = step(name)
            configured = self.config.channels.get(channel or "")
            kind = configured.kind if configured is not None else (channel or "-")  # a channel since removed
            for figures in (target, total, kinds.setdefault(kind, KindStats(kind))):
                if status == "skipped":
                    figures.skipped[reason or "-"] += n
                elif status in ("sent", "failed", "unknown"):
                    setattr(figures, status, getattr(figures, status) + n)
                elif status == "claimed":
                    figures.in_flight += n
            target.entered += n
        total.entered = run(queries.entered())[0][0]
        for name, group, n in run(queries.group_sizes()):
            figures = step(name) if name else total
            (figures.reached if group == "sent" else figures.holdout).customers = n
        for name, n in run(queries.unsubscribed()):
            (step(name) if name else total).unsubscribed = n
        daily: dict[str, Day] = {}
        for day, n in run(queries.sent_per_day()):
            daily.setdefault(str(day), Day()).sent = n
        for kind, label, group, customers, orders, revenue in self._conversions(campaign, queries):
            if kind == "day":
                if group == "sent":
                    figures_day = daily.setdefault(str(label), Day())
                    figures_day.conversions += orders
                    figures_day.revenue += _money(revenue)
                continue
            figures = step(label) if kind == "step" else total
            target_group = figures.reached if group == "sent" else figures.holdout
            target_group.converted += customers
            target_group.orders += orders
            target_group.revenue += _money(revenue)
        for figures in (*steps.values(), total):  # cents, the same however the sums were split
            figures.reached.revenue = round(figures.reached.revenue, 2)
            figures.holdout.revenue = round(figures.holdout.revenue, 2)
        for figures_day in daily.values():
            figures_day.revenue = round(figures_day.revenue, 2)
        return CampaignStats(campaign.name, campaign.conversion_window, campaign.holdout, total,
                             list(steps.values()), daily, [kinds[k] for k in sorted(kinds)])

    def _conversions(self, campaign: Campaign, queries: _Queries) -> Iterator[tuple]:
        dialect = self.config.dialect
        if self.shared:
            yield from self.warehouse.fetch_all(render_sql(conversions_query(campaign, self.config, queries.messages()), dialect))
            return
        for batch in self._customer_batches(queries):
            values = messages_values(batch, dialect)
            yield from self.warehouse.fetch_all(render_sql(conversions_query(campaign, self.config, values), dialect))

    def _customer_batches(self, queries: _Queries) -> Iterator[list]:
        """The campaign's messages from the ledger database, about ``batch_size`` at a time, never
        splitting one customer's messages (attribution compares them)."""
        batch: list = []
        for rows in self.ledger.stream(queries.messages_by_customer(), queries.dialect, self.batch_size):
            for row in rows:
                if len(batch) >= self.batch_size and row.customer_id != batch[-1].customer_id:
                    yield batch
                    batch = []
                batch.append(row)
        if batch:
            yield batch
