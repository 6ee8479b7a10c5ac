"""Formatting plans, pass reports and validation issues for people and machines.

Streams: ``write_plan`` writes each batch as it arrives (jsonl/csv) and only
keeps counts plus a bounded sample for the table format: the first ``limit`` messages by
``listing_order``, kept as they stream by (never the whole plan), so the table shows the same
messages at every run whatever order the warehouse returned them in.
"""
from __future__ import annotations

import csv
import heapq
import json
from collections import Counter
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Mapping

from engine.channel_kinds import KINDS, contact_fields
from engine.errors import Issue
from engine.masking import mask

if TYPE_CHECKING:  # annotations only: `engine validate` writes issues without importing the pass (SQLAlchemy)
    from engine.run.messages import DueMessage, PassReport
    from engine.run.settle import SettledCounts

PLAN_FIELDS = ["campaign", "step", "customer_id", "trigger_key", "channel", "kind", "due_at", "trigger_at", "action", "reason",
               "message_key"]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda values: "  ".join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_plan(batches: Iterable[list[DueMessage]], fmt: str, out: IO[str], *, include_skipped: bool,
               limit: int, header: str, kinds: Mapping[str, str], settled: SettledCounts | None = None) -> Counter:
    """Write the plan; return counts per (campaign, step, action[:reason]). ``kinds``: each channel's kind
    (engine.yaml), shown beside the channel. ``settled``: the skips the plan counted in SQL instead of
    listing them (``Reconciler.due(settled_counts=...)``, without ``include_skipped``), counted with the others."""
    counts: Counter = Counter()
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=PLAN_FIELDS, extrasaction="ignore")
        writer.writeheader()
    campaigns: dict[str, int] = {}  # campaign -> its place in the stream (the priority order of the pass)

    def listed() -> Iterator[DueMessage]:
        for batch in batches:
            for m in batch:
                counts[(m.campaign, m.step, m.outcome)] += 1
                if m.action != "send" and not include_skipped:
                    continue
                if fmt == "jsonl":
                    out.write(json.dumps(_row(m, kinds)) + "\n")
                elif fmt == "csv":
                    writer.writerow(_row(m, kinds))
                else:
                    campaigns.setdefault(m.campaign, len(campaigns))
                    yield m

    rows = listed()
    # the table's first ``limit`` messages by listing_order: O(limit) memory, the same at every run
    sample = heapq.nsmallest(limit, rows, key=lambda m: listing_order(m, campaigns)) if fmt == "table" else []
    for _ in rows:  # what is left (every message of csv/jsonl, written as it streams by; a --limit 0 table)
        pass
    if settled is not None:  # complete now that the batches are consumed
        counts.update(settled.outcomes())
    if fmt == "table":
        out.write(header + "\n\n")
        out.write(summary_table(counts, "send") + "\n")
        if sample:
            shown = len(sample)
            total = sum(n for (_, _, a), n in counts.items() if include_skipped or a == "send")
            out.write(f"\n{'First ' + str(shown) + ' of ' + str(total) if shown < total else 'All'} messages:\n")
            out.write(_table(["campaign", "step", "customer", "contact", "trigger", "channel", "kind", "due_at",
                              "action"],
                             [[m.campaign, m.step, m.customer_id, _contact(m, kinds.get(m.channel or "")),
                               m.trigger_key, m.channel or "-", kinds.get(m.channel or "", "-"), m.as_dict()["due_at"],
                               m.action + (f" ({m.reason})" if m.reason else "")]
                              for m in sample]) + "\n")
    return counts


def listing_order(m: DueMessage, campaigns: Mapping[str, int]) -> tuple:
    """Where a message stands in the plan's listing: its campaign's place (``campaigns``: the priority
    order the plan followed), then its trigger instant, customer, trigger key and step - the order of
    the rows the warehouse sorts for a listing of every message (``due_query(ordered=True)``, its text
    keys in the dialect's ``code_point_collation``: compared by code point, as Python compares ``str``)."""
    return campaigns[m.campaign], m.trigger_at, m.customer_id, m.trigger_key, m.step


def _contact(m: DueMessage, kind: str | None) -> str:
    """The customer's contact field of the message's channel kind (its email for an email, its phone for an
    SMS); before a channel is chosen, or for a kind addressed otherwise, the first contact field the customer has."""
    column = KINDS[kind].address_column if kind in KINDS else None
    value = m.customer.get(column) if column else next(filter(None, map(m.customer.get, contact_fields())), None)
    return str(value) if value else "-"


def _row(m: DueMessage, kinds: Mapping[str, str]) -> dict:
    """A message of the plan as a jsonl/csv row: its fields and its channel's kind (None before a channel)."""
    row = m.as_dict()
    row["kind"] = kinds.get(m.channel) if m.channel else None
    return row


def summary_table(counts: Counter, main_outcome: str) -> str:
    by_step: dict[tuple[str, str], Counter] = {}
    for (campaign, step, outcome), n in counts.items():
        by_step.setdefault((campaign, step), Counter())[outcome] += n
    outcomes = sorted({o for c in by_step.values() for o in c}, key=lambda o: (o != main_outcome, o))
    if not outcomes:
        return "(nothing due)"
    rows = [[campaign, step] + [str(c.get(o, 0)) for o in outcomes] for (campaign, step), c in sorted(by_step.items())]
    totals = ["total", ""] + [str(sum(c.get(o, 0) for c in by_step.values())) for o in outcomes]
    return _table(["campaign", "step"] + outcomes, rows + [totals])


def write_report(report: PassReport, out: IO[str], err: IO[str]) -> None:
    out.write(summary_table(report.counts, "sent") + "\n")
    for error in report.errors:
        err.write(mask(f"Error: {error}") + "\n")  # channel and driver errors may quote URLs
    for campaign, reason in report.failed_campaigns.items():
        err.write(mask(f"Error: campaign {campaign} failed and sent nothing more this pass (the others went on): {reason}") + "\n")


def write_issues(issues: list[Issue], fmt: str, out: IO[str], files_checked: int) -> None:
    errors = [i for i in issues if i.severity == "error"]
    warnings = [i for i in issues if i.severity == "warning"]
    if fmt == "json":
        out.write(json.dumps({"valid": not errors, "errors": len(errors), "warnings": len(warnings),
                              "issues": [i.as_dict() for i in issues]}, indent=2) + "\n")
        return
    if fmt == "github":
        for i in issues:
            level = "error" if i.severity == "error" else "warning"
            props = [f"file={_escape_property(i.file)}"] + ([f"line={i.line}"] if i.line else []) + ([f"col={i.column}"] if i.column else [])
            message = i.message + (f" Fix: {i.fix}" if i.fix else "")
            out.write(f"::{level} {','.join(props)},title=engine validate::{_escape(message)}\n")
        return
    for i in issues:
        out.write(i.format() + "\n")
    if errors:
        out.write(f"\n{len(errors)} error(s), {len(warnings)} warning(s).\n")
    else:
        out.write(f"OK: {files_checked} campaign file(s) valid, {len(warnings)} warning(s).\n")


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """GitHub workflow command property values also escape ':' and ','."""
    return _escape(text).replace(":", "%3A").replace(",", "%2C")
