"""Backtest: replay a campaign over the warehouse's history, sending nothing.

At every instant from ``start`` to ``end`` (step ``every``) the decision
part of a pass runs exactly as in production - due set, minus the ledger,
stop conditions, freshness, contact data, consent, frequency caps, re-entry -
but against a **scratch ledger**: an SQLite file in a temporary directory,
deleted afterwards. Would-be sends are recorded there as ``sent`` (nothing is
rendered, no channel is opened), skips with their reason, so later instants
see them as a live engine would (caps, re-entry, a step never twice). The
real ledger and the outbox are never touched and the warehouse is only read.

Why a separate database and not scratch tables in the warehouse: a backtest
must not write into a production warehouse. The reconciler already supports
a ledger in another database (the due query then skips the SQL anti-join and
the keys are looked up in batches, and the engine state its queries join is
shipped into the warehouse session for the pass), so the simulation is the
production code path.

The engine's own state is replayed, never read from today: the scratch
ledger starts empty, and at every instant the segment entries of a segment
trigger (``at_risk``, ``segment_entry``) are recorded into it as a pass at
that instant would have recorded them, and the tags a would-be send sets
(step actions) are applied to it. A campaign that filters with ``has_tag()``
is replayed together with the campaigns whose steps set or remove those
tags (``tag_sources``), so its tags are the ones the past would have had;
only the named campaign is counted. Tags set outside any campaign are not
known to the past and are not replayed.

No look-ahead: the compiled queries bound every trigger, stop condition and
customer fact by the simulated instant (orders placed later do not stop a
series earlier). Customer attributes (email, consent columns, ...) are the
warehouse's current values, as the warehouse keeps no history of them.

Conversions: for every simulated send, whether the customer placed an order
within the campaign's ``conversion_window`` after it - computed by the
warehouse, one query per batch of sends read back from the scratch ledger.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlglot import exp

from engine.clock import format_instant, to_utc
from engine.sql.compile import col, lit, render_sql, source_select, text, ts
from engine.sql.triggers.registry import kind_of
from engine.errors import EngineError
from engine.sql.shipping import state_needs
from engine.state.ledger import Ledger, Record
from engine.model import Campaign, Project
from engine.progress import Progress
from engine.run.messages import DueMessage
from engine.run.plan import BATCH_SIZE
from engine.run.reconcile import Reconciler
from engine.state.warehouse import Database

#: Simulated instants in one backtest at most (a year at --every 5m); more is almost surely a typo.
MAX_INSTANTS = 110_000


class BacktestError(EngineError):
    """A backtest that cannot run as asked."""


@dataclass
class BacktestReport:
    """What the campaign would have done: counts per (step, UTC day of the instant, outcome)."""

    campaign: str
    start: datetime
    end: datetime
    every: timedelta
    instants: int
    conversion_window: timedelta
    #: (step, day 'YYYY-MM-DD', 'sent' | 'skipped:<reason>') -> messages
    counts: Counter = field(default_factory=Counter)
    #: (step, day) -> sends followed by an order within the conversion window
    converted: Counter = field(default_factory=Counter)

    def total(self, outcome: str, step: str | None = None) -> int:
        return sum(n for (s, _, o), n in self.counts.items() if o == outcome and step in (None, s))


def instants(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    """``start``, ``start + every``, ... up to and including ``end``."""
    if every <= timedelta(0):
        raise BacktestError("--every must be a positive duration, e.g. 1h")
    if to_utc(end) < to_utc(start):
        raise BacktestError(f"the last instant {format_instant(end)} is before the first {format_instant(start)}; swap them")
    count = int((to_utc(end) - to_utc(start)) / every) + 1
    if count > MAX_INSTANTS:
        raise BacktestError(f"{count:,} instants from --since to --until at --every {every}: more than {MAX_INSTANTS:,}; "
                            "use a larger --every or a shorter range")
    return [to_utc(start) + i * every for i in range(count)]


def check_backtestable(project: Project, campaign: Campaign) -> None:
    """Refuse a campaign whose trigger kind cannot be replayed (its ``backtest_refusal``)."""
    refusal = kind_of(campaign.trigger).backtest_refusal(campaign)
    if refusal is not None:
        raise BacktestError(refusal)


def tag_sources(project: Project, campaign: Campaign) -> list[Campaign]:
    """The other campaigns whose steps set or remove a tag ``campaign``'s filters read (``has_tag``),
    and, in turn, those whose tags they read: replayed with it so its tags are the past's."""
    wanted: list[Campaign] = []
    reading = [campaign]
    while reading:
        tags = set(state_needs(reading, project.config).tags)
        reading = [other for other in project.campaigns if other is not campaign and other not in wanted
                   and any(action.tag in tags for step in other.steps for action in step.actions)]
        wanted += reading
    return wanted


def backtest(project: Project, name: str, start: datetime, end: datetime, every: timedelta,
             progress: Progress | None = None, batch_size: int = BATCH_SIZE) -> BacktestReport:
    """Replay campaign ``name`` at every instant from ``start`` to ``end``; nothing is sent or written."""
    try:
        campaign = project.campaign(name)
    except KeyError as exc:
        raise BacktestError(exc.args[0]) from None
    check_backtestable(project, campaign)
    steps = instants(start, end, every)
    progress = progress or Progress()
    report = BacktestReport(campaign=campaign.name, start=steps[0], end=to_utc(end), every=every,
                            instants=len(steps), conversion_window=campaign.conversion_window)
    replayed = [campaign, *tag_sources(project, campaign)]
    with tempfile.TemporaryDirectory(prefix="engine-backtest-") as scratch:
        ledger_db = Database(f"sqlite:///{Path(scratch) / 'scratch-ledger.db'}")
        reconciler = Reconciler(project, batch_size=batch_size, ledger=Ledger(ledger_db), progress=progress)
        try:
            for index, now in enumerate(steps, 1):
                progress.stage("instant", index, len(steps), format_instant(now))
                reconciler.enter_segments(now, replayed)  # the entries a pass at ``now`` records, into the scratch
                for batch in reconciler.due(now, replayed):
                    _record(project, reconciler.ledger, batch, now, report)
            _conversions(reconciler, campaign, report, progress, batch_size)
        finally:
            reconciler.close()
            progress.finish()
    return report


def _record(project: Project, ledger: Ledger, batch: list[DueMessage], now: datetime, report: BacktestReport) -> None:
    """Write the batch's decisions to the scratch ledger as a live pass would have (a would-be send's
    tag actions included), and count those of the backtested campaign. Deferred messages (quiet
    hours) stay due, exactly as in a live pass."""
    decided = [m for m in batch if m.action in ("send", "skip")]
    records = [Record(message_key=m.key, campaign=m.campaign, step=m.step, customer_id=m.customer_id,
                      trigger_key=m.trigger_key, channel=m.channel, due_at=m.due_at, trigger_at=m.trigger_at,
                      variant=m.variant, status="sent" if m.action == "send" else "skipped",
                      reason=m.reason if m.action == "skip" else None, detail=m.detail)
               for m in decided]
    written = ledger.write_new(records, now)
    tag_changes = [(m.customer_id, action.kind, action.tag, m.campaign) for m in decided
                   if m.action == "send" and m.key in written
                   for action in project.campaign(m.campaign).step(m.step).actions]
    if tag_changes:
        ledger.apply_tags(tag_changes, now)
    day = now.date().isoformat()
    for m in decided:
        if m.key in written and m.campaign == report.campaign:
            report.counts[(m.step, day, "sent" if m.action == "send" else f"skipped:{m.reason}")] += 1


def _conversions(reconciler: Reconciler, campaign: Campaign, report: BacktestReport, progress: Progress,
                 batch_size: int) -> None:
    """Count sends followed by an order within the conversion window, a batch of sends per query."""
    config = reconciler.config
    if "orders" not in config.sources:
        return
    total = report.total("sent")
    done = 0
    for rows in reconciler.ledger.sent_messages(campaign.name, batch_size):
        done += len(rows)
        progress.stage("conversions", done, total)
        sql = render_sql(conversion_query(config, rows, campaign.conversion_window), config.dialect)
        for step, day, converted in reconciler.warehouse.fetch_all(sql):
            report.converted[(step, str(day))] += int(converted)


def conversion_query(config, sends, window: timedelta) -> exp.Select:
    """Per (step, day): how many of ``sends`` [(step, customer_id, sent_at)] were followed by an
    order of that customer in (sent_at, sent_at + window]. The sends travel as a VALUES list."""
    dialect = config.dialect
    values = exp.Values(expressions=[
        exp.Tuple(expressions=[lit(step), lit(_as_utc(sent_at).date().isoformat()), lit(str(customer_id)),
                               ts(_as_utc(sent_at), dialect), ts(_as_utc(sent_at) + window, dialect)])
        for step, customer_id, sent_at in sends
    ])
    columns = ["step", "day", "customer_id", "sent_at", "until"]
    ordered = exp.select(exp.Literal.number(1)).from_(exp.to_table("src_orders").as_("o")).where(
        text(col("o", "customer_id")).eq(col("s", "customer_id")),
        col("o", "created_at") > col("s", "sent_at"),
        col("o", "created_at") <= col("s", "until"),
    )
    return (
        exp.select(col("s", "step"), col("s", "day"), exp.alias_(exp.Count(this=exp.Star()), "converted"))
        .from_(exp.to_table("sends").as_("s"))
        .where(exp.Exists(this=ordered))
        .group_by(col("s", "step"), col("s", "day"))
        .with_("src_orders", as_=source_select(config.sources["orders"], dialect))
        .with_(exp.TableAlias(this=exp.to_identifier("sends"), columns=[exp.to_identifier(n) for n in columns]),
               as_=values)
    )


def _as_utc(value) -> datetime:
    return to_utc(value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))


__all__ = ["BacktestError", "BacktestReport", "backtest", "check_backtestable", "conversion_query", "instants"]
