"""What a filter may ask about a customer's responses (opens, clicks, scans), and the SQL that answers it.

The vocabulary: the attributes ``last_opened_at``, ``last_clicked_at`` and
``last_engaged_at`` (the newest open, click, or any of open/click/scan), the
window counts ``emails_opened(N)`` and ``emails_clicked(N)`` (how many emails
the customer opened, or clicked a link in, during the last N days: distinct
messages) and the per-kind ``last_engaged_at('<kind>')`` (the newest open, click
or scan of a message sent on a channel of that kind). Only human responses
count: machine opens (mail privacy prefetch) and link-scanner clicks are
recorded with ``machine`` set and left out here.

The SQL: one ``GROUP BY customer_id`` over the engagement rows (the ledger's
``engine_events``, or the pass's copy of them when the ledger lives in
another database), with one aggregate column per attribute or function call a
query uses; the due query LEFT JOINs it once, like the order facts. No
per-customer lookup. ``ResponseColumns`` collects the columns one query needs;
``facts_select`` builds the aggregate.

Pure: builds expressions, executes nothing; knows no trigger kind and no
warehouse beyond the dialect's instant text format. Must not name a channel
kind except through engine.channel_kinds.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from sqlglot import exp

from engine.channel_kinds import names as kind_names
from engine.channel_kinds.email import NAME as EMAIL_KIND

#: The event types that are engagement (events.ENGAGEMENT of the ledger: tests/test_responses.py checks they agree).
OPEN, CLICK, SCAN = "open", "click", "scan"
ENGAGEMENT = (OPEN, CLICK, SCAN)

#: attribute -> the event types whose newest (human) occurrence it is
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "last_opened_at": (OPEN,),
    "last_clicked_at": (CLICK,),
    "last_engaged_at": ENGAGEMENT,
}
#: function -> (argument kind, what it means), declared as filters.ENGINE_FUNCTIONS declares the others
FUNCTIONS: dict[str, tuple[str, str]] = {
    "emails_opened": ("number", "how many emails the customer opened in the last N days"),
    "emails_clicked": ("number", "how many emails the customer clicked a link in during the last N days"),
    "last_engaged_at": ("string", "the customer's last open, click or scan of a message of this channel kind"),
}
#: window count function -> the event type it counts (messages of the email kind)
WINDOW_COUNTS = {"emails_opened": OPEN, "emails_clicked": CLICK}
#: the largest window, in days (a hundred years, as days_ago)
MAXIMUM_DAYS = 36_600
#: functions whose string argument names a channel kind
KIND_ARGUMENT = ("last_engaged_at",)

ATTRIBUTE_KINDS = {name: "instant" for name in ATTRIBUTES}
FUNCTION_KINDS = {"emails_opened": "number", "emails_clicked": "number", "last_engaged_at": "instant"}

#: The engagement rows' columns, in the order the pass's copy holds them (sql.shipping).
ENGAGEMENT_COLUMNS = ("customer_id", "channel", "type", "message_key", "occurred_at")
#: The CTE of one query's response facts, joined as ``fr``.
FACTS_CTE = "response_facts"


def unknown_kind(name: str, value: str) -> str | None:
    """A problem with the channel kind argument of ``name`` (None: fine, or not a kind argument)."""
    if name in KIND_ARGUMENT and value not in kind_names():
        return f"{name}('{value[:40]}'): there is no channel kind '{value[:40]}'"
    return None


def kind_fix(name: str) -> str:
    return f"name a channel kind: one of {', '.join(kind_names())}, e.g. {name}('{EMAIL_KIND}')"


def _number_text(value: str) -> str:
    return re.sub(r"\W", "_", value.strip())


class ResponseColumns:
    """The response facts one query uses: column name -> (event types, channel kind or None, window days or None, count?)."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[tuple[str, ...], str | None, float | None, bool]] = {}

    def __bool__(self) -> bool:
        return bool(self.columns)

    def attribute(self, name: str) -> str:
        self.columns.setdefault(name, (ATTRIBUTES[name], None, None, False))
        return name

    def function(self, name: str, argument: str) -> str:
        if name in WINDOW_COUNTS:
            column = f"{name}_{_number_text(argument)}d"
            self.columns.setdefault(column, ((WINDOW_COUNTS[name],), EMAIL_KIND, float(argument), True))
        else:
            column = f"{name}_{argument}"
            self.columns.setdefault(column, (ENGAGEMENT, argument, None, False))
        return column

    def facts_select(self, rows: str, now: exp.Expression, window_start: Callable[[float], exp.Expression],
                     channels: Mapping[str, tuple[str, ...]]) -> exp.Select:
        """customer_id and one column per collected fact, over the engagement rows ``rows`` up to ``now``;
        ``window_start(days)`` is the instant N days before now, ``channels`` the channel names of each kind."""
        def column(name: str) -> exp.Column:
            return exp.column(exp.to_identifier(name), table=exp.to_identifier("r"))

        projections: list[exp.Expression] = [column("customer_id")]
        for name, (types, kind, days, count) in self.columns.items():
            conditions: list[exp.Expression] = [column("type").isin(*[exp.Literal.string(t) for t in types])]
            if kind is not None:
                named = channels.get(kind, ())
                conditions.append(column("channel").isin(*[exp.Literal.string(c) for c in named]) if named else exp.false())
            if days is not None:
                conditions.append(column("occurred_at") > window_start(days))
            condition = exp.and_(*conditions)
            if count:
                value: exp.Expression = exp.Count(this=exp.Distinct(expressions=[
                    exp.Case(ifs=[exp.If(this=condition, true=column("message_key"))])]))
            else:
                value = exp.Max(this=exp.Case(ifs=[exp.If(this=condition, true=column("occurred_at"))]))
            projections.append(exp.alias_(value, exp.to_identifier(name)))
        return (exp.select(*projections).from_(exp.to_table(rows).as_("r"))
                .where(column("occurred_at") <= now).group_by(column("customer_id")))


def engagement_select(events_table: str, instant_text_format: str | None) -> exp.Select:
    """The human engagement rows (``ENGAGEMENT_COLUMNS``) of the ledger's events table, instants
    normalised to the dialect's text format where it keeps instants as text (so they compare exactly)."""
    def column(name: str) -> exp.Column:
        return exp.column(exp.to_identifier(name), table=exp.to_identifier("ev"))

    occurred: exp.Expression = column("occurred_at")
    if instant_text_format is not None:
        occurred = exp.Anonymous(this="STRFTIME", expressions=[exp.Literal.string(instant_text_format), occurred])
    return (
        exp.select(column("customer_id"), column("channel"), column("type"), column("message_key"),
                   exp.alias_(occurred, "occurred_at"))
        .from_(exp.to_table(events_table).as_("ev"))
        .where(exp.Not(this=column("machine")), column("type").isin(*[exp.Literal.string(t) for t in ENGAGEMENT]))
    )
