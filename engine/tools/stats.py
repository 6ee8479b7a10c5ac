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
- Responses: ``engine_events`` joined to the campaign's ledger rows of the
  period in the ledger's database, grouped by step, variant, channel and event
  type: messages with at least one such event (unique opens, clicks, ...) and
  events; machine opens and scanner clicks only with ``include_machine``.
- Every figure is also kept per variant and per channel kind (the ledger row's
  channel, its kind by engine.yaml), the same queries with more GROUP BY
  branches; A/B variants are compared by conversion and click rate (``ab_tests``).
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
from engine.state.events import EVENT_TYPES
from engine.state.ledger_reader import LedgerReader, events_relation, messages_relation, unsubscribes_relation
from engine.state.warehouse import Database
from engine.tools.uplift import MIN_EXPECTED, SIGNIFICANCE, Comparison, compare

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


#: the figure each event type adds up to: distinct messages with at least one such event
EVENT_FIGURES = {"delivered": "delivered", "open": "opened", "click": "clicked", "scan": "scanned",
                 "bounce": "bounced", "soft_bounce": "soft_bounced", "complaint": "complained",
                 "undelivered": "undelivered"}
assert set(EVENT_FIGURES) == set(EVENT_TYPES)


@dataclass
class Engagement:
    """How recipients responded to a set of messages (engine_events): each figure is the number of
    messages with at least one such event ("unique"); ``clicks`` counts every click. Machine opens and
    link-scanner clicks are left out unless asked for (``StatsReader(include_machine=True)``)."""

    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    clicks: int = 0
    scanned: int = 0
    bounced: int = 0
    soft_bounced: int = 0
    complained: int = 0
    undelivered: int = 0

    def add(self, event_type: str, messages: int, events: int) -> None:
        name = EVENT_FIGURES[event_type]
        setattr(self, name, getattr(self, name) + messages)
        if event_type == "click":
            self.clicks += events

    def as_dict(self, sent: int) -> dict:
        return {**self.__dict__, "open_rate": rate(self.opened, sent), "click_rate": rate(self.clicked, sent)}


def rate(count: int, of: int) -> float | None:
    """``count / of`` (None of nothing): open and click rates are per message sent."""
    return count / of if of else None


@dataclass(kw_only=True)
class Reach:
    """What every row of the figures has: the messages sent, the customers they reached, the
    unsubscribes and conversions that followed, and the responses (opens, clicks, bounces, ...)."""

    sent: int = 0
    unsubscribed: int = 0
    reached: Group = field(default_factory=Group)
    engagement: Engagement = field(default_factory=Engagement)

    @property
    def click_rate(self) -> float | None:
        return rate(self.engagement.clicked, self.sent)

    def reach_dict(self) -> dict:
        return {"sent": self.sent, "unsubscribed": self.unsubscribed, "sent_group": self.reached.as_dict(),
                "engagement": self.engagement.as_dict(self.sent)}


@dataclass(kw_only=True)
class Outcomes(Reach):
    """A ``Reach`` with the ledger's other outcomes: failed, unknown, in flight and skipped by reason."""

    failed: int = 0
    unknown: int = 0
    in_flight: int = 0
    skipped: Counter = field(default_factory=Counter)

    def outcome_figures(self) -> dict:
        """sent, failed, unknown, in_flight, skipped, unsubscribed, sent_group: in the order the outputs show them."""
        return {"sent": self.sent, "failed": self.failed, "unknown": self.unknown, "in_flight": self.in_flight,
                "skipped": dict(sorted(self.skipped.items())), "unsubscribed": self.unsubscribed,
                "sent_group": self.reached.as_dict()}


@dataclass
class StepStats(Outcomes):
    """One step's figures; ``step`` None is the whole campaign."""

    step: str | None
    entered: int = 0
    holdout: Group = field(default_factory=Group)

    @property
    def comparison(self) -> Comparison:
        return compare(self.reached.converted, self.reached.customers, self.holdout.converted, self.holdout.customers)

    def as_dict(self) -> dict:
        return {"step": self.step, "entered": self.entered, **self.outcome_figures(),
                "holdout_group": self.holdout.as_dict(), "uplift": self.comparison.as_dict(),
                "engagement": self.engagement.as_dict(self.sent)}


@dataclass
class VariantStats(Reach):
    """One variant of a step: its messages, the customers it reached and what came of it."""

    step: str
    variant: str

    def as_dict(self) -> dict:
        return {"step": self.step, "variant": self.variant, **self.reach_dict()}


@dataclass(frozen=True)
class ABTest:
    """An A/B variant against its step's first A/B variant (the control): conversion rate (customers who
    converted / customers reached) and click rate (messages clicked / messages sent), each with the
    two-proportion z-test of engine.tools.uplift."""

    step: str
    control: str
    variant: str
    conversion: Comparison
    clicks: Comparison

    def as_dict(self) -> dict:
        def side(c: Comparison) -> dict:
            return {"variant_rate": c.sent_rate, "control_rate": c.holdout_rate, "difference_points": c.uplift_points,
                    "p_value": c.p_value, "verdict": verdict(c)}
        return {"step": self.step, "control": self.control, "variant": self.variant,
                "conversion": side(self.conversion), "clicks": side(self.clicks)}


def verdict(c: Comparison) -> str:
    """The z-test's word on an A/B comparison (the uplift note speaks of a holdout group)."""
    if c.sent_rate is None or c.holdout_rate is None:
        return "nothing to compare yet"
    if c.p_value is None:
        return f"too small to say anything (each side needs {MIN_EXPECTED} with and {MIN_EXPECTED} without)"
    if c.p_value < SIGNIFICANCE:
        return f"significant at 5 % (p = {c.p_value:.3f})"
    return f"not significant (p = {c.p_value:.3f}): the difference may be chance"


@dataclass
class KindStats(Outcomes):
    """The outcomes of a campaign's messages of one channel kind (email, sms, push, webhook, letter):
    the kind of the channel each ledger row names; "-" for rows decided before a channel was chosen."""

    kind: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, **self.outcome_figures(), "engagement": self.engagement.as_dict(self.sent)}


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
    variants: list[VariantStats] = field(default_factory=list)
    ab_tests: list[ABTest] = field(default_factory=list)
    #: whether machine opens and link-scanner clicks count as engagement here
    include_machine: bool = False

    def as_dict(self) -> dict:
        window = self.conversion_window  # calendar months have no fixed number of seconds
        return {"campaign": self.name,
                "conversion_window_seconds": int(window.total_seconds()) if isinstance(window, timedelta) else None,
                "holdout_percent": self.holdout_percent, "total": self.total.as_dict(),
                "steps": [s.as_dict() for s in self.steps], "kinds": [k.as_dict() for k in self.kinds],
                "variants": [v.as_dict() for v in self.variants], "ab_tests": [t.as_dict() for t in self.ab_tests],
                "machine_events_included": self.include_machine,
                "daily": {d: {"sent": v.sent, "conversions": v.conversions, "revenue": round(v.revenue, 2)}
                          for d, v in sorted(self.daily.items())}}


class _Queries:
    """The SQL of one campaign's statistics, for a ledger rendered in ``ledger_dialect``."""

    def __init__(self, campaign: Campaign, ledger_dialect: str, since: datetime | None, until: datetime | None,
                 kinds: dict[str, str] | None = None, include_machine: bool = False):
        self.campaign = campaign
        self.dialect = ledger_dialect
        self.since = since
        self.until = until
        #: channel -> its kind (engine.yaml), for the figures per kind
        self.kinds = kinds or {}
        self.include_machine = include_machine

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
        """``MESSAGE_COLUMNS``: step, variant, channel, customer_id, trigger_key, grp ('sent' | 'holdout'), message_at."""
        status, reason = col("l", "status"), col("l", "reason")
        is_sent = status.eq(lit("sent"))
        return self.rows().select(
            col("l", "step"), col("l", "variant"), col("l", "channel"), col("l", "customer_id"), col("l", "trigger_key"),
            exp.alias_(exp.Case(ifs=[exp.If(this=is_sent, true=lit("sent"))], default=lit("holdout")), "grp"),
            exp.alias_(exp.Case(ifs=[exp.If(this=is_sent, true=instant(col("l", "updated_at"), self.dialect))],
                                default=instant(col("l", "due_at"), self.dialect)), "message_at"),
        ).where(exp.or_(is_sent, exp.and_(status.eq(lit("skipped")), reason.eq(lit("holdout")))))

    def outcomes(self) -> exp.Select:
        c = lambda n: col("l", n)  # noqa: E731
        return self.rows().select(c("step"), c("status"), c("reason"), c("channel"), c("variant"),
                                  exp.Count(this=exp.Star())
                                  ).group_by(c("step"), c("status"), c("reason"), c("channel"), c("variant"))

    def entered(self) -> exp.Select:
        distinct = self.rows().select(col("l", "customer_id"), col("l", "trigger_key")).distinct()
        return exp.select(exp.Count(this=exp.Star())).from_(distinct.subquery("d"))

    def group_sizes(self) -> exp.Select:
        """(level, label, grp, distinct customers) per ``levels``: step, campaign, variant, kind."""
        customers = exp.Count(this=exp.Distinct(expressions=[col("m", "customer_id")]))
        return levels("m", "msgs", [col("m", "grp"), customers], self.kinds).with_("msgs", as_=self.messages())

    def unsubscribed(self) -> exp.Select:
        """(level, label, distinct customers who unsubscribed after a sent message; attributed to the last one)
        per ``levels``."""
        m, u = "m", "u"
        rank = exp.Window(this=exp.RowNumber(), partition_by=[col(u, "customer_id"), col(u, "kind")],
                          order=exp.Order(expressions=[exp.Ordered(this=col(m, n), desc=True)
                                                       for n in ("message_at", "step", "trigger_key")]))
        hits = (
            exp.select(col(m, "step"), col(m, "variant"), col(m, "channel"), col(m, "customer_id"), exp.alias_(rank, "rn"))
            .from_(exp.to_table("msgs").as_(m))
            .join(unsubscribes_relation(u),
                  on=exp.and_(col(u, "customer_id").eq(col(m, "customer_id")),
                              instant(col(u, "created_at"), self.dialect) > col(m, "message_at")))
            .where(col(m, "grp").eq(lit("sent")))
        )
        customers = exp.Count(this=exp.Distinct(expressions=[col("h", "customer_id")]))
        return (levels("h", "hits", [customers], self.kinds, col("h", "rn").eq(1))
                .with_("msgs", as_=self.messages()).with_("hits", as_=hits))

    def events(self) -> exp.Select:
        """(step, variant, channel, type, messages with such an event, events) of the period's messages of the
        campaign: engine_events joined to the ledger rows, machine events left out unless included."""
        e = "e"
        query = (self.rows().select(col("l", "step"), col("l", "variant"), col("l", "channel"), col(e, "type"),
                                    exp.Count(this=exp.Distinct(expressions=[col(e, "message_key")])),
                                    exp.Count(this=exp.Star()))
                 .join(events_relation(e), on=col(e, "message_key").eq(col("l", "message_key")))
                 .group_by(col("l", "step"), col("l", "variant"), col("l", "channel"), col(e, "type")))
        if not self.include_machine:
            query = query.where(exp.not_(col(e, "machine")))
        return query

    def sent_per_day(self) -> exp.Select:
        day = day_text(col("m", "message_at"), self.dialect)
        return (exp.select(day, exp.Count(this=exp.Star())).from_(exp.to_table("msgs").as_("m"))
                .where(col("m", "grp").eq(lit("sent"))).group_by(day.copy()).with_("msgs", as_=self.messages()))

    def messages_by_customer(self) -> exp.Select:
        return (exp.select("*").from_(self.messages().subquery("m"))
                .order_by(exp.column("customer_id"), exp.column("message_at"), exp.column("step")))


def conversions_query(campaign: Campaign, config: ProjectConfig, messages: exp.Expression) -> exp.Query:
    """(kind 'step' | 'campaign' | 'day' | 'variant' | 'kind', label, grp, customers, orders, revenue) of the orders
    attributed to ``messages`` (a query or VALUES with the columns of ``_Queries.messages``)."""
    dialect = config.dialect
    m, o = "m", "o"
    customer = text(col(o, "customer_id"))
    rank = exp.Window(this=exp.RowNumber(), partition_by=[customer.copy(), col(o, "order_id")],
                      order=exp.Order(expressions=[exp.Ordered(this=col(m, n), desc=True)
                                                   for n in ("message_at", "step", "trigger_key")]))
    attributed = (
        exp.select(col(m, "step"), col(m, "variant"), col(m, "channel"), col(m, "grp"),
                   exp.alias_(customer, "customer_id"), col(o, "total"),
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

    kinds = {name: channel.kind for name, channel in config.channels.items()}
    variant = level("variant", variant_label("a"), variant_label("a")).where(col("a", "variant").is_(exp.null()).not_())
    kind = kind_expression(col("a", "channel"), kinds)
    body = exp.union(
        exp.union(level("step", col("a", "step"), col("a", "step")), level("campaign", lit("")), distinct=False),
        level("day", col("a", "day"), col("a", "day")), distinct=False)
    body = exp.union(exp.union(body, variant, distinct=False), level("kind", kind, kind.copy()), distinct=False)
    return (body.with_("src_orders", as_=source_select(config.sources["orders"], dialect), copy=False)
            .with_(f"msgs({', '.join(MESSAGE_COLUMNS)})", as_=messages, copy=False)
            .with_("attributed", as_=attributed, copy=False))


MESSAGE_COLUMNS = ("step", "variant", "channel", "customer_id", "trigger_key", "grp", "message_at")


def kind_expression(channel: exp.Expression, kinds: dict[str, str]) -> exp.Expression:
    """The kind of the channel a row names (engine.yaml's), the channel's own name for one since removed,
    "-" for none."""
    fallback = exp.func("COALESCE", channel, lit("-"))
    if not kinds:
        return fallback
    return exp.Case(this=channel.copy(), ifs=[exp.If(this=lit(name), true=lit(kind)) for name, kind in sorted(kinds.items())],
                    default=fallback)


def variant_label(alias: str) -> exp.Expression:
    """``step:variant`` (step ids have no colon), the label of a variant's figures."""
    return exp.DPipe(this=exp.DPipe(this=col(alias, "step"), expression=lit(":"), safe=True),
                     expression=col(alias, "variant"), safe=True)


def levels(alias: str, table: str, figures: list[exp.Expression], kinds: dict[str, str],
           condition: exp.Expression | None = None) -> exp.Query:
    """(level, label, *figures) of ``table`` grouped per step, for the whole campaign ('' label), per
    variant (``variant_label``) and per kind: one UNION ALL, each branch its own GROUP BY."""
    keys = [f for f in figures if not isinstance(f, exp.AggFunc)]

    def level(name: str, label: exp.Expression | None, extra: exp.Expression | None = None) -> exp.Select:
        conditions = [c for c in (condition, extra) if c is not None]
        query = (exp.select(lit(name), label if label is not None else lit(""), *[f.copy() for f in figures])
                 .from_(exp.to_table(table).as_(alias)))
        if conditions:
            query = query.where(*[c.copy() for c in conditions])
        group = ([label.copy()] if label is not None else []) + [k.copy() for k in keys]
        return query.group_by(*group) if group else query

    branches = [level("step", col(alias, "step")), level("campaign", None),
                level("variant", variant_label(alias), col(alias, "variant").is_(exp.null()).not_()),
                level("kind", kind_expression(col(alias, "channel"), kinds))]
    body = branches[0]
    for branch in branches[1:]:
        body = exp.union(body, branch, distinct=False)
    return body


def messages_values(rows: list, dialect: str) -> exp.Values:
    """A batch of message rows from the ledger database as VALUES for the warehouse (named by the CTE).

    Built without sqlglot's builders (which parse and copy): this runs for every message."""
    timestamp = exp.DataType.build("TIMESTAMP")
    as_text = dialect_named(dialect).instant_text_format is not None

    def instant_literal(value) -> exp.Expression:
        if as_text:
            return ts(_parse(value), dialect)
        return exp.Cast(this=exp.Literal.string(sql_timestamp_text(_parse(value))), to=timestamp.copy())

    def maybe(value) -> exp.Expression:
        return exp.null() if value is None else lit(str(value))

    return exp.Values(expressions=[
        exp.Tuple(expressions=[lit(str(r.step)), maybe(r.variant), maybe(r.channel), lit(str(r.customer_id)),
                               lit(str(r.trigger_key)), lit(str(r.grp)), instant_literal(r.message_at)]) for r in rows])


def _parse(value) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _money(value) -> float:
    return float(value) if value is not None else 0.0


def _variant_order(campaign: Campaign):
    """Variants in the campaign's order (step, then variant as written); ones since removed last, by name."""
    position = {f"{s.id}:{v.id}": (i, j) for i, s in enumerate(campaign.steps) for j, v in enumerate(s.variants)}
    return lambda label: (position.get(label, (len(position), 0)), label)


def ab_tests(campaign: Campaign, variants: dict[str, VariantStats]) -> list[ABTest]:
    """Each A/B variant (one with a ``percent`` share) of a step against the step's first one, by conversion
    rate and by click rate, for steps with at least two A/B variants."""
    tests = []
    for step in campaign.steps:
        split = [v.id for v in step.variants if v.percent is not None]
        if len(split) < 2:
            continue
        control = variants.get(f"{step.id}:{split[0]}", VariantStats(step.id, split[0]))
        for variant_id in split[1:]:
            other = variants.get(f"{step.id}:{variant_id}", VariantStats(step.id, variant_id))
            tests.append(ABTest(step.id, control.variant, variant_id,
                                compare(other.reached.converted, other.reached.customers,
                                        control.reached.converted, control.reached.customers),
                                compare(other.engagement.clicked, other.sent,
                                        control.engagement.clicked, control.sent)))
    return tests


class StatsReader:
    """Binds a project's campaigns to its warehouse database and its ledger's reader."""

    def __init__(self, config: ProjectConfig, warehouse: Database, ledger: LedgerReader, batch_size: int = BATCH_SIZE,
                 include_machine: bool = False):
        if "orders" not in config.sources:
            raise ConfigError("engine stats needs the orders entity to count conversions; map sources.orders in engine.yaml")
        self.config = config
        self.warehouse = warehouse
        self.ledger = ledger
        # a read-only command on a ledger not created yet reads an empty one in memory: not the warehouse's
        self.shared = config.ledger_shares_warehouse and ledger.in_database(warehouse)
        self.batch_size = batch_size
        #: machine opens and link-scanner clicks count as engagement (default: recorded, not counted)
        self.include_machine = include_machine

    def campaign(self, campaign: Campaign, since: datetime | None = None, until: datetime | None = None) -> CampaignStats:
        ledger_dialect = self.config.dialect if self.shared else self.ledger.dialect
        kinds_of = {name: channel.kind for name, channel in self.config.channels.items()}
        queries = _Queries(campaign, ledger_dialect, since, until, kinds_of, self.include_machine)
        run = lambda q: self.ledger.select(q, ledger_dialect)  # noqa: E731
        steps = {s.id: StepStats(s.id) for s in campaign.steps}
        total = StepStats(None)
        variants: dict[str, VariantStats] = {}
        kinds: dict[str, KindStats] = {}

        def step(name: str) -> StepStats:  # a step since removed from the campaign still counts
            return steps.setdefault(name, StepStats(name))

        def variant(step_id: str, variant_id: str) -> VariantStats:
            return variants.setdefault(f"{step_id}:{variant_id}", VariantStats(step_id, variant_id))

        def kind_of(channel: str | None) -> str:
            return kinds_of.get(channel or "", channel or "-")  # a channel since removed: its name

        def at(level: str, label: str):
            """The figures a (level, label) row of a query adds to."""
            if level == "step":
                return step(label)
            if level == "variant":
                step_id, _, variant_id = str(label).partition(":")
                return variant(step_id, variant_id)
            if level == "kind":
                return kinds.setdefault(label, KindStats(label))
            return total

        for name, status, reason, channel, variant_id, n in run(queries.outcomes()):
            target = step(name)
            kind = kind_of(channel)
            for figures in (target, total, kinds.setdefault(kind, KindStats(kind))):
                if status == "skipped":
                    figures.skipped[reason or "-"] += n
                elif status in ("sent", "failed", "unknown"):
                    setattr(figures, status, getattr(figures, status) + n)
                elif status == "claimed":
                    figures.in_flight += n
            if status == "sent" and variant_id is not None:
                variant(name, variant_id).sent += n
            target.entered += n
        total.entered = run(queries.entered())[0][0]
        for level, label, group, n in run(queries.group_sizes()):
            if group == "sent" or level in ("step", "campaign"):
                figures = at(level, label)
                (figures.reached if group == "sent" else figures.holdout).customers = n
        for level, label, n in run(queries.unsubscribed()):
            at(level, label).unsubscribed = n
        for name, variant_id, channel, event_type, messages, events in run(queries.events()):
            targets = [step(name), total, kinds.setdefault(kind_of(channel), KindStats(kind_of(channel)))]
            if variant_id is not None:
                targets.append(variant(name, variant_id))
            for figures in targets:
                figures.engagement.add(event_type, messages, events)
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
            if kind in ("variant", "kind") and group != "sent":
                continue  # a holdout is the campaign's and its steps': its customers got no variant or kind
            figures = at(kind, label)
            target_group = figures.reached if group == "sent" else figures.holdout
            target_group.converted += customers
            target_group.orders += orders
            target_group.revenue += _money(revenue)
        for figures in (*steps.values(), total):  # cents, the same however the sums were split
            figures.reached.revenue = round(figures.reached.revenue, 2)
            figures.holdout.revenue = round(figures.holdout.revenue, 2)
        for figures in (*variants.values(), *kinds.values()):
            figures.reached.revenue = round(figures.reached.revenue, 2)
        for figures_day in daily.values():
            figures_day.revenue = round(figures_day.revenue, 2)
        ordered_variants = [variants[k] for k in sorted(variants, key=_variant_order(campaign))]
        return CampaignStats(campaign.name, campaign.conversion_window, campaign.holdout, total,
                             list(steps.values()), daily, [kinds[k] for k in sorted(kinds)], ordered_variants,
                             ab_tests(campaign, variants), self.include_machine)

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
