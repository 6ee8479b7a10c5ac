"""Trigger ``anniversary``: a yearly customer date (the birthday); one instance per year.

Feb 29 falls on Feb 28 in common years; the instant is the customer's local midnight of
the day (``decide.local_midnight``). The SQL returns the date (column ``anniversary``) and
keeps the customers whose month and day fall in a step's window, widened by the farthest
time zones; the year (the key) and the instant are derived in Python per row
(``decide.anniversary_instance``). Steps may come before the date (a negative delay). Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlglot import exp

from engine.clock import parse_stored_date
from engine.decide import anniversary_instance, due_time, local_midnight, yearly_occurrence
from engine.model import Campaign, ProjectConfig, Step, Trigger
from engine.sql.compile import LOCAL_DAY_EARLIER, LOCAL_DAY_LATER, QueryBuilder, StepWindow, col, month_day
from engine.sql.triggers.base import CampaignFile, TriggerKind


@dataclass(frozen=True)
class Anniversary(Trigger):
    """A yearly customer date (birthday): one instance per year; Feb 29 falls on Feb 28
    in common years. The trigger instant is the customer's local midnight of that day."""

    attribute: str = "birthday"
    kind: str = "anniversary"


class AnniversaryKind(TriggerKind):
    name = "anniversary"
    model = Anniversary
    entities = ("customers",)
    dated = True
    keys_in_sql = False
    extra_columns = ("anniversary",)

    def several_at_once(self, trigger: Anniversary) -> bool:
        return False  # one date per customer, one instance of it a year (Python derives it)

    def parse(self, settings: dict, file: CampaignFile) -> Anniversary:
        return Anniversary(attribute=settings.get("attribute", "birthday"))

    def check(self, trigger: Anniversary, config: ProjectConfig, file: CampaignFile) -> None:
        file.needs(("trigger", self.name), f"trigger {self.name}", "customers", trigger.attribute)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        customers = builder.source("customers")
        value = col("a", campaign.trigger.attribute)
        conditions = [value.is_(exp.null()).not_()]
        if "created_at" in builder.config.sources["customers"].columns:
            # only customers who exist at ``now`` (no look-ahead when ``now`` is in the past: backtest)
            created = col("a", "created_at")
            conditions.append(exp.or_(created.is_(exp.null()), created <= builder.ts(builder.now)))
        return (
            exp.select(col("a", "customer_id"), exp.alias_(exp.null(), "trigger_key"),
                       exp.alias_(exp.null(), "trigger_at"), exp.alias_(value.copy(), "anniversary"))
            .from_(exp.to_table(customers).as_("a"))
            .where(*conditions)
        )

    def window(self, builder: QueryBuilder, window: StepWindow) -> list[exp.Expression]:
        month_days = anniversary_month_days(window)
        if month_days is None:
            return []
        return [month_day(col("t", "anniversary"), builder.dialect).isin(*[exp.Literal.number(d) for d in month_days])]

    def explain_instance(self, trigger: Anniversary, step: Step, row: dict, zone, now: datetime,
                         horizon: timedelta) -> tuple[str | None, datetime | None, datetime | None]:
        """The latest occurrence due by now, or the next one when that is long past."""
        day = parse_stored_date(row["anniversary"])
        latest = anniversary_instance(day, step, now, zone)
        if latest is not None:
            due_at = due_time(latest[0], step, zone)
            if step.freshness is None or now <= due_at + step.freshness + horizon:
                return latest[1], latest[0], due_at
        year = int(latest[1]) + 1 if latest is not None else (now - step.delay).year + 1
        trigger_at = local_midnight(yearly_occurrence(day, year), zone)
        return str(year), trigger_at, due_time(trigger_at, step, zone)


def anniversary_month_days(window: StepWindow) -> list[int] | None:
    """month*100+day of every date whose local midnight, in any time zone, falls in ``window``
    (the UTC day ``LOCAL_DAY_LATER`` after the window's end to ``LOCAL_DAY_EARLIER`` before its
    start); None = all dates.

    Feb 28 of a common year also stands for Feb 29, so leap-day birthdays come
    round every year.
    """
    if window.earliest is None or window.due_cutoff - window.earliest >= timedelta(days=366):
        return None
    days: set[int] = set()
    day: date = (window.earliest - LOCAL_DAY_LATER).date()
    while day <= (window.due_cutoff + LOCAL_DAY_EARLIER).date():
        days.add(day.month * 100 + day.day)
        if day.month == 2 and day.day == 28 and not _is_leap(day.year):
            days.add(229)
        day += timedelta(days=1)
    return sorted(days)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


KIND = AnniversaryKind()
