"""Trigger ``order_date``: a date on the order (the planned delivery); steps before or after it.

Instances are orders placed by now that have the date (key: the order id, instant: the
date), so a step may come before it (a negative delay). Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, text
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind


@dataclass(frozen=True)
class OrderDate(Trigger):
    """A date on the order (planned delivery): steps before (negative delay) or after it."""

    column: str = "delivery_date"
    kind: str = "order_date"


class OrderDateKind(TriggerKind):
    name = "order_date"
    model = OrderDate
    entities = ("orders",)
    template_record = TemplateRecord("orders", "order_items", "order_id")
    dated = True

    def parse(self, settings: dict, file: CampaignFile) -> OrderDate:
        return OrderDate(column=settings.get("column", "delivery_date"))

    def check(self, trigger: OrderDate, config: ProjectConfig, file: CampaignFile) -> None:
        file.needs(("trigger", self.name), f"trigger {self.name}", "orders", trigger.column)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        column = campaign.trigger.column
        orders = builder.source("orders")
        return (
            exp.select(col("o", "customer_id"), exp.alias_(text(col("o", "order_id")), "trigger_key"),
                       exp.alias_(col("o", column), "trigger_at"))
            .from_(exp.to_table(orders).as_("o"))
            .where(col("o", column).is_(exp.null()).not_(), col("o", "created_at") <= builder.ts(builder.now))
        )


KIND = OrderDateKind()
