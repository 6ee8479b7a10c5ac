"""Trigger ``event``: an event of a type (newsletter_signup, product_viewed, search, login, ...).

``per: event``: every event is an instance (key: the event id, needs events.event_id);
``per: day`` (default): one instance per customer and UTC day (key 'YYYY-MM-DD'), timed at
that day's last such event, so a series restarts when the customer comes back. Templates
get the instance's events as ``items``.

In a pass (shared facts), the ``per: day`` campaigns whose steps all have a time window read their
instances from the pass's shared event days (``compile.SHARED_ROWS["event_days"]``,
``shared_rows_select``): one scan of the events for all their types, from the UTC day of the
earliest window start on (an instance timed before that day is before every window), grouped by
customer, type and day. Elsewhere each query groups the events of its type itself. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, day_text, earliest_start, lit, text
from engine.sql.instants import derive
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind, mapped_properties


@dataclass(frozen=True)
class Event(Trigger):
    """An event of ``type`` (newsletter_signup, product_viewed, search, login, ...).

    ``per`` = "event": every event is an instance (needs events.event_id);
    ``per`` = "day": one instance per customer and UTC day, timed at that day's
    last such event, so a series restarts when the customer comes back.
    """

    type: str
    per: str = "day"
    kind: str = "event"


class EventKind(TriggerKind):
    name = "event"
    model = Event
    entities = ("events",)
    template_record = TemplateRecord("events", "events", None)
    shared_rows = "event_days"

    def parse(self, settings: dict, file: CampaignFile) -> Event:
        return Event(type=settings["type"], per=settings.get("per", "day"))

    def check(self, trigger: Event, config: ProjectConfig, file: CampaignFile) -> None:
        if trigger.per == "event":
            file.needs(("trigger", self.name, "per"), "one instance per event", "events", "event_id")

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        trigger = campaign.trigger
        shared = builder.shared_rows(self.shared_rows) if earliest is not None and trigger.per == "day" else None
        if shared is not None:
            return (exp.select(col("d", "customer_id"), col("d", "trigger_key"), col("d", "trigger_at"))
                    .from_(exp.to_table(shared).as_("d")).where(col("d", "type").eq(lit(trigger.type))))
        events = builder.source("events")
        conditions = [col("e", "type").eq(lit(trigger.type)), col("e", "occurred_at") <= builder.ts(builder.now)]
        if trigger.per == "event":
            return (
                exp.select(col("e", "customer_id"), exp.alias_(text(col("e", "event_id")), "trigger_key"),
                           exp.alias_(col("e", "occurred_at"), "trigger_at"))
                .from_(exp.to_table(events).as_("e")).where(*conditions)
            )
        day = day_text(col("e", "occurred_at"), builder.dialect)
        return (
            exp.select(col("e", "customer_id"), exp.alias_(day, "trigger_key"),
                       exp.alias_(exp.Max(this=col("e", "occurred_at")), "trigger_at"))
            .from_(exp.to_table(events).as_("e")).where(*conditions)
            .group_by(col("e", "customer_id"), day.copy())
        )

    def instant_drift(self, trigger: Event) -> timedelta:
        """``per: event``: an event, timed when it occurred, which does not change. ``per: day``: timed at the
        day's last event of the type so far, which a later event that day moves, but within the UTC day its
        key names: an earlier record of it holds an instant of that day, under a day before the present one."""
        return timedelta(0) if trigger.per == "event" else timedelta(days=1)

    def reads_shared_rows(self, campaign: Campaign) -> bool:
        """A ``per: day`` trigger whose steps all have a time window (``due_query``'s ``earliest``)."""
        return campaign.trigger.per == "day" and all(step.freshness is not None for step in campaign.steps)

    def shared_rows_select(self, builder: QueryBuilder, campaigns: list[Campaign]) -> exp.Query | None:
        """(customer_id, type, trigger_key, trigger_at) of each customer's days with events of the
        ``campaigns``' types by ``now``, from the UTC day of their earliest window start on: the
        instances of every one of them, from one scan."""
        if not campaigns:
            return None
        horizon = builder.config.stale_horizon
        steps = [step for campaign in campaigns for step in campaign.steps]
        start = derive(builder.now, lambda now: _day_start(earliest_start(steps, now, horizon)))
        types = sorted({campaign.trigger.type for campaign in campaigns})
        day = day_text(col("e", "occurred_at"), builder.dialect)
        return (
            exp.select(col("e", "customer_id"), col("e", "type"), exp.alias_(day, "trigger_key"),
                       exp.alias_(exp.Max(this=col("e", "occurred_at")), "trigger_at"))
            .from_(builder.scanned("events", "e"))
            .where(col("e", "type").isin(*[lit(t) for t in types]), col("e", "occurred_at") <= builder.ts(builder.now),
                   col("e", "occurred_at") >= builder.ts(start))
            .group_by(col("e", "customer_id"), col("e", "type"), day.copy())
        )

    def properties_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query:
        """The instance's event: for ``per: day`` the day's last one of the type (the one that times the
        instance; of several at that instant, the highest event id where mapped)."""
        trigger = campaign.trigger
        events = builder.source("events")
        properties = [col("e", name) for name, (needs, _) in mapped_properties(builder.config, "events").items()]
        conditions = [col("e", "type").eq(lit(trigger.type)), col("e", "occurred_at") <= builder.ts(builder.now)]
        if trigger.per == "event":
            return (exp.select(col("e", "customer_id"), exp.alias_(text(col("e", "event_id")), "trigger_key"), *properties)
                    .from_(exp.to_table(events).as_("e")).where(*conditions))
        day = day_text(col("e", "occurred_at"), builder.dialect)
        latest = exp.Window(this=exp.RowNumber(), partition_by=[col("e", "customer_id"), day.copy()],
                            order=exp.Order(expressions=[exp.Ordered(this=col("e", "occurred_at"), desc=True),
                                                         exp.Ordered(this=col("e", "event_id"), desc=True)]))
        ranked = (exp.select(col("e", "customer_id"), exp.alias_(day, "trigger_key"), *properties,
                             exp.alias_(latest, "newest"))
                  .from_(exp.to_table(events).as_("e")).where(*conditions))
        return exp.select("*").from_(ranked.subquery("d")).where(exp.column("newest").eq(exp.Literal.number(1)))


def _day_start(instant: datetime) -> datetime:
    """The start of the UTC day of ``instant`` (the ``per: day`` key's day)."""
    return instant.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


KIND = EventKind()
