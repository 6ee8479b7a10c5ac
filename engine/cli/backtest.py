"""``engine backtest CAMPAIGN --since D --until D``: what a campaign would have sent, and who ordered anyway."""
from __future__ import annotations

import csv
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from engine.clock import format_duration, format_instant, parse_duration
from engine.progress import progress_for
from engine.cli.common import handle_errors, quiet_option, time_range_options

if TYPE_CHECKING:
    from engine.tools.backtest import BacktestReport


def _duration(_ctx, _param, value):
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None
    if duration <= timedelta(0):
        raise click.BadParameter(f"'{value}' is not a positive duration", param_hint="--every")
    return duration


def _rows(report: BacktestReport) -> tuple[list[dict], list[str]]:
    """One row per (step, day) with sends, conversions and skips by reason; the skip reasons seen."""
    reasons = sorted({o.split(":", 1)[1] for (_, _, o) in report.counts if o.startswith("skipped:")})
    keys = sorted({(step, day) for (step, day, _) in report.counts})
    rows = []
    for step, day in keys:
        row = {"step": step, "day": day, "sent": report.counts.get((step, day, "sent"), 0),
               "converted": report.converted.get((step, day), 0)}
        row["skipped"] = {r: report.counts.get((step, day, f"skipped:{r}"), 0) for r in reasons
                          if report.counts.get((step, day, f"skipped:{r}"), 0)}
        rows.append(row)
    return rows, reasons


def _steps(report: BacktestReport, rows: list[dict]) -> list[dict]:
    totals: dict[str, dict] = {}
    for row in rows:
        total = totals.setdefault(row["step"], {"step": row["step"], "sent": 0, "converted": 0, "skipped": {}})
        total["sent"] += row["sent"]
        total["converted"] += row["converted"]
        for reason, n in row["skipped"].items():
            total["skipped"][reason] = total["skipped"].get(reason, 0) + n
    return list(totals.values())


def write_backtest(report: BacktestReport, fmt: str, out: IO[str]) -> None:
    rows, reasons = _rows(report)
    if fmt == "json":
        out.write(json.dumps({
            "campaign": report.campaign, "from": format_instant(report.start), "to": format_instant(report.end),
            "every": format_duration(report.every), "instants": report.instants,
            "conversion_window": format_duration(report.conversion_window),
            "days": rows, "steps": _steps(report, rows),
        }, indent=2) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["campaign", "step", "day", "sent", "converted"] + [f"skipped_{r}" for r in reasons])
        for row in rows:
            writer.writerow([report.campaign, row["step"], row["day"], row["sent"], row["converted"]]
                            + [row["skipped"].get(r, 0) for r in reasons])
        return
    out.write(f"Backtest of {report.campaign} from {format_instant(report.start)} to {format_instant(report.end)} "
              f"every {format_duration(report.every)} ({report.instants} instants); nothing was sent.\n"
              f"Converted: the customer ordered within {format_duration(report.conversion_window)} after the simulated send.\n\n")
    if not rows:
        out.write("(nothing would have been sent or skipped)\n")
        return
    headers = ["step", "day", "sent", "converted"] + [f"skipped:{r}" for r in reasons]
    table = [[r["step"], r["day"], r["sent"], r["converted"]] + [r["skipped"].get(x, 0) for x in reasons] for r in rows]
    for total in _steps(report, rows):
        table.append([total["step"], "total", total["sent"], total["converted"]]
                     + [total["skipped"].get(x, 0) for x in reasons])
    widths = [max(len(str(v)) for v in column) for column in zip(headers, *table)]
    for values in [headers, ["-" * w for w in widths]] + table:
        out.write("  ".join(str(v).ljust(w) for v, w in zip(values, widths)).rstrip() + "\n")
    out.write("\n")
    for total in _steps(report, rows):
        rate = f"{100 * total['converted'] / total['sent']:.1f}%" if total["sent"] else "-"
        out.write(f"{total['step']}: {total['sent']} sent, {total['converted']} converted ({rate})\n")


@click.command()
@click.argument("campaign")
@click.option("--every", default="1h", show_default=True, callback=_duration, metavar="DURATION",
              help="Time between simulated passes (e.g. 15m, 1h, 1d).")
@time_range_options(last_instant_every="every", required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@quiet_option
@click.pass_obj
@handle_errors
def backtest(project_dir: Path, campaign: str, since, until, every: timedelta, fmt: str, quiet: bool):
    """Replay CAMPAIGN over the warehouse's history: what it would have sent per step and day, and who ordered anyway.

    Passes are simulated at --since, --since + --every, ... before --until. Nothing is sent and the real
    ledger is untouched: the simulated ledger is a scratch database, deleted afterwards.
    """
    from engine.tools.backtest import backtest as run_backtest
    from engine.tools.demo import ensure_demo
    from engine.spec.project import load_project

    project = load_project(project_dir)
    ensure_demo(project.config, echo=lambda text: click.echo(text, err=True))
    report = run_backtest(project, campaign, since, until, every, progress=progress_for("backtest", quiet))
    write_backtest(report, fmt, sys.stdout)
