"""Trigger ``registration``: the customer registered (customers.created_at); one instance per customer. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.model import Campaign, ProjectConfig, Trigger
from engine.sql.compile import QueryBuilder, col, text
from engine.sql.triggers.base import CampaignFile, TriggerKind


@dataclass(frozen=True)
class Registration(Trigger):
    """The customer registered (customers.created_at); one instance per customer."""

    kind: str = "registration"


class RegistrationKind(TriggerKind):
    name = "registration"
    model = Registration
    entities = ("customers",)

    def several_at_once(self, trigger: Registration) -> bool:
        return False  # one registration per customer

    def parse(self, settings: dict, file: CampaignFile) -> Registration:
        return Registration()

    def check(self, trigger: Registration, config: ProjectConfig, file: CampaignFile) -> None:
        file.needs(("trigger", self.name), f"trigger {self.name}", "customers", "created_at")

    def instant_drift(self, trigger: Registration) -> timedelta:
        """An instance is the customer, timed at their registration (``created_at``), which does not change."""
        return timedelta(0)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        customers = builder.source("customers")
        return (
            exp.select(col("r", "customer_id"), exp.alias_(text(col("r", "customer_id")), "trigger_key"),
                       exp.alias_(col("r", "created_at"), "trigger_at"))
            .from_(exp.to_table(customers).as_("r"))
            .where(col("r", "created_at") <= builder.ts(builder.now))
        )


KIND = RegistrationKind()
