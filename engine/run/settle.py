"""The settle stage: the skips the warehouse decides (stale, stopped, no_variant, reentry) recorded set-based.

A row of a step ``due.settled_in_sql`` accepts is settled when SQL alone knows it is skipped: a
stop condition holds, its freshness ran out, or no variant qualifies, A/B shares included
(``due.settled_reason``, ``plan.decide_row``'s rules), or the campaign's re-entry rule forbids it
because of the instances the ledger holds (``policies.reentry_history``'s rule; ``due.reentry_in_sql``).
Most candidate rows of a first pass are such old history: recorded once and never seen again.
They are recorded here before the campaign's other rows are planned (``due_query(settled="exclude")``
leaves them out), so no ``DueMessage``, customer dictionary or policy ever sees them:

- the ledger shares the warehouse's database, the dialect keeps instants as timestamps and has
  ``INSERT ... ON CONFLICT``: one ``INSERT INTO engine_ledger ... SELECT`` per campaign, whose
  ``RETURNING`` gives only (step, reason, channel) of the rows it inserted, for the pass report;
- elsewhere (a ledger in another database, SQLite's instants as text): the settled rows' ledger
  columns stream in batches into the ledger's bulk insert (``Ledger.write_new``).

Either way a skip another process recorded first is neither written again nor counted. The
statement scans the campaign's trigger instances once more, so a pass runs it only where that
pays (``worth_settling``).

A plan that shows only how many of them there are (``engine plan`` without ``--include-skipped``)
counts them, writing nothing, into ``SettledCounts``: where the ledger shares the warehouse, from
the statement that returns the campaign's other rows (``due_query(settled="count")``), so the due
query runs once, as in the row-by-row plan - one summary row per step, reason and channel where the
database evaluates a CTE read twice once and out of core (``Dialect.settled_counts``: PostgreSQL,
DuckDB), else the settled rows themselves (SQLite), no decision and no message, counted as they stream;
``counted_rows`` takes them out of the batches. From a ledger in another database, which no
warehouse statement can read, their keys are streamed and those the ledger holds left out
(``count_settled``), then the other rows are read.

Owns the ledger row of a settled skip (key, due time, statuses) in SQL and in Python, their
counts, and those choices; must not decide which rows are settled (due.py does) nor plan, render
or send.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlglot import exp

from engine.clock import parse_stored_timestamp, to_utc
from engine.dialects import dialect_named
from engine.model import Campaign, ProjectConfig
from engine.run.messages import PassReport
from engine.sql.compile import col, lit, ts
from engine.sql.due import COUNT_CHANNEL, COUNT_COLUMN, COUNT_REASON, settled_steps, zoned
from engine.sql.instants import PassInstant
from engine.state.driver_rows import Rows
from engine.state.ledger import Ledger, Record, insert_new_rows, message_key

#: the ledger's columns an INSERT of settled skips fills (attempts 0 and content NULL by default)
_LEDGER_COLUMNS = ("message_key", "campaign", "step", "customer_id", "trigger_key", "variant", "channel", "status",
                   "reason", "detail", "trigger_at", "due_at", "created_at", "updated_at")


#: A campaign whose last pass (in this process) found fewer settled skips than this reads them row
#: by row: the settle statement scans the campaign's trigger instances once more, which costs more
#: than deciding and recording a few hundred rows in Python (benchmarks/README.md).
SETTLE_FROM = 1000


#: the skip reasons the warehouse settles (``due.settled_reason``); all but reentry are decide_row's
SETTLED_REASONS = ("stale", "stopped", "no_variant", "reentry")


def settles(campaign: Campaign, config: ProjectConfig, shard: tuple[int, int] | None,
            customer_id: str | None = None) -> bool:
    """Whether a pass can record this campaign's settled skips here (a step settled in SQL, and no
    replica shard Python cuts the rows to - ``plan.shard_in_sql`` - nor single customer: those keep
    the row-by-row path)."""
    return shard is None and customer_id is None and bool(settled_steps(campaign, zone_due=True, dialect=config.dialect))


#: How long a campaign's count remembered in the ledger (``engine_settled``, ``remembered``) stands for
#: a new process: after a longer gap without a pass (a stopped service, a cron that did not run) a
#: backlog of settled skips may be waiting, and the next pass settles it in SQL.
REMEMBERED_FOR = timedelta(hours=1)


def remembered(memory: Mapping[str, tuple[datetime, int]], now: datetime) -> dict[str, int]:
    """``worth_settling``'s ``last_count`` of each campaign the ledger remembers
    (``Ledger.settled_memory``: the instant of its last pass and the settled skips that pass found),
    for a process that has not planned it yet: the count, or ``SETTLE_FROM`` (a backlog) when that
    pass is more than ``REMEMBERED_FOR`` before ``now``. Only decides SQL or row by row: both record
    the same skips."""
    return {name: found if to_utc(now) - at <= REMEMBERED_FOR else SETTLE_FROM for name, (at, found) in memory.items()}


def to_remember(found: Mapping[str, int], remembered: Mapping[str, tuple[datetime, int]],
                now: datetime) -> dict[str, int]:
    """Of a pass's counts (``found``), those the ledger must be told (``Ledger.remember_settled``):
    a count it does not hold (``remembered``: what this process read or wrote last), or one it
    wrote more than half of ``REMEMBERED_FOR`` ago (so that it never reads as a gap between
    passes). A steady pass writes nothing."""
    return {name: count for name, count in found.items()
            if name not in remembered or remembered[name][1] != count
            or to_utc(now) - remembered[name][0] > REMEMBERED_FOR / 2}


def worth_settling(campaign: Campaign, last_count: int | None, held: Container[str]) -> bool:
    """Whether settling ``campaign``'s skips in SQL pays in this pass. ``last_count``: the settled
    skips its last pass found (either way: in this process, else as the ledger remembers it,
    ``remembered``), None when neither knows; ``held``: the
    campaigns the ledger holds rows of (``Ledger.campaigns_held``, one query for the whole pass). A
    first pass settles a campaign the ledger has never seen (a new campaign or ledger: its whole
    history of stale and stopped rows); a campaign already running has only the few skips that
    became due since its last pass, until a pass finds ``SETTLE_FROM`` of them (a backlog)."""
    if last_count is None:
        return campaign.name not in held
    return last_count >= SETTLE_FROM


def settled_count(campaign: Campaign, batch, config: ProjectConfig) -> int:
    """How many messages of ``batch`` (``plan.decided_batches``'s) are skips this stage would have
    settled: stale, stopped or no_variant, on a step settled in SQL (for the next pass's ``worth_settling``;
    the re-entry skips the policy stage finds are counted there: ``PolicyState.history_skips``)."""
    steps = {step.id for step in settled_steps(campaign, zone_due=True, dialect=config.dialect)}
    return sum(1 for m in batch if m.action == "skip" and m.reason in SETTLED_REASONS and m.step in steps)


def in_one_statement(config: ProjectConfig, ledger_in_query: bool) -> bool:
    """Whether the settled skips go in one ``INSERT ... SELECT`` (else a bulk insert from Python)."""
    dialect = dialect_named(config.dialect)
    return ledger_in_query and dialect.on_conflict_insert is not None and dialect.instant_text_format is None


def insert_settled(campaign: Campaign, now: datetime | PassInstant, query: exp.Query, dialect: str) -> exp.Expression:
    """``query`` (``due_query(settled="only")`` at ``now``, a datetime or the symbolic instant of a
    statement compiled once: ``sql.prepared``) turned into the INSERT of its rows into the ledger."""
    delays = _fixed_delays(campaign, dialect)
    instant = ts(now, dialect)  # the pass instant, bound like the query's own
    row = "s"
    trigger_at = exp.cast(col(row, "trigger_at"), "TIMESTAMP")
    due_at = exp.cast(col(row, "due_at"), "TIMESTAMP")  # a local send time's, from the zone table
    if delays:  # trigger + delay where the row has no due time of its own
        due_at = exp.Coalesce(this=due_at, expressions=[
            exp.Case(ifs=[exp.If(this=col(row, "step").eq(lit(step)),
                                 true=exp.Add(this=trigger_at.copy(), expression=_interval(delay)))
                          for step, delay in delays.items()])])
    key = col(row, "campaign")
    for part in ("step", "customer_id", "trigger_key"):
        key = exp.DPipe(this=exp.DPipe(this=key, expression=lit(":"), safe=True), expression=col(row, part), safe=True)
    values = {
        "message_key": key, "campaign": col(row, "campaign"), "step": col(row, "step"),
        "customer_id": col(row, "customer_id"), "trigger_key": col(row, "trigger_key"),
        "variant": col(row, "variant"), "channel": col(row, "channel"), "status": lit("skipped"),
        "reason": col(row, "reason"), "detail": col(row, "detail"), "trigger_at": trigger_at,
        "due_at": due_at, "created_at": instant.copy(), "updated_at": instant.copy(),
    }
    select = exp.select(*[exp.alias_(values[name], name, copy=False) for name in _LEDGER_COLUMNS]).from_(
        query.subquery(row, copy=False), copy=False)  # built for this statement: no copies of the query
    return insert_new_rows(select, list(_LEDGER_COLUMNS))


def _fixed_delays(campaign: Campaign, dialect: str) -> dict:
    """step id -> delay of the steps settled in SQL whose due time is trigger time + delay (the
    others, with a local send time or date: ``due.zoned``, come with their due time)."""
    return {step.id: step.delay for step in settled_steps(campaign, zone_due=True, dialect=dialect)
            if not zoned(campaign, step)}


def _interval(delay) -> exp.Expression:
    seconds = delay.total_seconds()
    return exp.Interval(this=exp.Literal.string(f"{seconds:.6f}".rstrip("0").rstrip(".")), unit=exp.Var(this="SECOND"))


def record_settled(campaign: Campaign, rows_of, config: ProjectConfig, ledger: Ledger, now: datetime,
                   report: PassReport, *, ledger_in_query: bool) -> int:
    """Record ``campaign``'s settled skips at ``now``, count the new ones in ``report`` and return
    how many (``rows_of``: ``plan.due_rows``'s reader, on the pass's warehouse session)."""
    counts: Counter = Counter()
    if in_one_statement(config, ledger_in_query):
        for rows in rows_of(campaign, "only", insert_settled):
            counts.update(tuple(row) for row in rows)
    else:
        delays = _fixed_delays(campaign, config.dialect)
        for rows in rows_of(campaign, "only"):
            records = {}
            for row in rows:
                name, step, customer_id, trigger_key, trigger_at, reason, detail, variant, channel, due_at = row
                at = parse_stored_timestamp(trigger_at)
                due_at = at + delays[step] if due_at is None else parse_stored_timestamp(due_at)
                key = message_key(name, step, customer_id, trigger_key)
                records[key] = Record(message_key=key, campaign=name, step=step, customer_id=customer_id,
                                      trigger_key=trigger_key, channel=channel, status="skipped", due_at=due_at,
                                      trigger_at=at, variant=variant, reason=reason, detail=detail)
            for key in ledger.write_new(records.values(), now):
                r = records[key]
                counts[(r.step, r.reason, r.channel)] += 1
    for (step, reason, channel), n in counts.items():
        report.add(campaign.name, step, f"skipped:{reason}", n, channel=channel)
    return sum(counts.values())



@dataclass
class SettledCounts:
    """The settled skips a plan counted in SQL instead of receiving them as skip messages
    (``Reconciler.due(settled_counts=...)``): per (campaign, step, reason, channel), channel None
    where no variant qualifies. Filled while the plan's batches are consumed: complete once they end."""

    by_channel: Counter = field(default_factory=Counter)

    def add(self, campaign: str, step: str, reason: str, channel: str | None, count: int) -> None:
        self.by_channel[(campaign, step, reason, channel)] += count

    def outcomes(self) -> Counter:
        """Per (campaign, step, outcome), as the plan counts its messages (``DueMessage.outcome``: "skip:stale")."""
        counts: Counter = Counter()
        for (campaign, step, reason, _channel), count in self.by_channel.items():
            counts[(campaign, step, f"skip:{reason}")] += count
        return counts


def count_settled(campaign: Campaign, rows_of, ledger: Ledger, counts: SettledCounts) -> int:
    """Count ``campaign``'s settled skips into ``counts`` without recording them and return how many,
    for a ledger in another database (``rows_of``: ``plan.due_rows``'s reader): the rows' keys
    streamed, those the ledger holds left out (as ``plan.decided_batches`` leaves them out of a
    plan's messages). Where the ledger shares the warehouse, ``counted_rows`` instead."""
    found = 0
    for rows in rows_of(campaign, "only"):
        keys = [(message_key(name, step, customer_id, trigger_key), step, reason, channel)
                for name, step, customer_id, trigger_key, _at, reason, _detail, _variant, channel, _due in rows]
        known = ledger.existing_keys([key for key, *_ in keys])
        for key, step, reason, channel in keys:
            if key not in known:
                counts.add(campaign.name, step, reason, channel, 1)
                found += 1
    return found


def counted_rows(campaign: Campaign, row_batches: Iterator[Rows], counts: SettledCounts) -> Iterator[Rows]:
    """The batches of ``campaign``'s ``due_query(settled="count")`` rows without its settled ones
    (``COUNT_REASON`` set), which are counted into ``counts``: a summary row by its ``COUNT_COLUMN``
    (one per step, reason and channel), a settled row itself as one (``Dialect.settled_counts``
    "rows"); a batch left empty is not given. Complete once the batches end: they come in any order."""
    at = None
    for rows in row_batches:
        if at is None:
            fields = rows.fields
            at = [fields.index(name) for name in (COUNT_REASON, "step", COUNT_CHANNEL, COUNT_COLUMN)]
        reason_at, step_at, channel_at, count_at = at
        kept = Rows((row for row in rows if row[reason_at] is None), rows.fields)
        if len(kept) < len(rows):
            add, name = counts.add, campaign.name
            for row in rows:
                if row[reason_at] is not None:
                    count = row[count_at]
                    add(name, row[step_at], row[reason_at], row[channel_at], 1 if count is None else count)
        if kept:
            yield kept
