"""Trigger ``order_placed``: the customer's k-th order, or every order.

Instances are orders (key: the order id, instant: its creation); with ``statuses`` only
orders of those statuses count, also for ``nth``. Orders are ranked by (created_at,
order_id), so two orders at the same instant (shops that store a date only) are two
orders: "ordered again" (the stop condition, ``ordered_since_trigger``) is any order -
of any status - ranked after the trigger's order, compared by identity, not by time.

In a pass (shared facts), every order campaign whose steps all have a time window reads its
instances from the pass's shared order rows (``compile.SHARED_ROWS["order_rows"]``,
``shared_rows_select``): the orders of the union of those campaigns' windows, read in one scan,
each with its rank (``nth``, and per status set of a campaign) and the time of the customer's
next order, from one sort. A rank counts the orders before the window from the per-customer facts
(order_count, and the count per status set: ``compile.counted_column``), so no campaign scans
the history before its window, nor sorts the window again. Elsewhere (``engine explain``, a
campaign without a window, a dialect without temporary tables) each query computes the same
columns itself (``orders_followed``, ``orders_before_window``). Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, counted_column, earliest_start, lit, numbered_comparisons, text
from engine.sql.instants import derive
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind


@dataclass(frozen=True)
class OrderPlaced(Trigger):
    """The customer's k-th order (or every order when ``nth`` is None)."""

    nth: int | None = None
    statuses: tuple[str, ...] = ()
    kind: str = "order_placed"


class OrderPlacedKind(TriggerKind):
    name = "order_placed"
    model = OrderPlaced
    entities = ("orders",)
    template_record = TemplateRecord("orders", "order_items", "order_id")
    shared_rows = "order_rows"

    def several_at_once(self, trigger: OrderPlaced) -> bool:
        return trigger.nth is None  # every order; the k-th is one

    def parse(self, settings: dict, file: CampaignFile) -> OrderPlaced:
        return OrderPlaced(nth=settings.get("nth"), statuses=tuple(settings.get("statuses", ())))

    def check(self, trigger: OrderPlaced, config: ProjectConfig, file: CampaignFile) -> None:
        if trigger.statuses:
            file.needs(("trigger", self.name, "statuses"), "order statuses", "orders", "status")

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        """With ``nth``: the rank of each order among the customer's (counted) orders. ``earliest``
        lets the rank read only the orders from then on plus a count of each customer's earlier
        orders - a GROUP BY instead of a window sorted over every order."""
        shared = builder.shared_rows(self.shared_rows) if earliest is not None else None
        if shared is not None:
            return _shared_instances(builder, campaign, shared, earliest)
        trigger = campaign.trigger
        now = builder.ts(builder.now)
        orders = builder.source("orders")
        projections = [
            col("o", "customer_id"),
            exp.alias_(text(col("o", "order_id")), "trigger_key"),
            exp.alias_(col("o", "created_at"), "trigger_at"),
        ]
        conditions = [col("o", "created_at") <= now]
        if trigger.statuses:
            conditions.append(col("o", "status").isin(*[lit(s) for s in trigger.statuses]))
        ranked = orders
        if _asks_for_later_orders(campaign):
            ranked = _followed_orders(builder, orders, earliest)
            projections.append(col("o", "next_order_at"))
            builder.later_order = exp.paren(col("t", "next_order_at").is_(exp.null()).not_())
        query = exp.select(*projections).from_(exp.to_table(ranked).as_("o"))
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

    def conditions(self, trigger: OrderPlaced) -> list[exp.Expression]:
        return [col("t", "nth").eq(trigger.nth)] if trigger.nth is not None else []

    def instant_drift(self, trigger: OrderPlaced) -> timedelta:
        """An instance is an order, timed at its placement (``created_at``), which does not change."""
        return timedelta(0)

    def reads_shared_rows(self, campaign: Campaign) -> bool:
        """Every step has a time window (``due_query``'s ``earliest``): without one, the instances reach
        back to the first order, and the shared rows would be every order, sorted, at every pass."""
        return all(step.freshness is not None for step in campaign.steps)

    def counted_statuses(self, campaign: Campaign) -> tuple[str, ...] | None:
        trigger = campaign.trigger
        if trigger.nth is None or not trigger.statuses or not self.reads_shared_rows(campaign):
            return None
        return tuple(sorted(set(trigger.statuses)))

    def shared_rows_select(self, builder: QueryBuilder, campaigns: list[Campaign]) -> exp.Query | None:
        """The orders by ``now`` from the earliest window start of ``campaigns`` on (one scan), with
        ``next_order_at`` (any status), ``nth`` (the rank among all the customer's orders) and per status
        set of a campaign with ``nth`` its rank among the orders of those statuses (``ranked_column``),
        all over one ordering by (created_at, order_id). A rank is the number of the customer's orders
        (of the set) by ``now`` - from the per-customer facts, which the rows join - minus those of the
        window ranked after it: the history before the window is never read again."""
        if not campaigns:
            return None
        horizon = builder.config.stale_horizon
        steps = [step for campaign in campaigns for step in campaign.steps]
        start = derive(builder.now, lambda now: earliest_start(steps, now, horizon))
        statuses = sorted({s for s in (self.counted_statuses(c) for c in campaigns) if s is not None})
        partition = [col("n", "customer_id")]
        scan = builder.scanned("orders", "n")
        # where Dialect.instant_number_sql the window and the ordering read each order's instant as its number,
        # and only the window's orders have it formatted (the numbers order as the texts do, ties included)
        now = builder.ts(builder.now)  # one placeholder of a compiled query (``numbered_comparisons`` copies it)
        instant, as_text, _ = builder.instant_numbers("orders", now)
        created = col("n", instant("created_at"))

        def order() -> exp.Order:
            return exp.Order(expressions=[exp.Ordered(this=created.copy()), exp.Ordered(this=col("n", "order_id"))])

        def after(counted: exp.Expression, current: exp.Expression) -> exp.Expression:
            """``counted`` orders of the customer's window ranked after this one: those from this one on
            minus this one's ``current``. A frame over the ordering the next order's time is read in: one
            sort of the window (a total over the partition beside a running count took a second pass,
            +35 % of this statement on DuckDB at 1M orders)."""
            onward = exp.Window(this=counted, partition_by=[p.copy() for p in partition], order=order(),
                                spec=exp.WindowSpec(kind="ROWS", start="CURRENT ROW", end="UNBOUNDED",
                                                    end_side="FOLLOWING"))
            return exp.paren(exp.Sub(this=onward, expression=current))

        one = exp.Literal.number(1)
        projections = [
            col("n", "customer_id"), col("n", "order_id"),
            col("n", "created_at") if created.name == "created_at"
            else exp.alias_(as_text(created.copy()), "created_at"),
            col("n", "status"),
            exp.alias_(as_text(exp.Window(this=exp.Lead(this=created.copy()),
                                          partition_by=[p.copy() for p in partition], order=order())), "next_order_at"),
            exp.alias_(exp.Sub(this=col("f", "order_count"),
                               expression=after(exp.Count(this=exp.Star()), exp.Literal.number(1))), "nth"),
        ]
        for counted in statuses:
            matches = exp.Case(ifs=[exp.If(this=col("n", "status").isin(*[lit(s) for s in counted]), true=one.copy())],
                               default=exp.Literal.number(0))
            projections.append(exp.alias_(exp.Sub(this=col("f", counted_column(counted)),
                                                  expression=after(exp.Sum(this=matches), matches.copy())),
                                          ranked_column(counted)))
        facts = builder.customer_facts()
        window = [col("n", "created_at") <= now, col("n", "created_at") >= builder.ts(start)]
        if created.name != "created_at":
            window = numbered_comparisons(window, col("n", "created_at"), created, builder.dialect) or window
        return (
            exp.select(*projections)
            .from_(scan)
            .join(exp.to_table(facts).as_("f"), on=col("f", "customer_id").eq(col("n", "customer_id")))
            .where(*window)
        )


def ranked_column(statuses: tuple[str, ...]) -> str:
    """The shared order rows' column with an order's rank among the customer's orders of ``statuses``
    (all orders: ``nth``)."""
    return "nth" if not statuses else "nth_" + counted_column(statuses).removeprefix("placed_")


def _shared_instances(builder: QueryBuilder, campaign: Campaign, rows: str, earliest: datetime) -> exp.Query:
    """The instances read from the pass's shared order rows (``shared_rows_select``), from ``earliest`` on."""
    trigger = campaign.trigger
    projections = [
        col("o", "customer_id"),
        exp.alias_(text(col("o", "order_id")), "trigger_key"),
        exp.alias_(col("o", "created_at"), "trigger_at"),
    ]
    conditions = [col("o", "created_at") <= builder.ts(builder.now), col("o", "created_at") >= builder.ts(earliest)]
    if trigger.statuses:
        conditions.append(col("o", "status").isin(*[lit(s) for s in trigger.statuses]))
    if _asks_for_later_orders(campaign):
        projections.append(col("o", "next_order_at"))
        builder.later_order = exp.paren(col("t", "next_order_at").is_(exp.null()).not_())
    if trigger.nth is not None:
        statuses = tuple(sorted(set(trigger.statuses)))
        projections.append(exp.alias_(col("o", ranked_column(statuses)), "nth"))
    return exp.select(*projections).from_(exp.to_table(rows).as_("o")).where(*conditions)


def _asks_for_later_orders(campaign: Campaign) -> bool:
    """Whether the campaign's stop conditions or filters ask whether the customer ordered again."""
    texts = [campaign.audience or ""] + [s.audience or "" for s in campaign.steps]
    texts += [v.audience or "" for s in campaign.steps for v in s.variants]
    return "ordered_again" in campaign.stop or any("ordered_since_trigger" in t for t in texts)


def _followed_orders(builder: QueryBuilder, orders: str, earliest: datetime | None) -> str:
    """A CTE of the orders by ``now`` (from ``earliest`` on) with ``next_order_at``: the time of the
    customer's next order of any status in the ranking by (created_at, order_id), NULL for the last.

    A window over the same partition and order as the rank (one sort), rather than a
    comparison of times, which cannot see a second order at the same instant."""
    conditions = [col("n", "created_at") <= builder.ts(builder.now)]
    if earliest is not None:  # a later order of an instance from ``earliest`` on is from then on too
        conditions.append(col("n", "created_at") >= builder.ts(earliest))
    following = exp.Window(
        this=exp.Lead(this=col("n", "created_at")),
        partition_by=[col("n", "customer_id")],
        order=exp.Order(expressions=[exp.Ordered(this=col("n", "created_at")), exp.Ordered(this=col("n", "order_id"))]),
    )
    builder.ctes["orders_followed"] = (
        exp.select(exp.Column(this=exp.Star(), table=exp.to_identifier("n")), exp.alias_(following, "next_order_at"))
        .from_(exp.to_table(orders).as_("n")).where(*conditions)
    )
    return "orders_followed"


KIND = OrderPlacedKind()
