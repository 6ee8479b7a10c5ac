"""Trigger ``order_date``: a date on the order (the planned delivery); steps before or after it.

Instances are orders placed by now that have the date (key: the order id, instant: the
customer's local midnight of the date, ``decide.local_midnight``), so a step may come
before it (a negative delay). The SQL returns the date; its window is widened by the
farthest time zones and Python anchors each row in the customer's zone. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlglot import exp

from engine.clock import parse_stored_date
from engine.decide import due_time, local_midnight
from engine.dialects import dialect_named
from engine.model import Campaign, ProjectConfig, Step, Trigger
from engine.sql.compile import (
    LOCAL_DAY_EARLIER, LOCAL_DAY_LATER, QueryBuilder, StepWindow, col, numbered_comparisons, text,
)
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
    local_date = True
    # every order's date compared with the steps' windows (no index on it): inlined in each of
    # delivery's two steps, the 1M orders were scanned twice, 0.17 -> 0.20 s a minute later (and with
    # the customers alone inlined, 0.80 s: nested loops over the instances' guessed 0.5 %)
    instances_once = True

    def parse(self, settings: dict, file: CampaignFile) -> OrderDate:
        return OrderDate(column=settings.get("column", "delivery_date"))

    def check(self, trigger: OrderDate, config: ProjectConfig, file: CampaignFile) -> None:
        file.needs(("trigger", self.name), f"trigger {self.name}", "orders", trigger.column)

    def instances(self, builder: QueryBuilder, campaign: Campaign, earliest: datetime | None) -> exp.Query:
        """The orders with the date; in a due query only those whose date lies in a step's window
        (``within_windows``): the instances are not every order with a date, materialised at every pass."""
        column = campaign.trigger.column
        scan = builder.scanned("orders", "o")
        now = builder.ts(builder.now)  # one placeholder of a compiled query, in the text or in its number
        instant, as_text, by_now = builder.instant_numbers("orders", now)
        windows = self.within_windows(builder, col("o", column))
        numbered = numbered_comparisons(windows, col("o", column), col("o", instant(column)), builder.dialect) \
            if instant(column) != column else None
        if numbered is not None:  # compared as numbers, only the kept dates formatted (Dialect.instant_number_sql)
            trigger_at = as_text(col("o", instant(column)))
            conditions = [col("o", instant(column)).is_(exp.null()).not_(), col("o", instant("created_at")) <= by_now,
                          *numbered]
        else:
            trigger_at = col("o", column)
            conditions = self._placed_with_date_in_windows(column, now, windows)
        return (
            exp.select(col("o", "customer_id"), exp.alias_(text(col("o", "order_id")), "trigger_key"),
                       exp.alias_(trigger_at, "trigger_at"))
            .from_(scan)
            .where(*conditions)
        )

    def ledger_created_since(self, builder: QueryBuilder, campaign: Campaign) -> exp.Expression | None:
        """The earliest placement among the orders whose date lies in a step's window: a ledger row of such an
        order was written by a pass that saw it placed (``instances``: ``created_at`` at or before the pass's
        instant, which the row's ``created_at`` holds, compared alike), however its date has moved since (its
        row keeps the old date under the same key, so ``instant_drift`` is None). None where the dates are
        compared as numbers (no such bound built)."""
        column = campaign.trigger.column
        if dialect_named(builder.dialect).instant_number_sql is not None or not builder.windows:
            return None
        return (exp.select(exp.Min(this=col("o", "created_at")))
                .from_(builder.scanned("orders", "o"))
                .where(*self._placed_with_date_in_windows(column, builder.ts(builder.now),
                                                          self.within_windows(builder, col("o", column))))).subquery()

    @staticmethod
    def _placed_with_date_in_windows(column: str, now: exp.Expression, windows: list[exp.Expression]) -> list[exp.Expression]:
        """The conditions on an order ``o`` that make it an instance where dates are compared as text: a date,
        placed by ``now``, the date in a step's window (``windows``: ``within_windows``) - what ``instances``
        selects and ``ledger_created_since`` bounds the placements of."""
        return [col("o", column).is_(exp.null()).not_(), col("o", "created_at") <= now, *windows]

    def window(self, builder: QueryBuilder, window: StepWindow) -> list[exp.Expression]:
        """The dates whose local midnight, in any time zone, can fall in ``window``."""
        conditions = [col("t", "trigger_at") <= builder.ts(window.due_cutoff + LOCAL_DAY_LATER)]
        if window.earliest is not None:
            conditions.append(col("t", "trigger_at") >= builder.ts(window.earliest - LOCAL_DAY_EARLIER))
        return conditions

    def explain_instance(self, trigger: OrderDate, step: Step, row: dict, zone, now: datetime,
                         horizon: timedelta) -> tuple[str | None, datetime | None, datetime | None]:
        trigger_at = local_midnight(parse_stored_date(row["trigger_at"]), zone)
        return str(row["trigger_key"]), trigger_at, due_time(trigger_at, step, zone)


KIND = OrderDateKind()
