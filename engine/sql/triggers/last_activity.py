"""Trigger ``last_activity``: the customer's most recent activity (an order and/or a login).

Steps are timed from it ("60 days inactive"); a newer activity is a new instance (key
'order:12' or 'login:98'), which ends the old series. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, lit, text
from engine.sql.triggers.base import CampaignFile, TriggerKind


@dataclass(frozen=True)
class LastActivity(Trigger):
    """The customer's most recent activity (an order and/or a login event).

    Steps are timed from it ("60 days after the last activity"); any newer
    activity replaces the instance, which ends the old series.
    """

    activities: tuple[str, ...] = ("order",)
    kind: str = "last_activity"


class LastActivityKind(TriggerKind):
    name = "last_activity"
    model = LastActivity
    entities = ()  # those of its activities (check)
    ends_by_itself = True

    def several_at_once(self, trigger: LastActivity) -> bool:
        return False  # the newest activity only: a newer one replaces the instance

    def parse(self, settings: dict, file: CampaignFile) -> LastActivity:
        return LastActivity(activities=tuple(settings.get("activity", ["order"])))

    def check(self, trigger: LastActivity, config: ProjectConfig, file: CampaignFile) -> None:
        where = ("trigger", self.name, "activity")
        if "order" in trigger.activities:
            file.needs(where, "order activity", "orders")
        if "login" in trigger.activities:
            file.needs(where, "login activity", "events", "event_id")

    def instant_drift(self, trigger: LastActivity) -> timedelta:
        """An instance's key names its activity ('order:12', 'login:98'), timed when that happened: a newer
        activity is another instance, the instant of a key does not change."""
        return timedelta(0)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        """The newest activity per customer; its key ('order:12', 'login:98') names the instance.

        When that was comes from the per-customer facts (newest order, newest
        login); only those customers' activities at that very instant are read
        back for the key. Ties take the greatest key, as ORDER BY key DESC would.
        In a due query, only the customers whose last activity lies in a step's
        window (``within_windows``), and only the activities in one: the key is
        looked up for the few customers a step can be due for, not joined (and
        sorted, on PostgreSQL) for every customer's whole history at every pass.
        Each source's activities are joined with those customers inside their own
        part (``activities``: one row per activity that is a customer's newest), so
        a database that cannot join into a UNION ALL can still drive the lookup
        from those few customers through the source's customer index: SQLite
        scanned all orders and events into a materialised UNION at every pass
        (10 s of a 38 s minute-later plan at 1M orders, benchmarks/README.md).
        """
        trigger = campaign.trigger
        now = builder.ts(builder.now)
        parts, newest = [], []

        def newest_of(row: str, source: str, key: str, prefix: str, at: str, *conditions) -> exp.Select:
            """The rows of ``source`` that are a customer's newest activity (``last_activity``), keyed."""
            on = exp.and_(col(row, "customer_id").eq(col("l", "customer_id")), col(row, at).eq(col("l", "activity_at")))
            return (exp.select(col("l", "customer_id"),
                               exp.alias_(exp.DPipe(this=lit(prefix), expression=text(col(row, key)), safe=True), "activity_key"),
                               col("l", "activity_at"))
                    .from_(exp.to_table("last_activity").as_("l"))
                    .join(exp.to_table(builder.source(source)).as_(row), on=on)
                    .where(*conditions, col(row, at) <= now.copy(), *self.within_windows(builder, col(row, at))))

        if "order" in trigger.activities:
            newest.append(col("f", "last_order_at"))
        if "login" in trigger.activities:
            newest.append(col("fe", "last_login_at"))
        if len(newest) == 1:
            activity_at = newest[0]
        else:  # the later of the two; either may be NULL
            order_at, login_at = newest
            activity_at = exp.Case(ifs=[exp.If(this=exp.or_(login_at.is_(exp.null()), order_at >= login_at.copy()), true=order_at.copy())],
                                   default=login_at.copy())
        customers = builder.source("customers")
        base = exp.select(col("c", "customer_id"), exp.alias_(activity_at, "activity_at")).from_(exp.to_table(customers).as_("c"))
        base = builder.join_facts(base, col("c", "customer_id"), orders="order" in trigger.activities,
                                  events="login" in trigger.activities)
        builder.ctes["last_activity"] = base.where(activity_at.copy().is_(exp.null()).not_(),
                                                   *self.within_windows(builder, activity_at))
        if "order" in trigger.activities:
            parts.append(newest_of("o", "orders", "order_id", "order:", "created_at"))
        if "login" in trigger.activities:
            parts.append(newest_of("e", "events", "event_id", "login:", "occurred_at", col("e", "type").eq(lit("login"))))
        activities = parts[0]
        for part in parts[1:]:
            activities = exp.union(activities, part, distinct=False)
        builder.ctes["activities"] = activities
        return (
            exp.select(col("a", "customer_id"), exp.alias_(exp.Max(this=col("a", "activity_key")), "trigger_key"),
                       exp.alias_(col("a", "activity_at"), "trigger_at"))
            .from_(exp.to_table("activities").as_("a"))
            .group_by(col("a", "customer_id"), col("a", "activity_at"))
        )


KIND = LastActivityKind()
