"""Trigger ``segment_entry``: a customer entered one of the named segments of engine.yaml
(``segments:``, the same filters ``engine export`` uses); stop condition ``left_segment``:
they no longer match it.

Entries are recorded per pass like the at-risk segment's (``entries_insert``, table
``engine_entries``): an instance is a recorded entry, or an entry happening now (a member not
yet recorded), timed at the pass that first saw the customer in the segment. One entry per
customer and campaign (key ``entered``): the ledger records entries, not exits, so a customer
who leaves and comes back does not enter again. Entries live next to the warehouse, so a
backtest (which never writes there) cannot replay it. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, lit, new_segment_entries, segment_instances
from engine.sql.filter_types import segment_attributes
from engine.sql.triggers.base import CampaignFile, TriggerKind
from engine.state.tables import ENTRIES_TABLE

#: the trigger key of a customer's (one) entry into the segment
ENTRY_KEY = "entered"


@dataclass(frozen=True)
class SegmentEntry(Trigger):
    """A customer entered the named segment ``segment`` (engine.yaml ``segments:``)."""

    segment: str
    kind: str = "segment_entry"


class SegmentEntryKind(TriggerKind):
    name = "segment_entry"
    model = SegmentEntry
    entities = ("customers",)
    records_entries = True
    has_segment = True

    def parse(self, settings: dict, file: CampaignFile) -> SegmentEntry:
        return SegmentEntry(segment=settings["segment"])

    def check(self, trigger: SegmentEntry, config: ProjectConfig, file: CampaignFile) -> None:
        if trigger.segment not in config.segments:
            named = ", ".join(sorted(config.segments)) or "none"
            file.problem(("trigger", self.name, "segment"),
                         f"there is no segment named '{trigger.segment}' in {config.file} (named: {named})",
                         f"add it under segments: in {config.file} (name: filter), or name one of those")

    def instant_drift(self, trigger: SegmentEntry) -> timedelta:
        """An instance is a recorded entry, timed at ``entered_at``, which the entry keeps (one per customer
        and campaign, never recorded again); an entry happening now is timed at the pass's instant, which
        its entry row then records (``compile.segment_instances``)."""
        return timedelta(0)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        _members(builder, campaign)
        builder.left_segment = exp.paren(exp.not_(exp.func("COALESCE", _condition(builder, campaign), exp.false())))
        return segment_instances(builder, campaign, "segment_members")

    def entries_select(self, builder: QueryBuilder, campaign: Campaign) -> exp.Query:
        _members(builder, campaign)
        return new_segment_entries(builder, campaign, "segment_members")

    def entries_insert(self, builder: QueryBuilder, campaign: Campaign) -> exp.Insert:
        return exp.insert(self.entries_select(builder, campaign), ENTRIES_TABLE,
                          columns=["campaign", "customer_id", "trigger_key", "entered_at"])


def _condition(builder: QueryBuilder, campaign: Campaign) -> exp.Expression:
    """The segment's filter over the customer ``c`` (and the facts the query joins)."""
    return builder.bind(builder.config.segments[campaign.trigger.segment], segment_attributes(builder.config))


def _members(builder: QueryBuilder, campaign: Campaign) -> None:
    """A CTE ``segment_members(customer_id, trigger_key)``: the customers matching the segment now."""
    if "segment_members" in builder.ctes:
        return
    customers = builder.source("customers")
    condition = _condition(builder, campaign)
    query = exp.select(col("c", "customer_id"), exp.alias_(lit(ENTRY_KEY), "trigger_key")).from_(
        exp.to_table(customers).as_("c"))
    builder.ctes["segment_members"] = builder.join_facts(query, col("c", "customer_id")).where(condition)


KIND = SegmentEntryKind()
