"""``engine export``: a segment, a campaign's plan or its ledger history as CSV or JSON lines (R-S3).

Streamed: rows are written as the database returns them, batch by batch
(``Database.stream``), so memory stays flat however many customers match.

- a segment (``segments:`` in engine.yaml, or an ad-hoc ``--where``): the
  matching customers' id and mapped attributes, compiled from the campaign
  filter language (``compile.segment_query``);
- a campaign: the messages due now, the rows and columns of ``engine plan``
  (``Reconciler.due``, ``output.write_plan``), in the same order at every run (``ordered``: the
  warehouse sorts them);
- a campaign with ``history``: its ledger rows (``LedgerReader.history``), each with the coupon
  code claimed with the message.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime
from typing import IO, Callable, Iterable, Iterator

from engine.sql.compile import render_sql, segment_query
from engine.tools.customer import plain
from engine.errors import EngineError, FilterError
from engine.sql.filter_types import segment_attributes
from engine.sql.filters import parse_filter
from engine.progress import Progress
from engine.tools.output import write_plan
from engine.run.ledger_state import warehouse_with_state
from engine.run.reconcile import Reconciler
from engine.sql.shipping import state_needs

HISTORY_FIELDS = ("message_key", "campaign", "step", "customer_id", "trigger_key", "variant", "channel", "status",
                  "reason", "detail", "trigger_at", "due_at", "created_at", "updated_at", "attempts", "next_attempt_at")
#: with the history: the coupon code claimed with each message and its pool (empty: a generated code)
CODE_FIELDS = ("discount_code", "coupon_pool")
BATCH_SIZE = 5000


class ExportError(EngineError):
    pass


def resolve_target(reconciler: Reconciler, name: str | None, where: str | None) -> tuple[str, str]:
    """("segment", filter text) or ("campaign", name) for the command's arguments."""
    segments = reconciler.config.segments
    if where is not None:
        if name is not None:
            raise ExportError("give a segment or campaign name, or --where, not both")
        return "segment", where
    if name is None:
        raise ExportError("name a segment (segments: in engine.yaml) or a campaign, or give --where FILTER")
    campaigns = {c.name for c in reconciler.project.campaigns}
    if name in segments and name in campaigns:
        raise ExportError(f"'{name}' is both a segment and a campaign; rename the segment in engine.yaml")
    if name in segments:
        return "segment", segments[name]
    if name in campaigns:
        return "campaign", name
    raise ExportError(f"no segment or campaign named '{name}' (segments: {', '.join(sorted(segments)) or 'none'}; "
                      f"campaigns: {', '.join(sorted(campaigns)) or 'none'})")


def check_segment_filter(reconciler: Reconciler, where: str) -> None:
    """Refuse a filter outside the whitelist before any SQL is built."""
    try:
        parse_filter(where, segment_attributes(reconciler.config))
    except FilterError as exc:
        raise ExportError(f"invalid segment filter '{where}': {exc.message}" + (f"; {exc.fix}" if exc.fix else "")) from None


def _writer(fmt: str, out: IO[str], fields: list[str]):
    """A function writing one row (a mapping over ``fields``) in ``fmt``."""
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(fields)
        return lambda row: writer.writerow(["" if row[f] is None else plain(row[f]) for f in fields])
    return lambda row: out.write(json.dumps({f: plain(row[f]) for f in fields}, default=str) + "\n")


def export_segment(reconciler: Reconciler, where: str, now: datetime, fmt: str, out: IO[str],
                   progress: Progress = Progress()) -> int:
    """Write the customers matching ``where``; return how many."""
    check_segment_filter(reconciler, where)
    config = reconciler.config
    fields = list(config.customer_attributes())
    write = _writer(fmt, out, fields)
    with warehouse_with_state(reconciler.warehouse, reconciler.ledger, reconciler.ledger_shares_warehouse,
                              state_needs([], config, filters=[where]), config) as (session, state):
        return _write_stream(session.stream(render_sql(segment_query(config, now, where, state=state), config.dialect),
                                            BATCH_SIZE), write, progress)


def export_history(reconciler: Reconciler, campaign: str, fmt: str, out: IO[str], progress: Progress = Progress()) -> int:
    """Write every ledger row of ``campaign`` (without the stored content); return how many."""
    dialect = reconciler.ledger.dialect  # the ledger opened (a missing one: empty, in memory)
    write = _writer(fmt, out, list(HISTORY_FIELDS) + list(CODE_FIELDS))
    return _write_stream(_with_codes(reconciler, reconciler.ledger.history(campaign, HISTORY_FIELDS, dialect, BATCH_SIZE)),
                         write, progress)


def _with_codes(reconciler: Reconciler, batches: Iterator[list]) -> Iterator[list]:
    """Each history row with the coupon code claimed with its message (one lookup per batch)."""
    for rows in batches:
        codes = reconciler.ledger.codes_of([row._mapping["message_key"] for row in rows])
        yield [_Row({**row._mapping, **dict(zip(CODE_FIELDS, _code(codes.get(row._mapping["message_key"]))))})
               for row in rows]


def _code(found: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """(discount_code, coupon_pool) of a claimed code; pool "" (generated) is written as empty."""
    return (found[1], found[0] or None) if found else (None, None)


class _Row:
    """A row of ``_write_stream`` made here: its mapping."""

    def __init__(self, mapping: dict):
        self._mapping = mapping


def export_plan(reconciler: Reconciler, campaign: str, now: datetime, fmt: str, out: IO[str],
                around: Callable[[Iterable], Iterable] = lambda batches: batches) -> int:
    """Write the messages of ``campaign`` due at ``now``, as ``engine plan --format csv|jsonl``; ``around``
    wraps the batches (progress.around_output: the reconciler's progress line off before each is written)."""
    counts = write_plan(around(reconciler.due(now, [reconciler.project.campaign(campaign)], ordered=True)), fmt, out,
                        include_skipped=False, limit=0, header="",
                        kinds={name: channel.kind for name, channel in reconciler.config.channels.items()})
    return sum(n for (_, _, outcome), n in counts.items() if outcome == "send")


def _write_stream(batches: Iterator[list], write, progress: Progress = Progress()) -> int:
    count = 0
    for rows in batches:
        progress.clear()  # the status line off the terminal while rows are written
        for row in rows:
            write(row._mapping)
        count += len(rows)
        progress.rows(len(rows))
    return count
