"""Trigger ``order_placed``: the customer's k-th order, or every order.

Instances are orders (key: the order id, instant: its creation); with ``statuses`` only
orders of those statuses count, also for ``nth``. Pure.
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

    def conditions(self, trigger: OrderPlaced) -> list[exp.Expression]:
        return [col("t", "nth").eq(trigger.nth)] if trigger.nth is not None else []


KIND = OrderPlacedKind()
