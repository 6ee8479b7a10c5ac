"""What a message led to, in SQL: the instants of the ledger next to the shop's, a conversion window added to
them, and the per customer and channel aggregates ``channel_choice: by_response`` ranks the kinds by.

- ``instant`` / ``plus``: a ledger timestamp comparable with the warehouse's, and ``+ window`` on it
  (calendar months with the month-end rule); engine stats and the channel choice attribute orders so.
- ``response_ledger_query``: per customer and channel, the sent messages and how many of them an
  unsubscribe of the channel's kind (or of all) followed within the window - the ledger's database
  aggregates it over the relations ``ledger_reader`` hands out.
- ``response_orders_query``: per customer and channel, how many of the given messages an order followed
  within the window - the warehouse aggregates it over its mapped ``orders`` and the messages (the
  ledger's table when it shares the database, else a ``VALUES`` of them, ``messages_values``).

Builds queries only: no I/O, no decision (the ranking is engine.run.responses').
"""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlglot import exp

from engine.clock import CalendarDuration, Duration, sql_timestamp_text
from engine.dialects import dialect_named
from engine.model import ProjectConfig
from engine.sql.compile import col, lit, source_select, text, ts
from engine.state.ledger_reader import messages_relation, unsubscribes_relation

#: the columns of the messages ``response_orders_query`` attributes orders to
MESSAGE_COLUMNS = ("customer_id", "channel", "message_at")


def instant(value: exp.Expression, dialect: str) -> exp.Expression:
    """A ledger timestamp comparable with the warehouse's (instants kept as text, SQLite: the
    compiler's one text form, Dialect.instant_text_format)."""
    text_format = dialect_named(dialect).instant_text_format
    if text_format is not None:
        return exp.Anonymous(this="STRFTIME", expressions=[lit(text_format), value])
    return value


def plus(value: exp.Expression, delta: Duration, dialect: str) -> exp.Expression:
    """``value + delta`` in SQL; calendar months (``6mo``) with the month-end rule (Aug 31 + 6 months =
    Feb 28/29, as ``clock.add_months``): an interval of MONTH where instants are typed (DuckDB and
    PostgreSQL clamp so), spelled out on SQLite, whose ``'+6 months'`` modifier would overflow into March."""
    months, rest = (delta.months, delta.rest) if isinstance(delta, CalendarDuration) else (0, delta)
    seconds = int(rest.total_seconds())
    text_format = dialect_named(dialect).instant_text_format
    if text_format is not None:
        if months:
            value = _sqlite_add_months(value, months)
        return exp.Anonymous(this="STRFTIME", expressions=[lit(text_format), value, lit(f"+{seconds} seconds")])
    if months:
        value = exp.Add(this=value, expression=exp.Interval(this=lit(str(months)), unit=exp.var("MONTH")))
    return exp.Add(this=value, expression=exp.Interval(this=lit(str(seconds)), unit=exp.var("SECOND")))


def _sqlite_add_months(value: exp.Expression, months: int) -> exp.Expression:
    """``value`` (instant text) plus ``months`` calendar months, the day clamped to the target month's
    last: the target month's first day, plus min(day, its last day) - 1 days, then the time of day."""
    def fn(name: str, *args: exp.Expression) -> exp.Expression:
        return exp.Anonymous(this=name, expressions=list(args))

    def day_of(date_value: exp.Expression) -> exp.Expression:
        return exp.cast(fn("STRFTIME", lit("%d"), date_value), exp.DataType.build("INT"))

    first = fn("DATE", value.copy(), lit("start of month"), lit(f"{months:+d} months"))
    last = fn("DATE", value.copy(), lit("start of month"), lit(f"{months + 1:+d} months"), lit("-1 days"))
    day = exp.paren(exp.Sub(this=fn("MIN", day_of(value.copy()), day_of(last)), expression=exp.Literal.number(1)))
    date_part = fn("DATE", first, exp.DPipe(this=exp.DPipe(this=lit("+"), expression=day, safe=True),
                                             expression=lit(" days"), safe=True))
    return exp.DPipe(this=exp.DPipe(this=date_part, expression=lit(" "), safe=True),
                     expression=fn("STRFTIME", lit("%H:%M:%f"), value.copy()), safe=True)


def _count_if(condition: exp.Expression) -> exp.Expression:
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=condition, true=exp.Literal.number(1))],
                                 default=exp.Literal.number(0)))


def sent_messages(customer_ids: Sequence[str], channels: Sequence[str], dialect: str) -> exp.Select:
    """``MESSAGE_COLUMNS`` of the sent ledger messages of these customers on these channels (``dialect``:
    the ledger database's)."""
    return (exp.select(col("l", "customer_id"), col("l", "channel"),
                       exp.alias_(instant(col("l", "updated_at"), dialect), "message_at"))
            .from_(messages_relation("l"))
            .where(col("l", "status").eq(lit("sent")),
                   exp.In(this=col("l", "customer_id"), expressions=[lit(c) for c in customer_ids]),
                   exp.In(this=col("l", "channel"), expressions=[lit(c) for c in channels])))


def response_ledger_query(customer_ids: Sequence[str], scopes: dict[str, str], window: Duration,
                          dialect: str) -> exp.Select:
    """(customer_id, channel, sent, unsubscribed): per customer and channel (``scopes``: channel -> the
    unsubscribe scope of its kind), the sent messages and those an unsubscribe of that scope or of all
    followed within ``window``."""
    m, u = "m", "u"
    scope = exp.Case(this=col(m, "channel"), ifs=[exp.If(this=lit(channel), true=lit(kind))
                                                    for channel, kind in sorted(scopes.items())])
    message_at = col(m, "message_at")
    unsubscribed = exp.Exists(this=exp.select(exp.Literal.number(1)).from_(unsubscribes_relation(u)).where(
        col(u, "customer_id").eq(col(m, "customer_id")),
        exp.or_(col(u, "kind").eq(scope), col(u, "kind").eq(lit("all"))),
        instant(col(u, "created_at"), dialect) > message_at,
        instant(col(u, "created_at"), dialect) <= plus(message_at.copy(), window, dialect)))
    return (exp.select(col(m, "customer_id"), col(m, "channel"), exp.alias_(exp.Count(this=exp.Star()), "sent"),
                       exp.alias_(_count_if(unsubscribed), "unsubscribed"))
            .from_(sent_messages(customer_ids, sorted(scopes), dialect).subquery(m))
            .group_by(col(m, "customer_id"), col(m, "channel")))


def response_orders_query(messages: exp.Expression, config: ProjectConfig, window: Duration) -> exp.Query:
    """(customer_id, channel, ordered): per customer and channel, how many of ``messages`` (a query or
    VALUES with ``MESSAGE_COLUMNS``) an order of the customer followed within ``window`` (after the
    message, at most ``window`` after it)."""
    dialect = config.dialect
    m, o = "m", "o"
    ordered = exp.Exists(this=exp.select(exp.Literal.number(1)).from_(exp.to_table("src_orders").as_(o)).where(
        text(col(o, "customer_id")).eq(col(m, "customer_id")),
        col(o, "created_at") > col(m, "message_at"),
        col(o, "created_at") <= plus(col(m, "message_at"), window, dialect)))
    return (exp.select(col(m, "customer_id"), col(m, "channel"), exp.alias_(_count_if(ordered), "ordered"))
            .from_(exp.to_table("msgs").as_(m))
            .group_by(col(m, "customer_id"), col(m, "channel"))
            .with_("src_orders", as_=source_select(config.sources["orders"], dialect), copy=False)
            .with_(f"msgs({', '.join(MESSAGE_COLUMNS)})", as_=messages, copy=False))


def messages_values(rows: Sequence[tuple], dialect: str) -> exp.Values:
    """(customer_id, channel, message_at) rows read from the ledger database, as VALUES for the warehouse."""
    as_text = dialect_named(dialect).instant_text_format is not None

    def at(value) -> exp.Expression:
        value = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if as_text:
            return ts(value, dialect)
        return exp.cast(exp.Literal.string(sql_timestamp_text(value)), exp.DataType.build("TIMESTAMP"))

    return exp.Values(expressions=[exp.Tuple(expressions=[lit(str(customer)), lit(str(channel)), at(message_at)])
                                   for customer, channel, message_at in rows])
