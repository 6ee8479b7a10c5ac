"""Trigger ``order_placed``: the customer's k-th order, or every order.

Instances are orders (key: the order id, instant: its creation); with ``statuses`` only
orders of those statuses count, also for ``nth``. Orders are ranked by (created_at,
order_id), so two orders at the same instant (shops that store a date only) are two
orders: "ordered again" (the stop condition, ``ordered_since_trigger``) is any order -
of any status - ranked after the trigger's order, compared by identity, not by time. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, lit, text
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

    def parse(self, settings: dict, file: CampaignFile) -> OrderPlaced:
        return OrderPlaced(nth=settings.get("nth"), statuses=tuple(settings.get("statuses", ())))

    def check(self, trigger: OrderPlaced, config: ProjectConfig, file: CampaignFile) -> None:
        if trigger.statuses:
            file.needs(("trigger", self.name, "statuses"), "order statuses", "orders", "status")

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        """With ``nth``: the rank of each order among the customer's (counted) orders. ``earliest``
        lets the rank read only the orders from then on plus a count of each customer's earlier
        orders - a GROUP BY instead of a window sorted over every order."""
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
