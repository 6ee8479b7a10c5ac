"""Trigger ``at_risk``: segment entry. Among customers who ordered within ``window``, the
``percent`` % whose last order is the oldest; a customer enters when a pass first sees them.

Entries are recorded per pass (``entries_insert``, table ``engine_entries``): an instance is
a recorded entry, or an entry happening now. The key is the customer's last order. Entries
live next to the warehouse, so a backtest (which never writes there) cannot replay it. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, Trigger
from engine.sql.compile import QueryBuilder, col, entry_exists, exists, lit, text
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind
from engine.state.tables import ENTRIES_TABLE


@dataclass(frozen=True)
class AtRisk(Trigger):
    """Segment entry: among customers who ordered within ``window``, the
    ``percent`` % whose last order is the oldest."""

    window: timedelta = timedelta(days=180)
    percent: int = 60
    kind: str = "at_risk"


class AtRiskKind(TriggerKind):
    name = "at_risk"
    model = AtRisk
    entities = ("orders",)
    template_record = TemplateRecord("orders", "order_items", "order_id")
    records_entries = True

    def parse(self, settings: dict, file: CampaignFile) -> AtRisk:
        window = file.duration(("trigger", self.name, "window"), settings.get("window", "26w"))
        return AtRisk(window=window, percent=settings.get("percent", 60))

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        now = builder.ts(builder.now)
        _members(builder, campaign.trigger)
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
            .where(exists(entry_exists(builder, campaign)).not_())
        )
        return exp.union(entered, entering, distinct=False)

    def entries_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query:
        _members(builder, campaign.trigger)
        select = (
            exp.select(lit(campaign.name), text(col("m", "customer_id")), col("m", "trigger_key"), builder.ts(builder.now))
            .from_(exp.to_table("at_risk_members").as_("m"))
            .where(exists(entry_exists(builder, campaign)).not_())
        )
        return builder.with_ctes(select)

    def entries_insert(self, builder: QueryBuilder, campaign: Campaign) -> exp.Insert:
        return exp.insert(self.entries_select(builder, campaign), ENTRIES_TABLE,
                          columns=["campaign", "customer_id", "trigger_key", "entered_at"])

    def backtest_refusal(self, campaign: Campaign) -> str:
        return (f"campaign '{campaign.name}' has a segment trigger (at_risk), which records segment entries "
                "in the warehouse; a backtest never writes there. Backtest campaigns with other triggers")


def _members(builder: QueryBuilder, trigger: AtRisk) -> None:
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


KIND = AtRiskKind()
