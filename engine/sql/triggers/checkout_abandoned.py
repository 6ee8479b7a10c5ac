"""Trigger ``checkout_abandoned``: a checkout started and still not completed when the step is due.

Instances are checkouts (key: the checkout id); completing the checkout ends the series,
so a campaign needs no stop condition. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, text
from engine.sql.triggers.base import CampaignFile, TemplateRecord, TriggerKind


@dataclass(frozen=True)
class CheckoutAbandoned(Trigger):
    """A checkout was started and is still not completed when the step is due."""

    kind: str = "checkout_abandoned"


class CheckoutAbandonedKind(TriggerKind):
    name = "checkout_abandoned"
    model = CheckoutAbandoned
    entities = ("checkouts",)
    template_record = TemplateRecord("checkouts", "checkout_items", "checkout_id")
    ends_by_itself = True

    def parse(self, settings: dict, file: CampaignFile) -> CheckoutAbandoned:
        return CheckoutAbandoned()

    def check(self, trigger: CheckoutAbandoned, config: ProjectConfig, file: CampaignFile) -> None:
        file.needs(("trigger", self.name), "abandoned checkouts", "checkouts", "completed_at")

    def instant_drift(self, trigger: CheckoutAbandoned) -> timedelta:
        """An instance is a checkout, timed at its start (``created_at``), which does not change."""
        return timedelta(0)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        now = builder.ts(builder.now)
        checkouts = builder.source("checkouts")
        completed = col("k", "completed_at")
        return (
            exp.select(
                col("k", "customer_id"),
                exp.alias_(text(col("k", "checkout_id")), "trigger_key"),
                exp.alias_(col("k", "created_at"), "trigger_at"),
            )
            .from_(exp.to_table(checkouts).as_("k"))
            .where(col("k", "created_at") <= now, exp.or_(completed.is_(exp.null()), completed > now))
        )


KIND = CheckoutAbandonedKind()
