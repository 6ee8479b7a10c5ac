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

from engine.clock import Duration, format_duration, format_instant, parse_stored_timestamp
from engine.model import Campaign, Trigger
from engine.sql.compile import (
    LAST_ORDER_ID, QueryBuilder, col, is_customer, new_segment_entries, segment_instances, text,
)
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind
from engine.state.tables import ENTRIES_TABLE


@dataclass(frozen=True)
class AtRisk(Trigger):
    """Segment entry: among customers who ordered within ``window``, the
    ``percent`` % whose last order is the oldest."""

    window: Duration = timedelta(days=180)  # or calendar months (``6mo``)
    percent: int = 60
    kind: str = "at_risk"


class AtRiskKind(TriggerKind):
    name = "at_risk"
    model = AtRisk
    entities = ("orders",)
    template_record = TemplateRecord("orders", "order_items", "order_id")
    records_entries = True
    last_order_id = True

    def parse(self, settings: dict, file: CampaignFile) -> AtRisk:
        window = file.duration(("trigger", self.name, "window"), settings.get("window", "26w"))
        return AtRisk(window=window, percent=settings.get("percent", 60))

    def instant_drift(self, trigger: AtRisk) -> timedelta:
        """An instance is a recorded entry, timed at ``entered_at``, which the entry keeps (an entry is
        recorded once per key, ``compile.entry_exists``); an entry happening now is timed at the pass's
        instant, which its entry row then records (``compile.segment_instances``)."""
        return timedelta(0)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        _members(builder, campaign.trigger)
        return segment_instances(builder, campaign, "at_risk_members")

    def entries_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query:
        _members(builder, campaign.trigger)
        return new_segment_entries(builder, campaign, "at_risk_members")

    def entries_insert(self, builder: QueryBuilder, campaign: Campaign) -> exp.Insert:
        return exp.insert(self.entries_select(builder, campaign), ENTRIES_TABLE,
                          columns=["campaign", "customer_id", "trigger_key", "entered_at"])

    def standing_query(self, builder: QueryBuilder, campaign: Campaign, customer_id: str) -> exp.Query:
        """population, members (the at-risk share), cut_at (the last member's last order), and the
        customer's position and last order in the population, plus their last order at all."""
        trigger = campaign.trigger
        _members(builder, trigger)
        member = exp.Mul(this=col("r", "position"), expression=exp.Literal.number(100)) \
            <= exp.Mul(this=col("r", "population"), expression=exp.Literal.number(trigger.percent))
        me = is_customer(col("r", "customer_id"), customer_id)

        def when(condition: exp.Expression, value: exp.Expression) -> exp.Expression:
            return exp.Max(this=exp.Case(ifs=[exp.If(this=condition, true=value)]))

        facts = builder.customer_facts()
        last_order = (exp.select(exp.Max(this=col("f", "last_order_at"))).from_(exp.to_table(facts).as_("f"))
                      .where(is_customer(col("f", "customer_id"), customer_id)))
        query = exp.select(
            exp.alias_(exp.Count(this=exp.Star()), "population"),
            exp.alias_(when(member, col("r", "position")), "members"),
            exp.alias_(when(member.copy(), col("r", "last_order_at")), "cut_at"),
            exp.alias_(when(me, col("r", "position")), "position"),
            exp.alias_(last_order.subquery(), "last_order_at"),
        ).from_(exp.to_table("active_ranked").as_("r"))
        return builder.with_ctes(query)

    def standing(self, trigger: AtRisk, row: dict, now: datetime) -> tuple[dict, str]:
        def instant(value):
            return None if value is None else parse_stored_timestamp(value)

        population, members, position = row["population"] or 0, row["members"] or 0, row["position"]
        cut_at, last_order_at = instant(row["cut_at"]), instant(row["last_order_at"])
        since = now - trigger.window
        facts = {"population": population, "members": members, "percent": trigger.percent,
                 "window_start": format_instant(since), "cut_at": cut_at and format_instant(cut_at),
                 "position": position, "last_order_at": last_order_at and format_instant(last_order_at),
                 "behind_cut": None}
        text_ = (f"at_risk segment: {population} customers ordered since {format_instant(since)} (window "
                 f"{format_duration(trigger.window)}); the {trigger.percent} % whose last order is oldest are "
                 f"{members} (positions 1-{members}" + (f", last orders up to {format_instant(cut_at)})" if cut_at else ")"))
        if position is None:
            reason = ("no order by now" if last_order_at is None
                      else f"last order {format_instant(last_order_at)} is before the window")
            return facts, text_ + f"; this customer is not in the population ({reason})"
        text_ += f"; this customer is at position {position} of {population}"
        if position <= members:
            return facts, text_ + ", inside the share"
        if cut_at is not None and last_order_at is not None:
            facts["behind_cut"] = format_duration(last_order_at - cut_at)
            return facts, text_ + (f", {position - members} places and {format_duration(last_order_at - cut_at)} "
                                   f"after the cut: their last order {format_instant(last_order_at)} is newer than "
                                   f"the share's newest {format_instant(cut_at)}")
        return facts, text_ + f", {position - members} places after the share"


def _members(builder: QueryBuilder, trigger: AtRisk) -> None:
    """CTEs ending in ``at_risk_members(customer_id, trigger_key)``; the key is the last order.

    Ranks the customers' last orders from the per-customer facts (no window over
    all orders); the members' last order ids are the facts' own where the dialect's one scan of the
    orders finds them (``QueryBuilder.last_order_facts``), else looked up in the orders.
    """
    now = builder.now
    with_last = builder.last_order_facts()
    facts = builder.customer_facts() if with_last is None else with_last
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
    member = (exp.Mul(this=col("r", "position"), expression=exp.Literal.number(100))
              <= exp.Mul(this=col("r", "population"), expression=exp.Literal.number(trigger.percent)))
    if with_last is not None:  # the facts' scan of the orders found it, with the same tie-break
        builder.ctes["active_ranked"] = builder.ctes["active_ranked"].select(col("l", LAST_ORDER_ID), copy=False)
        builder.ctes["at_risk_members"] = (
            exp.select(col("r", "customer_id"), exp.alias_(text(col("r", LAST_ORDER_ID)), "trigger_key"))
            .from_(exp.to_table("active_ranked").as_("r")).where(member))
        return
    orders = builder.source("orders")
    # ties on the last order's time: the highest order id, as ORDER BY created_at DESC, order_id DESC would pick
    builder.ctes["at_risk_members"] = (
        exp.select(col("r", "customer_id"), exp.alias_(text(exp.Max(this=col("o", "order_id"))), "trigger_key"))
        .from_(exp.to_table("active_ranked").as_("r"))
        .join(exp.to_table(orders).as_("o"), on=exp.and_(col("o", "customer_id").eq(col("r", "customer_id")),
                                                         col("o", "created_at").eq(col("r", "last_order_at"))))
        .where(member)
        .group_by(col("r", "customer_id"))
    )


KIND = AtRiskKind()
